//! AFL++ target `nvmf_tcp_pdu`: see `ferry::fuzz_api::nvmf_tcp_pdu`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        ferry::fuzz_api::nvmf_tcp_pdu(data);
    });
}
