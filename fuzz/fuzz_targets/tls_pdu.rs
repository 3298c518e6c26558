#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nvmf_target::fuzz_tls_pdu_input(data));
