//! AFL++ target `packed_ring`: see `ferry::fuzz_api::packed_ring`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        ferry::fuzz_api::packed_ring(data);
    });
}
