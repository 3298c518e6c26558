#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nvmf_target::mgmt::http::fuzz_parse_request(data));
