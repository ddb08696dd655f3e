//! AFL++ target `nvme_prp`: see `ferry::fuzz_api::nvme_prp`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        ferry::fuzz_api::nvme_prp(data);
    });
}
