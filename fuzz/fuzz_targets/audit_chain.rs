//! Reading an audit log (verify-audit, and the gateway's start-up read of its tail) on
//! arbitrary text: never panics; a line is sealed or it is not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redcap_gateway::audit::chain;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        let _ = chain::open(line);
        let _ = chain::is_whole(None, line);
    }
    // As one file, and split in two at a line end, as rotated files are read.
    let _ = chain::verify(&[("f".into(), text.to_string())], None);
    if let Some((a, b)) = text.split_once('\n') {
        let _ = chain::verify(&[("f.1".into(), format!("{a}\n")), ("f".into(), b.to_string())], None);
    }
});
