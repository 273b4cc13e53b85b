//! The audit log's line format and hash chain.
//!
//! A line is `{"hash":"<64 hex>","prev":"<64 hex>",<body>` where `<body>` is the rest of
//! a JSON object. `hash` = SHA-256 (or HMAC-SHA256 with the configured key) of
//! `prev` + "\n" + `<body>`, and `prev` is the previous line's hash (64 zeros first).
//! The fields sit at fixed offsets, so verification needs no JSON re-serialization, and
//! deleting, reordering or editing any line breaks the chain at that line.
//!
//! A crash (SIGKILL, power loss) can leave a line cut short at the end of the file. On
//! its next start the gateway ends that line where it stopped, and writes a sealed
//! notice (`"phase":"notice","event":"torn_line"`) that names its length and continues
//! the chain from the last whole line; `verify` accepts a torn line only when such a
//! notice follows it, and reports it. A cut last line with no notice yet (a crash
//! before the restart, or a line being written) is reported, not a break.

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
    // `get`, not indexing: a line that is not the gateway's (a crash's leftovers, an edit)
    // may have a multi-byte character across any of these offsets.
    if !line.starts_with(HEAD) {
        return None;
    }
    let hash = line.get(HASH_AT..HASH_AT + 64)?;
    let prev = line.get(PREV_AT..PREV_AT + 64)?;
    if line.get(HASH_AT + 64..PREV_AT)? != MID || line.get(PREV_AT + 64..BODY_AT)? != TAIL {
        return None;
    }
    let body = line.get(BODY_AT..)?;
    let is_hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    (is_hex(hash) && is_hex(prev)).then_some((hash, prev, body))
}

/// The notice a restart writes after a torn line (a JSON object, sealed like any record).
pub fn torn_notice(time: &str, torn_bytes: usize) -> String {
    format!("{{\"time\":\"{time}\",\"phase\":\"notice\",\"event\":\"torn_line\",\"torn_bytes\":{torn_bytes}}}")
}

/// The length a torn-line notice names, if `body` is one.
fn torn_bytes(body: &str) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_str(&format!("{{{body}")).ok()?;
    if v["phase"] != "notice" || v["event"] != "torn_line" {
        return None;
    }
    usize::try_from(v["torn_bytes"].as_u64()?).ok()
}

/// Whether `line` is a whole sealed line: its shape, and its hash over its content.
pub fn is_whole(key: Option<&Secret>, line: &str) -> bool {
    open(line).is_some_and(|(hash, prev, body)| link_hash(key, prev, body) == hash)
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
    /// Lines cut short by a crash, each followed by the restart's notice: (file, line).
    pub torn: Vec<(String, usize)>,
    /// The last file ends in a line cut short with no notice yet (a crash the gateway has
    /// not restarted from, or a line being written): its length.
    pub unfinished_tail: Option<usize>,
}

/// Checks files (oldest first) as one chain.
pub fn verify(files: &[(String, String)], key: Option<&Secret>) -> Result<Verified, Break> {
    let mut prev: Option<String> = None;
    let mut records = 0;
    let mut starts_mid_chain = false;
    let mut torn = Vec::new();
    let mut unfinished_tail = None;
    for (f, (name, text)) in files.iter().enumerate() {
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        let cut_end = !text.is_empty() && !text.ends_with('\n');
        // A torn line waiting for its notice: (line number, length).
        let mut pending: Option<(usize, usize)> = None;
        for (i, line) in lines.iter().enumerate() {
            let at = |reason: String| Break {
                file: name.clone(),
                line: i + 1,
                reason,
            };
            let whole = is_whole(key, line);
            if !whole && pending.is_none() {
                if i + 1 == lines.len() && cut_end && f + 1 == files.len() {
                    unfinished_tail = Some(line.len());
                    break;
                }
                if i + 1 < lines.len() {
                    pending = Some((i + 1, line.len()));
                    continue;
                }
            }
            let (hash, p, body) = open(line).ok_or_else(|| at("not a sealed audit line".into()))?;
            if let Some((torn_line, len)) = pending.take() {
                if torn_bytes(body) != Some(len) {
                    let what = "not a sealed audit line (and no torn-line notice follows it)";
                    return Err(Break {
                        file: name.clone(),
                        line: torn_line,
                        reason: what.into(),
                    });
                }
                torn.push((name.clone(), torn_line));
            }
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
        torn,
        unfinished_tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    proptest! {
        /// Whatever a file holds (a crash's leftovers, an edit, another program's output),
        /// reading and verifying it never panics: a line is sealed, or it is not. The
        /// lines are built around the sealed shape, with any characters (multi-byte ones
        /// too) at any place, so the fixed offsets fall inside characters as well.
        #[test]
        fn any_text_is_read_without_a_panic(
            cut in 0usize..220,
            insert_at in 0usize..220,
            insert in "\\PC{0,3}",
            tail in "\\PC{0,20}",
        ) {
            let (sealed, _) = seal(None, GENESIS, "{\"n\":1}");
            let mut line: String = sealed.chars().take(cut).collect();
            let at = line.char_indices().map(|(i, _)| i).nth(insert_at).unwrap_or(line.len());
            line.insert_str(at, &insert);
            line.push_str(&tail);
            let _ = open(&line);
            let _ = is_whole(None, &line);
            let text = format!("{sealed}\n{line}\n{line}");
            let _ = verify(&[("f".into(), text)], None);
        }
    }

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

    /// A line cut short by a crash verifies only with the restart's notice after it, and
    /// is reported; without the notice (or with one naming another length) it is a break.
    /// An unfinished last line is reported, not a break.
    #[test]
    fn a_torn_line_is_reported_when_a_notice_follows_it() {
        let text = chain(4, None);
        let lines: Vec<&str> = text.lines().collect();
        let torn = &lines[3][..40];
        let last_whole = open(lines[2]).unwrap().0.to_string();
        let (notice, h) = seal(None, &last_whole, &torn_notice("t", torn.len()));
        let (after, _) = seal(None, &h, "{\"n\":9}");
        let restarted = format!(
            "{}\n{}\n{}\n{torn}\n{notice}\n{after}\n",
            lines[0], lines[1], lines[2]
        );
        let v = verify(&[("f".into(), restarted.clone())], None).unwrap();
        assert_eq!((v.records, v.torn.clone()), (5, vec![("f".to_string(), 4)]));
        assert_eq!(v.unfinished_tail, None);

        let no_notice = restarted.replace(&format!("{notice}\n"), "");
        assert_eq!(
            verify(&[("f".into(), no_notice)], None).unwrap_err().line,
            4
        );
        let (wrong, _) = seal(None, &last_whole, &torn_notice("t", torn.len() + 1));
        let wrong_len = restarted.replace(&notice, &wrong);
        assert_eq!(
            verify(&[("f".into(), wrong_len)], None).unwrap_err().line,
            4
        );
        // A notice cannot hide a removed whole line: the chain still breaks.
        let hidden = format!("{}\n{torn}\n{notice}\n", lines[0]);
        assert!(verify(&[("f".into(), hidden)], None).is_err());

        let crashed = format!("{}\n{}\n{}\n{torn}", lines[0], lines[1], lines[2]);
        let v = verify(&[("f".into(), crashed)], None).unwrap();
        assert_eq!((v.records, v.unfinished_tail), (3, Some(40)));
        // Only at the very end: an unfinished line in an older file is a break.
        let older = format!("{}\n{torn}", lines[0]);
        assert!(verify(&[("f.1".into(), older), ("f".into(), String::new())], None).is_err());
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
