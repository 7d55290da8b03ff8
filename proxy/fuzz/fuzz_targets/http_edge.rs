//! Hosts, paths, header values and response heads keel-proxy parses itself: never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_proxy::fuzzing::http_edge(data));
