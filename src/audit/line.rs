//! An audit record as one JSON line, written by hand: the derived serde_json serializer
//! escapes byte by byte and cost ~7k instructions per record, about 4% of a request.
//! The output is byte-for-byte what `serde_json::to_string(&record)` writes (a property
//! test below holds it to that), so lines and hash chains are unchanged.

use super::Record;

/// Room for a typical record (most lines are 400-700 bytes).
const CAPACITY: usize = 1024;

/// `,"name":` as one literal.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

pub fn to_json(r: &Record<'_>) -> String {
    let mut o = Out(String::with_capacity(CAPACITY));
    // `time` is always there, so every later field starts with a comma.
    o.0.push_str("{\"time\":");
    o.string(&r.time);
    o.str_field(key!("phase"), r.phase);
    o.str_field(key!("request_id"), r.request_id);
    o.opt_str(key!("user"), r.user);
    o.list(key!("groups"), r.groups);
    o.opt_str(key!("issuer"), r.issuer);
    o.opt_str(key!("credential"), r.credential);
    o.opt_str(key!("project"), r.project);
    o.opt_str(key!("content"), r.content);
    o.opt_str(key!("action"), r.action);
    o.opt_str(key!("format"), r.format);
    o.opt_str(key!("return_format"), r.return_format);
    o.str_field(key!("decision"), r.decision);
    o.opt_str(key!("rule"), r.rule);
    o.list(key!("reasons"), r.reasons);
    o.list(key!("users"), r.users);
    o.list(key!("changes"), r.changes);
    o.opt_str(key!("export_rights"), r.export_rights);
    o.opt_str(key!("export_fields"), r.export_fields);
    o.list(key!("export_dropped"), r.export_dropped);
    o.opt_str(key!("dag_scope"), r.dag_scope);
    o.opt_int(key!("rows_dropped"), r.rows_dropped);
    o.opt_int(key!("status"), r.status.map(u64::from));
    o.opt_int(key!("upstream_status"), r.upstream_status.map(u64::from));
    o.opt_str(key!("error"), r.error);
    o.opt_int(key!("bytes_in"), r.bytes_in);
    o.opt_int(key!("bytes_out"), r.bytes_out);
    if let Some(ms) = r.duration_ms {
        o.0.push_str(key!("duration_ms"));
        // Non-finite floats are `null` in serde_json; zmij (its float writer) the rest.
        if ms.is_finite() {
            o.0.push_str(zmij::Buffer::new().format_finite(ms));
        } else {
            o.0.push_str("null");
        }
    }
    o.opt_str(key!("client"), r.client);
    o.0.push_str(key!("complete"));
    o.0.push_str(if r.complete { "true}" } else { "false}" });
    o.0
}

/// A byte JSON requires escaped in a string: a control character, `"` or `\`.
fn must_escape(x: u8) -> bool {
    (x < 0x20) | (x == b'"') | (x == b'\\')
}

/// True when some byte of `b` must be escaped. Checked 16 bytes at a time without early
/// exit, so the compiler vectorizes it: most strings need nothing.
fn needs_escape(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(16);
    for c in &mut chunks {
        if c.iter().fold(false, |acc, &x| acc | must_escape(x)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&x| must_escape(x))
}

/// `SystemTime` as RFC 3339 UTC with milliseconds (`2026-12-03T09:05:02.123Z`), as
/// `humantime::format_rfc3339_millis` writes it, without the formatting machinery.
/// A clock before 1970 (where humantime panics) reads as 1970-01-01T00:00:00.000Z, one
/// after 9999 as the last millisecond of 9999.
pub fn rfc3339_millis(t: std::time::SystemTime) -> String {
    const LAST: std::time::Duration = std::time::Duration::new(253_402_300_799, 999_999_999);
    let since = t
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .min(LAST);
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    let mut out = [0u8; 24];
    let mut put = |at: usize, v: u64, width: usize| {
        let mut v = v;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, y, 4);
    put(5, m, 2);
    put(8, d, 2);
    put(11, rem / 3600, 2);
    put(14, rem / 60 % 60, 2);
    put(17, rem % 60, 2);
    put(20, u64::from(since.subsec_millis()), 3);
    for (at, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ] {
        out[at] = c;
    }
    out[23] = b'Z';
    // All ASCII digits and separators.
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`, for days >= 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

struct Out(String);

impl Out {
    fn str_field(&mut self, key: &str, v: &str) {
        self.0.push_str(key);
        self.string(v);
    }

    fn opt_str(&mut self, key: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.str_field(key, v);
        }
    }

    fn opt_int(&mut self, key: &str, v: Option<u64>) {
        if let Some(v) = v {
            self.0.push_str(key);
            self.0.push_str(itoa::Buffer::new().format(v));
        }
    }

    fn list(&mut self, key: &str, items: &[String]) {
        if items.is_empty() {
            return;
        }
        self.0.push_str(key);
        self.0.push('[');
        for (i, s) in items.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            self.string(s);
        }
        self.0.push(']');
    }

    /// A JSON string as serde_json writes it: `"` and `\` escaped, control characters
    /// as `\b \t \n \f \r` or `\u00XX`, everything else (all of UTF-8) as it is.
    fn string(&mut self, s: &str) {
        self.0.push('"');
        let bytes = s.as_bytes();
        if !needs_escape(bytes) {
            self.0.push_str(s);
            self.0.push('"');
            return;
        }
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if !must_escape(b) {
                continue;
            }
            // Every byte that needs escaping is ASCII, so these are char boundaries.
            self.0.push_str(&s[start..i]);
            match b {
                b'"' => self.0.push_str("\\\""),
                b'\\' => self.0.push_str("\\\\"),
                b'\n' => self.0.push_str("\\n"),
                b'\r' => self.0.push_str("\\r"),
                b'\t' => self.0.push_str("\\t"),
                0x08 => self.0.push_str("\\b"),
                0x0c => self.0.push_str("\\f"),
                _ => {
                    self.0.push_str("\\u00");
                    self.0.push_str(&super::chain::hex(&[b]));
                }
            }
            start = i + 1;
        }
        self.0.push_str(&s[start..]);
        self.0.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leak(v: Vec<String>) -> &'static [String] {
        Box::leak(v.into_boxed_slice())
    }

    fn lit(s: Option<String>) -> Option<&'static str> {
        s.map(|s| &*Box::leak(s.into_boxed_str()))
    }

    // Any text, weighted towards what needs escaping.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            ".*",
            "[a-z\"\\\\\u{0}-\u{1f}\u{7f}é€😀 ]{0,12}",
            // Long runs with one byte to escape anywhere: the 16-byte scan's edges.
            "[a-z]{0,40}[\"\\\\\u{0}-\u{1f}]?[a-zé]{0,40}",
            Just(String::new()),
        ]
    }

    proptest! {
        #[test]
        fn same_bytes_as_serde_json(
            time in text(), request_id in text(),
            user in proptest::option::of(text()), issuer in proptest::option::of(text()),
            project in proptest::option::of(text()), content in proptest::option::of(text()),
            client in proptest::option::of(text()),
            groups in proptest::collection::vec(text(), 0..3),
            reasons in proptest::collection::vec(text(), 0..3),
            users in proptest::collection::vec(text(), 0..3),
            status in proptest::option::of(any::<u16>()),
            bytes_in in proptest::option::of(any::<u64>()),
            bytes_out in proptest::option::of(any::<u64>()),
            duration_ms in proptest::option::of(prop_oneof![
                any::<f64>(), (0u64..10_000_000).prop_map(|us| us as f64 / 1e3),
                Just(f64::NAN), Just(f64::INFINITY), Just(-0.0),
            ]),
            complete in any::<bool>(),
            phase in prop_oneof![Just("final"), Just("intent")],
            decision in prop_oneof![Just("allow"), Just("deny"), Just("none")],
        ) {
            let (export_rights, export_fields, export_dropped) =
                (lit(user.clone()), lit(content.clone()), leak(users.clone()));
            let r = Record {
                time,
                phase,
                request_id: lit(Some(request_id)).unwrap(),
                user: lit(user),
                groups: leak(groups),
                issuer: lit(issuer),
                credential: Some("jwt"),
                project: lit(project),
                content: lit(content),
                action: Some("export"),
                format: None,
                return_format: Some("json"),
                decision,
                rule: None,
                reasons: leak(reasons),
                users: leak(users),
                changes: &[],
                export_rights,
                export_fields,
                export_dropped,
                dag_scope: lit(client.clone()),
                rows_dropped: bytes_in,
                status,
                upstream_status: status.map(|s| s / 2),
                error: None,
                bytes_in,
                bytes_out,
                duration_ms,
                client: lit(client),
                complete,
            };
            let mine = to_json(&r);
            prop_assert_eq!(&mine, &serde_json::to_string(&r).unwrap());
            prop_assert!(serde_json::from_str::<serde_json::Value>(&mine).is_ok());
        }
    }

    proptest! {
        #[test]
        fn times_as_humantime_writes_them(secs in 0u64..253_402_300_800, nanos in 0u32..1_000_000_000) {
            let t = std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos);
            prop_assert_eq!(rfc3339_millis(t), humantime::format_rfc3339_millis(t).to_string());
        }
    }

    #[test]
    fn times_at_the_edges() {
        for secs in [
            0,
            59,
            86_399,
            86_400,
            951_782_400,
            4_107_542_399,
            253_402_300_799,
        ] {
            let t = std::time::UNIX_EPOCH + std::time::Duration::new(secs, 999_999_999);
            assert_eq!(
                rfc3339_millis(t),
                humantime::format_rfc3339_millis(t).to_string()
            );
        }
        let before = std::time::UNIX_EPOCH - std::time::Duration::from_secs(1);
        assert_eq!(rfc3339_millis(before), "1970-01-01T00:00:00.000Z");
        let after = std::time::UNIX_EPOCH + std::time::Duration::from_secs(300_000_000_000);
        assert_eq!(rfc3339_millis(after), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn empty_record() {
        let r = Record::default();
        assert_eq!(to_json(&r), serde_json::to_string(&r).unwrap());
    }
}
