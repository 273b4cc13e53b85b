//! JWT verification on arbitrary tokens: never panics, never accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redcap_gateway::auth::jwt::JwtVerifier;
use redcap_gateway::dev::{DevIssuer, DEV_ISSUER};

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        static V: JwtVerifier = JwtVerifier::new(vec![DevIssuer::new(DEV_ISSUER).unwrap().gateway_issuer().unwrap()]);
    }
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    RT.with(|rt| V.with(|v| assert!(rt.block_on(v.verify(token)).is_err())));
});
