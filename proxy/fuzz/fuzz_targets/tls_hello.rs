//! The TLS inspector's ClientHello reader on any bytes: never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_proxy::fuzzing::tls_hello(data));
