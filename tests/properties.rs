//! Property tests for the security-relevant parsers: no input panics them, and the
//! rewrite sent to REDCap changes nothing PHP reads but the fields it must change.

use proptest::prelude::*;
use redcap_gateway::layers::vault::{rewrite_urlencoded, Overrides, STRIPPED_FIELDS};
use redcap_gateway::redcap::multipart::parse_disposition;
use redcap_gateway::redcap::php_form::{parse_urlencoded, PhpArray, PhpKey, PhpLimits, PhpValue};
use redcap_gateway::redcap::RedcapCall;
use redcap_gateway::secret::Secret;

const TOKEN: &str = "0123456789ABCDEF0123456789ABCDEF";

/// Bodies built from the pieces that matter to PHP's parser, plus raw bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just("content".to_string()),
        Just("token".to_string()),
        Just("action".to_string()),
        Just("users".to_string()),
        Just("data".to_string()),
        Just("mobile_app".to_string()),
        Just("mobile.app".to_string()),
        Just("uuid".to_string()),
        Just("=".to_string()),
        Just("&".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("[]".to_string()),
        Just(".".to_string()),
        Just(" ".to_string()),
        Just("+".to_string()),
        Just("%00".to_string()),
        Just("%20".to_string()),
        Just("%5B".to_string()),
        Just("%".to_string()),
        "[a-z0-9]{1,3}",
    ];
    prop_oneof![
        3 => prop::collection::vec(piece, 0..40).prop_map(|v| v.concat().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..200),
    ]
}

fn without(a: &PhpArray, drop: &[&str]) -> Vec<(PhpKey, PhpValue)> {
    a.iter()
        .filter(
            |(k, _)| !matches!(k, PhpKey::Str(s) if drop.iter().any(|d| d.as_bytes() == &s[..])),
        )
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn parsing_never_panics(b in body()) {
        if let Ok(form) = parse_urlencoded(&b, PhpLimits::default()) {
            let _ = RedcapCall::from_form(&form);
            prop_assert!(form.segments.len() <= 1000);
        }
    }

    #[test]
    fn rewrite_changes_only_token_and_stripped_fields(b in body()) {
        let Ok(form) = parse_urlencoded(&b, PhpLimits::default()) else { return Ok(()) };
        let Ok(out) = rewrite_urlencoded(&b, &form, &Secret::new(TOKEN.into()), 1000, &Overrides::NONE) else { return Ok(()) };
        let again = parse_urlencoded(&out, PhpLimits::default()).expect("the rewrite parses");
        // Everything REDCap reads is the same, except the fields we replace or remove.
        prop_assert_eq!(without(&form.post, STRIPPED_FIELDS), without(&again.post, &["token"]));
        prop_assert_eq!(again.post.get_str("token"), Some(&PhpValue::Str(bytes::Bytes::from_static(TOKEN.as_bytes()))));
        for f in STRIPPED_FIELDS.iter().filter(|f| **f != "token") {
            prop_assert!(again.post.get_str(f).is_none(), "{} survived", f);
        }
        prop_assert_eq!(again.occurrences("token"), (1, false));
    }

    #[test]
    fn disposition_parsing_never_panics(s in "\\PC{0,80}") {
        let _ = parse_disposition(&s);
    }

    #[test]
    fn accepted_dispositions_have_safe_names(s in "(form-data|FORM-DATA|x)(; ?(name|filename|x)=(\"[a-z\\[\\]. \"\\\\]{0,6}\"|[a-z]{0,3})){0,3}") {
        if let Ok((name, filename)) = parse_disposition(&s) {
            prop_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-[]".contains(&b)));
            if let Some(f) = filename {
                prop_assert!(!f.contains('"') && !f.contains('\\'));
            }
        }
    }
}
