#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| routewise_fuzz::request(data));
