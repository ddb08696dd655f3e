//! AFL++ target `vhost_user`: see `ferry::fuzz_api::vhost_user`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        ferry::fuzz_api::vhost_user(data);
    });
}
