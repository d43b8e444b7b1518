#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| stylizer_fuzz::model_folder(data));
