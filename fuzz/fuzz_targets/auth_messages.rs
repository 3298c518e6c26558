#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nvmf_proto::auth::fuzz::auth_messages(data));
