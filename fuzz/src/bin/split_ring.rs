//! AFL++ target `split_ring`: see `ferry::fuzz_api::split_ring`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        ferry::fuzz_api::split_ring(data);
    });
}
