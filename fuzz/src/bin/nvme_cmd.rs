//! AFL++ target `nvme_cmd`: see `ferry::fuzz_api::nvme_cmd`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        ferry::fuzz_api::nvme_cmd(data);
    });
}
