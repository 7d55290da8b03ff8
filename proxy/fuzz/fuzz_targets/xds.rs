//! Any bytes as an xDS resource of any type keel-proxy converts: never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = keel_proxy::fuzzing::xds(data);
});
