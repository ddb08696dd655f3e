//! AFL++ target `iscsi_pdu`: see `ferry::fuzz_api::iscsi_pdu`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        ferry::fuzz_api::iscsi_pdu(data);
    });
}
