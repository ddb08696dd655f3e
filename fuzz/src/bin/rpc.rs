//! AFL++ target `rpc`: see `ferry::fuzz_api::rpc`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        ferry::fuzz_api::rpc(data);
    });
}
