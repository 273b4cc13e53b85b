//! The audit log's line format and hash chain.
//!
//! A line is `{"hash":"<64 hex>","prev":"<64 hex>",<body>` where `<body>` is the rest of
//! a JSON object. `hash` = SHA-256 (or HMAC-SHA256 with the configured key) of
//! `prev` + "\n" + `<body>`, and `prev` is the previous line's hash (64 zeros first).
//! The fields sit at fixed offsets, so verification needs no JSON re-serialization, and
//! deleting, reordering or editing any line breaks the chain at that line.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HEAD: &str = "{\"hash\":\"";
const MID: &str = "\",\"prev\":\"";
const TAIL: &str = "\",";
/// Offsets of the fixed fields in a line.
const HASH_AT: usize = HEAD.len();
const PREV_AT: usize = HASH_AT + 64 + MID.len();
const BODY_AT: usize = PREV_AT + 64 + TAIL.len();

/// Lower-case hex, two digits per byte.
pub(super) fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(DIGITS[usize::from(x >> 4)] as char);
        s.push(DIGITS[usize::from(x & 15)] as char);
    }
    s
}

pub fn link_hash(key: Option<&Secret>, prev: &str, body: &str) -> String {
    match key {
        Some(k) => {
            let mut mac = Hmac::<Sha256>::new_from_slice(k.expose().as_bytes())
                .unwrap_or_else(|_| unreachable!());
            mac.update(prev.as_bytes());
            mac.update(b"\n");
            mac.update(body.as_bytes());
            hex(&mac.finalize().into_bytes())
        }
        None => {
            let mut h = Sha256::new();
            h.update(prev.as_bytes());
            h.update(b"\n");
            h.update(body.as_bytes());
            hex(&h.finalize())
        }
    }
}

/// Builds a line from a JSON object's text (`{...}`); returns (line, its hash).
pub fn seal(key: Option<&Secret>, prev: &str, object: &str) -> (String, String) {
    let body = object.strip_prefix('{').unwrap_or(object);
    let hash = link_hash(key, prev, body);
    let mut line = String::with_capacity(BODY_AT + body.len());
    for part in [HEAD, &hash, MID, prev, TAIL, body] {
        line.push_str(part);
    }
    (line, hash)
}

/// The (hash, prev, body) of a line, if it has the sealed shape.
pub fn open(line: &str) -> Option<(&str, &str, &str)> {
    if line.len() < BODY_AT || !line.starts_with(HEAD) || !line.is_char_boundary(BODY_AT) {
        return None;
    }
    let hash = &line[HASH_AT..HASH_AT + 64];
    if &line[HASH_AT + 64..PREV_AT] != MID || &line[PREV_AT + 64..BODY_AT] != TAIL {
        return None;
    }
    let prev = &line[PREV_AT..PREV_AT + 64];
    let is_hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    (is_hex(hash) && is_hex(prev)).then_some((hash, prev, &line[BODY_AT..]))
}

/// Where a chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

/// The outcome of verifying files in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub records: usize,
    /// True when the first line continues a chain whose start was rotated away.
    pub starts_mid_chain: bool,
    pub last_hash: String,
}

/// Checks files (oldest first) as one chain.
pub fn verify(files: &[(String, String)], key: Option<&Secret>) -> Result<Verified, Break> {
    let mut prev: Option<String> = None;
    let mut records = 0;
    let mut starts_mid_chain = false;
    for (name, text) in files {
        for (i, line) in text.split_terminator('\n').enumerate() {
            let at = |reason: String| Break {
                file: name.clone(),
                line: i + 1,
                reason,
            };
            let (hash, p, body) = open(line).ok_or_else(|| at("not a sealed audit line".into()))?;
            match &prev {
                None => starts_mid_chain = p != GENESIS,
                Some(expected) if expected != p => {
                    return Err(at("prev does not match the previous line's hash: a line before it was removed, reordered or altered".into()))
                }
                _ => {}
            }
            if link_hash(key, p, body) != hash {
                return Err(at("hash does not match the line's content: it was edited (or the HMAC key is wrong)".into()));
            }
            if serde_json::from_str::<serde_json::Value>(&format!("{{{body}")).is_err() {
                return Err(at("the line is not JSON".into()));
            }
            prev = Some(hash.to_string());
            records += 1;
        }
    }
    Ok(Verified {
        records,
        starts_mid_chain,
        last_hash: prev.unwrap_or_else(|| GENESIS.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_hashes_match_known_sha256_and_hmac_values() {
        // Computed independently (Python hashlib/hmac) over GENESIS + "\n" + body.
        let body = "\"n\":1}";
        assert_eq!(
            link_hash(None, GENESIS, body),
            "1449533db5f648654c5addf35876fd3a4c6fc785685bcb6b44ab565fcc0313dd"
        );
        let key = Secret::new("k3y".into());
        assert_eq!(
            link_hash(Some(&key), GENESIS, body),
            "d5652af67a964131511ff0c016b13c0c98517e314ac443cf5c25d2480b1735b4"
        );
    }

    fn chain(n: usize, key: Option<&Secret>) -> String {
        let mut prev = GENESIS.to_string();
        let mut out = String::new();
        for i in 0..n {
            let (line, h) = seal(key, &prev, &format!("{{\"n\":{i},\"user\":\"u{i}\"}}"));
            out.push_str(&line);
            out.push('\n');
            prev = h;
        }
        out
    }

    #[test]
    fn intact_chain_verifies() {
        let v = verify(&[("a".into(), chain(5, None))], None).unwrap();
        assert_eq!((v.records, v.starts_mid_chain), (5, false));
        let k = Secret::new("k".repeat(32));
        assert!(verify(&[("a".into(), chain(5, Some(&k)))], Some(&k)).is_ok());
        assert_eq!(
            verify(&[("a".into(), chain(5, Some(&k)))], None)
                .unwrap_err()
                .line,
            1,
            "wrong key"
        );
    }

    #[test]
    fn edits_deletions_and_reorders_break_at_the_right_line() {
        let text = chain(6, None);
        let lines: Vec<&str> = text.lines().collect();
        let edited = text.replacen("\"user\":\"u3\"", "\"user\":\"ux\"", 1);
        assert_eq!(verify(&[("f".into(), edited)], None).unwrap_err().line, 4);
        let deleted: String = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        assert_eq!(verify(&[("f".into(), deleted)], None).unwrap_err().line, 3);
        let mut swapped = lines.clone();
        swapped.swap(1, 4);
        let swapped: String = swapped.iter().map(|l| format!("{l}\n")).collect();
        assert_eq!(verify(&[("f".into(), swapped)], None).unwrap_err().line, 2);
        // Truncating the head is visible as a chain that starts mid-way.
        let tail: String = lines[2..].iter().map(|l| format!("{l}\n")).collect();
        assert!(
            verify(&[("f".into(), tail)], None)
                .unwrap()
                .starts_mid_chain
        );
    }
}
