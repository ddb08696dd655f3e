//! AFL++ target `blobstore`: see `ferry::fuzz_api::blobstore`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        ferry::fuzz_api::blobstore(data);
    });
}
