//! The references in REDCap logic (`filterLogic`): every `[...]` it names. REDCap
//! evaluates a filter on any field it names, whatever the caller may export, so a filter
//! is an oracle on hidden fields (`[ssn] = '123-45-6789'`); the gateway lets a restricted
//! caller filter only on fields it may export.
//!
//! Written by hand because no crate parses REDCap's logic language. It reads less than
//! REDCap's parser on purpose: it finds every bracket anywhere in the text, inside
//! string literals too, so no quoting or escaping trick can hide a reference from it
//! (a literal like `'[x]'` is read as a reference and must then be allowed), and it
//! refuses what it cannot read (an unclosed or nested bracket, a character reference
//! such as `&#91;` that an HTML-decoding step could turn into a bracket, a NUL byte).

/// One `[...]` reference: `[field]`, `[field(code)]`, `[field:checked]`,
/// `[field(code):checked]`, an event prefix `[event]` (before `[field]`), an instance
/// `[2]`, or a smart variable `[event-name]`, `[record-name]`, ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference<'a> {
    /// The name before any `(code)` or `:parameter`.
    pub name: &'a str,
    /// The checkbox code in `[field(code)]`.
    pub code: Option<&'a str>,
    /// What follows the first `:` (`checked`, `value`, `label`, ...).
    pub param: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogicError {
    #[error("a '[' at byte {0} is not closed by ']'")]
    Unclosed(usize),
    #[error("a '[' at byte {0} opens inside another reference")]
    Nested(usize),
    #[error("the reference at byte {0} is empty")]
    Empty(usize),
    #[error("the reference at byte {0} has characters REDCap names do not use")]
    BadName(usize),
    #[error("character references (&#...; or &name;) are not accepted in logic")]
    CharacterReference,
    #[error("NUL bytes are not accepted in logic")]
    Nul,
}

/// Every reference in `logic`, in order. Fails on anything it cannot read for certain.
pub fn references(logic: &str) -> Result<Vec<Reference<'_>>, LogicError> {
    let b = logic.as_bytes();
    if b.contains(&0) {
        return Err(LogicError::Nul);
    }
    if has_character_reference(b) {
        return Err(LogicError::CharacterReference);
    }
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = memchr::memchr(b'[', &b[i..]) {
        let open = i + off;
        let close = match memchr::memchr2(b']', b'[', &b[open + 1..]) {
            Some(o) if b[open + 1 + o] == b']' => open + 1 + o,
            Some(_) => return Err(LogicError::Nested(open)),
            None => return Err(LogicError::Unclosed(open)),
        };
        out.push(reference(&logic[open + 1..close], open)?);
        i = close + 1;
    }
    Ok(out)
}

/// `&#...;` or `&letters;`: what an HTML decoder would turn into another character.
fn has_character_reference(b: &[u8]) -> bool {
    let mut i = 0;
    while let Some(off) = memchr::memchr(b'&', &b[i..]) {
        let start = i + off + 1;
        let mut j = start;
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'#') {
            j += 1;
        }
        if j > start && j < b.len() && b[j] == b';' {
            return true;
        }
        i = start;
    }
    false
}

fn name_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-'
}

/// The inside of one `[...]`: `name`, `name(code)`, `name:param`, `name(code):param`.
fn reference(inner: &str, at: usize) -> Result<Reference<'_>, LogicError> {
    if inner.is_empty() {
        return Err(LogicError::Empty(at));
    }
    let (head, param) = match inner.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (inner, None),
    };
    let (name, code) = match head.split_once('(') {
        Some((n, rest)) => {
            let code = rest.strip_suffix(')').ok_or(LogicError::BadName(at))?;
            let ok = !code.is_empty()
                && code
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'));
            if !ok {
                return Err(LogicError::BadName(at));
            }
            (n, Some(code))
        }
        None => (head, None),
    };
    if name.is_empty() || !name.bytes().all(name_char) {
        return Err(LogicError::BadName(at));
    }
    if let Some(p) = param {
        let ok = !p.is_empty() && p.bytes().all(|c| name_char(c) || c == b':' || c == b',');
        if !ok {
            return Err(LogicError::BadName(at));
        }
    }
    Ok(Reference { name, code, param })
}

/// Smart variables that name no record data of their own: events, arms, instances and
/// the record's DAG. Any other smart variable is refused for a restricted caller (some
/// show survey participants' e-mail addresses or phone numbers). `record-name` is the
/// record id field's value and is allowed when that field is.
pub const SAFE_SMART_VARIABLES: &[&str] = &[
    "event-name",
    "event-label",
    "event-id",
    "event-number",
    "previous-event-name",
    "next-event-name",
    "first-event-name",
    "last-event-name",
    "arm-number",
    "arm-label",
    "current-instance",
    "previous-instance",
    "next-instance",
    "first-instance",
    "last-instance",
    "record-dag-name",
    "record-dag-id",
    "record-dag-label",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn names(logic: &str) -> Vec<&str> {
        references(logic).unwrap().iter().map(|r| r.name).collect()
    }

    #[test]
    fn every_spelling_redcap_accepts() {
        assert_eq!(names("[ssn] = '1'"), ["ssn"]);
        assert_eq!(names("[visit_1_arm_1][age] > 3"), ["visit_1_arm_1", "age"]);
        assert_eq!(names("[race(2)] = '1'"), ["race"]);
        assert_eq!(names("[race:checked] <> ''"), ["race"]);
        assert_eq!(names("[race(2):checked]"), ["race"]);
        assert_eq!(names("[labs][1][hb] > 10"), ["labs", "1", "hb"]);
        assert_eq!(
            names("[event-name] = 'v1' and [age]>1"),
            ["event-name", "age"]
        );
        let r = &references("[race(a_1):value]").unwrap()[0];
        assert_eq!((r.code, r.param), (Some("a_1"), Some("value")));
    }

    #[test]
    fn brackets_inside_strings_are_references_too() {
        assert_eq!(names("[age] = '[ssn]'"), ["age", "ssn"]);
        assert_eq!(names("[age] = \"x\\\"[ssn]\""), ["age", "ssn"]);
    }

    #[test]
    fn what_cannot_be_read_is_refused() {
        for bad in [
            "[ssn",
            "[a[ssn]]",
            "[]",
            "[SSN]",
            "[ ssn]",
            "[ssn ]",
            "[s\u{17f}n]",
            "[ssn(]",
            "[ssn()]",
            "[ssn:]",
            "&#91;ssn&#93; = 1",
            "&lsqb;ssn&rsqb;",
            "[age]\0",
        ] {
            assert!(references(bad).is_err(), "{bad:?}");
        }
        assert!(references("[age] > 1 && [age] < 9 & x").is_ok());
        assert!(references("no references at all ]").unwrap().is_empty());
    }
}
