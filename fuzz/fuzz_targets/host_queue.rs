#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nvmf_host::fuzzing::host_queue_input(data));
