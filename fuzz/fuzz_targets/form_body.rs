//! The urlencoded body parser, the call model and the vault rewrite: no panic, and the
//! rewrite never changes what PHP reads except the token and stripped fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redcap_gateway::layers::vault::{rewrite_urlencoded, Overrides, STRIPPED_FIELDS};
use redcap_gateway::redcap::php_form::{parse_urlencoded, PhpLimits, PhpValue};
use redcap_gateway::redcap::RedcapCall;
use redcap_gateway::secret::Secret;

fuzz_target!(|data: &[u8]| {
    let Ok(form) = parse_urlencoded(data, PhpLimits::default()) else {
        return;
    };
    let _ = RedcapCall::from_form(&form);
    let token = Secret::new("0123456789ABCDEF0123456789ABCDEF".into());
    let Ok(out) = rewrite_urlencoded(data, &form, &token, 1000, &Overrides::NONE) else {
        return;
    };
    let again = parse_urlencoded(&out, PhpLimits::default()).expect("the rewrite parses");
    assert!(
        matches!(again.post.get_str("token"), Some(PhpValue::Str(v)) if v[..] == *token.expose().as_bytes())
    );
    for f in STRIPPED_FIELDS.iter().filter(|f| **f != "token") {
        assert!(again.post.get_str(f).is_none());
    }
    for (k, v) in form.post.iter() {
        let stripped = STRIPPED_FIELDS.iter().any(|f| {
            k.as_bytes_lossy() == *f
                && matches!(k, redcap_gateway::redcap::php_form::PhpKey::Str(_))
        });
        if !stripped {
            assert_eq!(again.post.get(k), Some(v));
        }
    }
});
