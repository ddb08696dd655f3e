//! AFL++ target `vfio_user`: see `ferry::fuzz_api::vfio_user`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        ferry::fuzz_api::vfio_user(data);
    });
}
