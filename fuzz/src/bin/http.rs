//! AFL++ target `http`: see `ferry::fuzz_api::http`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        ferry::fuzz_api::http(data);
    });
}
