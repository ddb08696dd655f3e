//! AFL++ target `scsi`: see `ferry::fuzz_api::scsi`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        ferry::fuzz_api::scsi(data);
    });
}
