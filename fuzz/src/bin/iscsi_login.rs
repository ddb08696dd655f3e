//! AFL++ target `iscsi_login`: see `ferry::fuzz_api::iscsi_login`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        ferry::fuzz_api::iscsi_login(data);
    });
}
