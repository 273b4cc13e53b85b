//! A byte-exact port of how PHP 8 turns an `application/x-www-form-urlencoded` body
//! into `$_POST` (`main/php_variables.c`: `add_post_var` and `php_register_variable_ex`).
//!
//! REDCap reads its parameters from `$_POST`, so the gateway must read a body exactly
//! as PHP does: a policy decided on a different reading than REDCap's is a bypass.
//! The differential test in `tests/php_oracle.rs` checks this against real PHP.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use memchr::memchr;

/// A PHP array key: PHP turns canonical decimal strings into integer keys. Strings
/// (keys and values) are `Bytes`, so what needs no decoding shares the request body.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PhpKey {
    Int(i64),
    Str(Bytes),
}

impl PhpKey {
    /// PHP's `ZEND_HANDLE_NUMERIC_STR`: "12" and "-3" are integers; "012", "-0",
    /// "+1" and out-of-range numbers stay strings.
    pub fn from_bytes(b: &[u8]) -> PhpKey {
        match numeric_key(b) {
            Some(i) => PhpKey::Int(i),
            None => PhpKey::Str(Bytes::copy_from_slice(b)),
        }
    }

    /// As `from_bytes`, sharing `b` instead of copying it.
    pub fn from_shared(b: Bytes) -> PhpKey {
        match numeric_key(&b) {
            Some(i) => PhpKey::Int(i),
            None => PhpKey::Str(b),
        }
    }

    /// True when `name` is this key as PHP's symtable functions read it, without
    /// building a key; `numeric` is `numeric_key(name)`, worked out once per scan.
    fn is_probe(&self, name: &[u8], numeric: Option<i64>) -> bool {
        match (self, numeric) {
            (PhpKey::Int(i), Some(n)) => *i == n,
            (PhpKey::Str(s), None) => s[..] == *name,
            _ => false,
        }
    }

    pub fn as_bytes_lossy(&self) -> String {
        match self {
            PhpKey::Int(i) => i.to_string(),
            PhpKey::Str(s) => String::from_utf8_lossy(s).into_owned(),
        }
    }
}

fn numeric_key(b: &[u8]) -> Option<i64> {
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits[0] == b'0' && b.len() > 1 {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse::<i64>().ok()
}

/// A value in `$_POST`: a string or an (ordered) array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhpValue {
    Str(Bytes),
    Array(PhpArray),
}

/// PHP's ordered hash table, with PHP 8's next-free-index rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PhpArray {
    entries: Vec<(PhpKey, PhpValue)>,
    /// `None` stands for PHP's ZEND_LONG_MIN sentinel: nothing appended yet.
    next_free: Option<i64>,
}

impl PhpArray {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&PhpKey, &PhpValue)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn get(&self, key: &PhpKey) -> Option<&PhpValue> {
        self.position(key).map(|i| &self.entries[i].1)
    }

    /// Looks a key up as PHP's symtable functions do (numeric strings become ints).
    pub fn get_str(&self, key: &str) -> Option<&PhpValue> {
        let key = key.as_bytes();
        let numeric = numeric_key(key);
        self.entries
            .iter()
            .find(|(k, _)| k.is_probe(key, numeric))
            .map(|(_, v)| v)
    }

    /// A scalar parameter's value as text (lossy UTF-8); `None` when absent or an array.
    pub fn text(&self, key: &str) -> Option<String> {
        match self.get_str(key)? {
            PhpValue::Str(s) => Some(String::from_utf8_lossy(s).into_owned()),
            PhpValue::Array(_) => None,
        }
    }

    fn position(&self, key: &PhpKey) -> Option<usize> {
        self.entries.iter().position(|(k, _)| k == key)
    }

    fn note_int_key(&mut self, key: &PhpKey) {
        if let PhpKey::Int(h) = key {
            let bump = match self.next_free {
                None => true,
                Some(n) => *h >= n,
            };
            if bump {
                self.next_free = Some(h.saturating_add(1));
            }
        }
    }

    /// `zend_hash_update`: replaces in place (keeping the position) or appends.
    pub fn update(&mut self, key: PhpKey, value: PhpValue) -> usize {
        self.note_int_key(&key);
        match self.position(&key) {
            Some(i) => {
                self.entries[i].1 = value;
                i
            }
            None => {
                self.entries.push((key, value));
                self.entries.len() - 1
            }
        }
    }

    /// `zend_hash_next_index_insert`; fails (returns None) once the index is exhausted.
    pub fn push(&mut self, value: PhpValue) -> Option<usize> {
        let h = self.next_free.unwrap_or(0);
        if self.next_free == Some(i64::MAX) && self.position(&PhpKey::Int(i64::MAX)).is_some() {
            return None;
        }
        Some(self.update(PhpKey::Int(h), value))
    }

    fn remove(&mut self, key: &PhpKey) {
        if let Some(i) = self.position(key) {
            self.entries.remove(i);
        }
    }

    /// The array at `key`, created (or replacing a string) as PHP does for `a[b][c]`.
    fn child_array(&mut self, key: Option<PhpKey>) -> Option<&mut PhpArray> {
        let idx = match key {
            None => self.push(PhpValue::Array(PhpArray::new()))?,
            Some(k) => match self.position(&k) {
                Some(i) => {
                    if !matches!(self.entries[i].1, PhpValue::Array(_)) {
                        self.entries[i].1 = PhpValue::Array(PhpArray::new());
                    }
                    i
                }
                None => self.update(k, PhpValue::Array(PhpArray::new())),
            },
        };
        match &mut self.entries[idx].1 {
            PhpValue::Array(a) => Some(a),
            PhpValue::Str(_) => None,
        }
    }
}

/// What a body did that PHP would read differently from a plain parser.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("the body has {count} parameters; the limit (PHP max_input_vars) is {limit}")]
    TooManyVars { count: usize, limit: usize },
    #[error("parameter nesting is deeper than {limit} levels (PHP max_input_nesting_level)")]
    TooDeep { limit: usize },
}

/// The PHP limits that change how a body is read.
#[derive(Debug, Clone, Copy)]
pub struct PhpLimits {
    pub max_input_vars: usize,
    pub max_input_nesting_level: usize,
}

impl Default for PhpLimits {
    fn default() -> Self {
        Self {
            max_input_vars: 1000,
            max_input_nesting_level: 64,
        }
    }
}

/// One `name=value` pair of the body as it arrived, with how PHP names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Byte range of the whole raw segment (without its `&`).
    pub start: usize,
    pub end: usize,
    /// The top-level `$_POST` key it writes, or None when PHP drops it.
    pub top_key: Option<PhpKey>,
    /// True when it writes into an array (`name[...]`).
    pub is_array: bool,
}

/// A parsed urlencoded body: `$_POST` as PHP builds it, plus the raw segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedForm {
    pub post: PhpArray,
    pub segments: Vec<Segment>,
}

impl ParsedForm {
    /// How many segments write the top-level key `name`, and whether any is an array form.
    pub fn occurrences(&self, name: &str) -> (usize, bool) {
        let name = name.as_bytes();
        let numeric = numeric_key(name);
        self.segments
            .iter()
            .filter(|s| {
                s.top_key
                    .as_ref()
                    .is_some_and(|k| k.is_probe(name, numeric))
            })
            .fold((0, false), |(n, arr), s| (n + 1, arr || s.is_array))
    }
}

/// Splits the body on `&` exactly as `add_post_var` does: a trailing empty piece is not a
/// variable, every other piece (even an empty one) counts towards `max_input_vars`.
pub fn split_segments(body: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos >= body.len() {
            return None;
        }
        let start = pos;
        let end = memchr(b'&', &body[start..]).map_or(body.len(), |i| start + i);
        pos = end + 1;
        Some((start, end))
    })
}

/// Below this length a plain loop beats memchr2's dispatch (most names and values).
const SHORT: usize = 32;

/// `php_url_decode`: `+` is a space, `%XX` a byte, any other `%` stays as it is.
pub fn url_decode(input: &[u8]) -> Vec<u8> {
    url_decode_cow(input).into_owned()
}

/// `url_decode`, borrowing the input when it has nothing to decode (most names and
/// values), so the parse allocates only what it keeps.
pub fn url_decode_cow(input: &[u8]) -> Cow<'_, [u8]> {
    let plain = if input.len() < SHORT {
        !input.iter().any(|&b| b == b'+' || b == b'%')
    } else {
        memchr::memchr2(b'+', b'%', input).is_none()
    };
    if plain {
        return Cow::Borrowed(input);
    }
    Cow::Owned(decode(input))
}

fn decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
                match (
                    input.get(i + 1).and_then(|&b| hex(b)),
                    input.get(i + 2).and_then(|&b| hex(b)),
                ) {
                    (Some(h), Some(l)) => {
                        out.push(h * 16 + l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Parses a whole urlencoded body as PHP would, rejecting what PHP would truncate.
pub fn parse_urlencoded(body: &[u8], limits: PhpLimits) -> Result<ParsedForm, FormError> {
    parse_urlencoded_shared(&Bytes::copy_from_slice(body), limits)
}

/// `parse_urlencoded` on a body already in `Bytes`: names and values that need no
/// decoding are slices of it, not copies.
///
/// Nearly every segment a client sends is a plain name (letters, digits, `_`, `-`), `=`,
/// and a short value: one pass over the segment finds its end and whether the value needs
/// decoding, with no call per piece. Anything else takes PHP's whole naming path
/// (`register_in`). Both are checked against real PHP (`tests/php_oracle.rs`).
pub fn parse_urlencoded_shared(body: &Bytes, limits: PhpLimits) -> Result<ParsedForm, FormError> {
    let b: &[u8] = body;
    let guess = (b.len() / 16 + 1).min(limits.max_input_vars);
    let mut post = PhpArray::new();
    post.entries.reserve(guess);
    let mut segments = Vec::with_capacity(guess);
    let mut pos = 0usize;
    while pos < b.len() {
        if segments.len() >= limits.max_input_vars {
            let count = split_segments(b).count();
            return Err(FormError::TooManyVars {
                count,
                limit: limits.max_input_vars,
            });
        }
        let start = pos;
        let mut i = start;
        while i < b.len() && PLAIN_NAME[b[i] as usize] {
            i += 1;
        }
        let stop = b.get(i).copied();
        let end;
        let (top_key, is_array) = if i > start && matches!(stop, None | Some(b'=' | b'&')) {
            // A plain name: nothing to decode, trim, rewrite or index; PHP takes it as it is.
            let value = if stop == Some(b'=') {
                let (e, decode) = value_end(b, i + 1);
                end = e;
                piece(body, &b[i + 1..e], decode)
            } else {
                end = i;
                Bytes::new()
            };
            let key = PhpKey::from_shared(body.slice(start..i));
            post.update(key.clone(), PhpValue::Str(value));
            (Some(key), false)
        } else {
            end = memchr(b'&', &b[start..]).map_or(b.len(), |k| start + k);
            let raw = &b[start..end];
            let (raw_name, raw_value) = match memchr(b'=', raw) {
                Some(k) => (&raw[..k], &raw[k + 1..]),
                None => (raw, &b""[..]),
            };
            let value = shared(body, url_decode_cow(raw_value));
            let name = url_decode_cow(raw_name);
            register_in(
                &mut post,
                body,
                &name,
                value,
                limits.max_input_nesting_level,
            )?
        };
        segments.push(Segment {
            start,
            end,
            top_key,
            is_array,
        });
        pos = end + 1;
    }
    Ok(ParsedForm { post, segments })
}

/// Bytes of a name PHP leaves alone: ASCII letters, digits, `_` and `-` (no `+`, `%`,
/// space, dot, bracket or NUL for it to act on).
static PLAIN_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
        c += 1;
    }
    t
};

/// Where the value starting at `from` ends (the next `&`, or the body's end), and whether
/// it holds a `+` or `%` to decode. Short values are scanned in one plain loop; past
/// `SHORT * 2` bytes memchr takes over (an import's `data` runs to megabytes).
fn value_end(b: &[u8], from: usize) -> (usize, bool) {
    let window = (from + SHORT * 2).min(b.len());
    let mut decode = false;
    for (k, &c) in b[from..window].iter().enumerate() {
        if c == b'&' {
            return (from + k, decode);
        }
        decode |= c == b'+' || c == b'%';
    }
    if window == b.len() {
        return (window, decode);
    }
    let end = memchr(b'&', &b[window..]).map_or(b.len(), |k| window + k);
    (
        end,
        decode || memchr::memchr2(b'+', b'%', &b[window..end]).is_some(),
    )
}

/// A value as `Bytes`: a slice of `body`, decoded into a copy only when it has to be.
fn piece(body: &Bytes, raw: &[u8], decode: bool) -> Bytes {
    if decode {
        Bytes::from(self::decode(raw))
    } else {
        share(body, raw)
    }
}

/// A decoded piece as `Bytes`: a slice of `body` when nothing was decoded.
fn shared(body: &Bytes, piece: Cow<'_, [u8]>) -> Bytes {
    match piece {
        Cow::Borrowed(b) => share(body, b),
        Cow::Owned(v) => Bytes::from(v),
    }
}

/// `part` as `Bytes`: a slice of `owner` when it lies inside it, else a copy.
fn share(owner: &Bytes, part: &[u8]) -> Bytes {
    if part.is_empty() {
        return Bytes::new();
    }
    let base = owner.as_ptr() as usize;
    let at = part.as_ptr() as usize;
    if at >= base && at + part.len() <= base + owner.len() {
        owner.slice(at - base..at - base + part.len())
    } else {
        Bytes::copy_from_slice(part)
    }
}

/// The top-level key a raw (still percent-encoded) name writes, if any.
pub fn top_level_name(raw_name: &[u8]) -> Option<PhpKey> {
    let decoded = url_decode(raw_name);
    let mut scratch = PhpArray::new();
    register_variable(&mut scratch, &decoded, Vec::new(), usize::MAX)
        .ok()
        .and_then(|(k, _)| k)
}

/// `php_register_variable_ex` for one decoded name. Returns the top-level key written
/// (None when PHP drops the variable) and whether the name had an array form.
pub fn register_variable(
    post: &mut PhpArray,
    name: &[u8],
    value: Vec<u8>,
    max_nesting: usize,
) -> Result<(Option<PhpKey>, bool), FormError> {
    register_in(post, &Bytes::new(), name, Bytes::from(value), max_nesting)
}

/// `register_variable` with keys shared from `owner` where `name` lies inside it (a
/// name that needed no decoding is a slice of the body); other keys are copied.
fn register_in(
    post: &mut PhpArray,
    owner: &Bytes,
    name: &[u8],
    value: Bytes,
    max_nesting: usize,
) -> Result<(Option<PhpKey>, bool), FormError> {
    // PHP treats names as C strings: a decoded NUL ends the name.
    let name = match memchr(0, name) {
        Some(i) => &name[..i],
        None => name,
    };
    let trimmed = &name[name.iter().take_while(|&&b| b == b' ').count()..];

    // Spaces and dots become underscores up to the first `[` (copied only when needed).
    let bracket = memchr(b'[', trimmed);
    let base_len = bracket.unwrap_or(trimmed.len());
    let var: Cow<'_, [u8]> = if trimmed[..base_len].iter().any(|&b| b == b' ' || b == b'.') {
        let mut v = trimmed.to_vec();
        for b in &mut v[..base_len] {
            if *b == b' ' || *b == b'.' {
                *b = b'_';
            }
        }
        Cow::Owned(v)
    } else {
        Cow::Borrowed(trimmed)
    };
    if base_len == 0 {
        return Ok((None, false));
    }
    // A key made of `var[a..b]`: shared with `name` unless `var` had to be rewritten.
    let key_of = |a: usize, b: usize| match &var {
        Cow::Borrowed(v) => PhpKey::from_shared(share(owner, &v[a..b])),
        Cow::Owned(v) => PhpKey::from_bytes(&v[a..b]),
    };
    let Some(first_bracket) = bracket else {
        let key = key_of(0, var.len());
        post.update(key.clone(), PhpValue::Str(value));
        return Ok((Some(key), false));
    };

    // Walk the `[index]` groups (as ranges of `var`). `ip` is the position of the current `[`.
    let mut indices: Vec<Option<(usize, usize)>> = Vec::new();
    let mut ip = first_bracket;
    let mut top_override: Option<Vec<u8>> = None;
    let mut nest_level = 0usize;
    loop {
        nest_level += 1;
        if nest_level > max_nesting {
            // PHP deletes the whole top-level variable and drops this value.
            let key = key_of(0, base_len);
            post.remove(&key);
            return Err(FormError::TooDeep { limit: max_nesting });
        }
        let index_s = ip + 1;
        let mut p = index_s;
        if var.get(p) == Some(&b' ') {
            p += 1;
        }
        if var.get(p) == Some(&b']') {
            indices.push(None);
            ip = p;
        } else {
            match memchr(b']', &var[p..]) {
                Some(off) => {
                    let close = p + off;
                    indices.push(Some((index_s, close)));
                    ip = close;
                }
                None => {
                    // Not an index: at the first level the `[` and what follows join the
                    // name (with ' ', '.', '[' as '_'); deeper, the rest is ignored.
                    if indices.is_empty() {
                        let mut joined = var[..base_len].to_vec();
                        joined.push(b'_');
                        joined.extend(var[index_s..].iter().map(|&b| match b {
                            b' ' | b'.' | b'[' => b'_',
                            b => b,
                        }));
                        top_override = Some(joined);
                    }
                    break;
                }
            }
        }
        // After the `]`: another `[` continues, anything else ends the name.
        if var.get(ip + 1) == Some(&b'[') {
            ip += 1;
        } else {
            break;
        }
    }

    if let Some(joined) = top_override {
        let key = PhpKey::from_bytes(&joined);
        post.update(key.clone(), PhpValue::Str(value));
        return Ok((Some(key), false));
    }

    let top = key_of(0, base_len);
    // All but the last index descend into (or create) arrays; the last one is assigned.
    let Some((last, path)) = indices.split_last() else {
        return Ok((Some(top), true));
    };
    let Some(mut table) = post.child_array(Some(top.clone())) else {
        return Ok((Some(top), true));
    };
    for idx in path {
        let key = idx.map(|(a, b)| key_of(a, b));
        match table.child_array(key) {
            Some(t) => table = t,
            None => return Ok((Some(top), true)),
        }
    }
    match last {
        None => {
            table.push(PhpValue::Str(value));
        }
        Some((a, b)) => {
            table.update(key_of(*a, *b), PhpValue::Str(value));
        }
    }
    Ok((Some(top), true))
}

impl fmt::Display for PhpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_bytes_lossy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(body: &str) -> PhpArray {
        parse_urlencoded(body.as_bytes(), PhpLimits::default())
            .unwrap()
            .post
    }

    /// Values past the plain loop's window: a `&`, `+` or `%` on either side of it.
    #[test]
    fn long_values_end_and_decode_wherever_their_bytes_are() {
        let long = "x".repeat(70);
        let p = post(&format!("a={long}%41&b=1"));
        assert_eq!(p.get_str("a"), Some(&s(&format!("{long}A"))));
        assert_eq!(p.get_str("b"), Some(&s("1")));
        let p = post(&format!("a={long}+"));
        assert_eq!(p.get_str("a"), Some(&s(&format!("{long} "))));
        for n in [62, 63, 64, 65, 200] {
            let v = "y".repeat(n);
            let p = post(&format!("a={v}&b=%41+&c"));
            assert_eq!(p.get_str("a"), Some(&s(&v)), "{n}");
            assert_eq!(p.get_str("b"), Some(&s("A ")), "{n}");
            assert_eq!(p.get_str("c"), Some(&s("")), "{n}");
            assert_eq!(p.len(), 3);
        }
    }

    proptest::proptest! {
        /// Bodies of plain names (the fast path): `$_POST` is PHP's last-wins, first-place
        /// table of the names (canonical integers as int keys) and their decoded values,
        /// and each segment's range is its bytes between the `&`s.
        #[test]
        fn plain_names_read_as_php_reads_them(
            pairs in proptest::collection::vec(
                ("[a-c0-9_-]{1,3}", proptest::option::of("x{0,80}[xz+%4AG&=]{0,12}")),
                0..12,
            ),
            trailing in proptest::bool::ANY,
        ) {
            let mut body = String::new();
            let mut expected: Vec<(PhpKey, Vec<u8>)> = Vec::new();
            for (i, (name, value)) in pairs.iter().enumerate() {
                if i > 0 {
                    body.push('&');
                }
                body.push_str(name);
                // A `&` in the value starts a new segment: keep values free of it, and
                // put `=` only after the first `=`.
                let value = value.as_ref().map(|v| v.replace('&', ""));
                if let Some(v) = &value {
                    body.push('=');
                    body.push_str(v);
                }
                let key = PhpKey::from_bytes(name.as_bytes());
                let decoded = url_decode(value.unwrap_or_default().as_bytes());
                match expected.iter_mut().find(|(k, _)| *k == key) {
                    Some(slot) => slot.1 = decoded,
                    None => expected.push((key, decoded)),
                }
            }
            // A trailing `&` adds no segment (a lone `&` is one empty segment).
            if trailing && !pairs.is_empty() {
                body.push('&');
            }
            let form = parse_urlencoded(body.as_bytes(), PhpLimits::default()).unwrap();
            let got: Vec<(PhpKey, Vec<u8>)> = form
                .post
                .iter()
                .map(|(k, v)| match v {
                    PhpValue::Str(b) => (k.clone(), b.to_vec()),
                    PhpValue::Array(_) => panic!("no arrays here"),
                })
                .collect();
            proptest::prop_assert_eq!(got, expected);
            proptest::prop_assert_eq!(form.segments.len(), pairs.len());
            for seg in &form.segments {
                let raw = &body.as_bytes()[seg.start..seg.end];
                proptest::prop_assert!(!raw.contains(&b'&'));
                proptest::prop_assert!(seg.end == body.len() || body.as_bytes()[seg.end] == b'&');
            }
        }
    }

    fn s(v: &str) -> PhpValue {
        PhpValue::Str(Bytes::copy_from_slice(v.as_bytes()))
    }

    #[test]
    fn last_key_wins() {
        let p = post("content=record&content=user");
        assert_eq!(p.get_str("content"), Some(&s("user")));
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn dots_spaces_and_leading_spaces() {
        let p = post("a.b+c=1&%20x=2&+y=3");
        assert_eq!(p.get_str("a_b_c"), Some(&s("1")));
        assert_eq!(p.get_str("x"), Some(&s("2")));
        assert_eq!(p.get_str("y"), Some(&s("3")));
    }

    #[test]
    fn nul_ends_the_name() {
        let p = post("content%00x=user");
        assert_eq!(p.get_str("content"), Some(&s("user")));
    }

    #[test]
    fn decoding_happens_after_splitting() {
        let p = post("a%3Db%26c=1");
        assert_eq!(p.get_str("a=b&c"), Some(&s("1")));
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn arrays_append_and_index() {
        let p = post("users[]=a&users[]=b&u[1]=x&u[]=y");
        let PhpValue::Array(users) = p.get_str("users").unwrap() else {
            panic!("users should be an array")
        };
        assert_eq!(users.len(), 2);
        let PhpValue::Array(u) = p.get_str("u").unwrap() else {
            panic!("u should be an array")
        };
        assert_eq!(u.get(&PhpKey::Int(2)), Some(&s("y")));
    }

    #[test]
    fn negative_index_then_append_continues() {
        let PhpValue::Array(a) = post("a[-5]=x&a[]=y").get_str("a").cloned().unwrap() else {
            panic!()
        };
        assert_eq!(a.get(&PhpKey::Int(-4)), Some(&s("y")));
    }

    #[test]
    fn unterminated_brackets() {
        assert_eq!(post("a[b=1").get_str("a_b"), Some(&s("1")));
        assert_eq!(post("b[=2").get_str("b_"), Some(&s("2")));
        let PhpValue::Array(a) = post("a[b][c=1").get_str("a").cloned().unwrap() else {
            panic!()
        };
        assert_eq!(a.get_str("b"), Some(&s("1")));
    }

    #[test]
    fn trailing_text_after_bracket_is_ignored() {
        let PhpValue::Array(a) = post("a[x]y=1").get_str("a").cloned().unwrap() else {
            panic!()
        };
        assert_eq!(a.get_str("x"), Some(&s("1")));
    }

    #[test]
    fn space_inside_index() {
        let PhpValue::Array(a) = post("a[ ]=1&a[ b]=2").get_str("a").cloned().unwrap() else {
            panic!()
        };
        assert_eq!(a.get(&PhpKey::Int(0)), Some(&s("1")));
        assert_eq!(a.get_str(" b"), Some(&s("2")));
    }

    #[test]
    fn empty_and_bracket_first_names_are_dropped() {
        assert!(post("=1&[a]=2&&").is_empty());
    }

    #[test]
    fn numeric_keys() {
        assert_eq!(PhpKey::from_bytes(b"12"), PhpKey::Int(12));
        assert_eq!(PhpKey::from_bytes(b"-3"), PhpKey::Int(-3));
        assert_eq!(PhpKey::from_bytes(b"0"), PhpKey::Int(0));
        for s in ["012", "-0", "+1", "1a", "", "-", "9223372036854775808"] {
            assert_eq!(
                PhpKey::from_bytes(s.as_bytes()),
                PhpKey::Str(Bytes::copy_from_slice(s.as_bytes()))
            );
        }
    }

    #[test]
    fn max_input_vars_counts_empty_segments() {
        let limits = PhpLimits {
            max_input_vars: 3,
            max_input_nesting_level: 64,
        };
        assert!(parse_urlencoded(b"a=1&&b=2&", limits).is_ok());
        assert_eq!(
            parse_urlencoded(b"a=1&&b=2&c", limits),
            Err(FormError::TooManyVars { count: 4, limit: 3 })
        );
    }

    #[test]
    fn nesting_limit() {
        let ok = format!("a{}=1", "[x]".repeat(64));
        assert!(parse_urlencoded(ok.as_bytes(), PhpLimits::default()).is_ok());
        let deep = format!("a{}=1", "[x]".repeat(65));
        assert_eq!(
            parse_urlencoded(deep.as_bytes(), PhpLimits::default()),
            Err(FormError::TooDeep { limit: 64 })
        );
    }

    #[test]
    fn invalid_percent_stays() {
        assert_eq!(url_decode(b"%zz%4"), b"%zz%4".to_vec());
        assert_eq!(url_decode(b"%41%2b+"), b"A+ ".to_vec());
    }

    #[test]
    fn top_level_names() {
        assert_eq!(
            top_level_name(b"%20token"),
            Some(PhpKey::Str(Bytes::from_static(b"token")))
        );
        assert_eq!(
            top_level_name(b"mobile.app"),
            Some(PhpKey::Str(Bytes::from_static(b"mobile_app")))
        );
        assert_eq!(
            top_level_name(b"token[x]"),
            Some(PhpKey::Str(Bytes::from_static(b"token")))
        );
        assert_eq!(top_level_name(b"[token]"), None);
    }
}
