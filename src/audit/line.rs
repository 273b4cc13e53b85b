//! An audit record as one JSON line, written by hand: the derived serde_json serializer
//! escapes byte by byte and cost ~7k instructions per record, about 4% of a request.
//! The output is byte-for-byte what `serde_json::to_string(&record)` writes (a property
//! test below holds it to that), so lines and hash chains are unchanged.

use super::Record;

/// Room for a typical record (most lines are 400-700 bytes).
const CAPACITY: usize = 1024;

pub fn to_json(r: &Record<'_>) -> String {
    let mut o = Out(String::with_capacity(CAPACITY));
    o.0.push('{');
    o.str_field("time", &r.time);
    o.str_field("phase", r.phase);
    o.str_field("request_id", r.request_id);
    o.opt_str("user", r.user);
    o.list("groups", r.groups);
    o.opt_str("issuer", r.issuer);
    o.opt_str("credential", r.credential);
    o.opt_str("project", r.project);
    o.opt_str("content", r.content);
    o.opt_str("action", r.action);
    o.opt_str("format", r.format);
    o.opt_str("return_format", r.return_format);
    o.str_field("decision", r.decision);
    o.opt_str("rule", r.rule);
    o.list("reasons", r.reasons);
    o.list("users", r.users);
    o.list("changes", r.changes);
    o.opt_int("status", r.status.map(u64::from));
    o.opt_int("upstream_status", r.upstream_status.map(u64::from));
    o.opt_str("error", r.error);
    o.opt_int("bytes_in", r.bytes_in);
    o.opt_int("bytes_out", r.bytes_out);
    if let Some(ms) = r.duration_ms {
        o.key("duration_ms");
        // Non-finite floats are `null` in serde_json; zmij (its float writer) the rest.
        if ms.is_finite() {
            o.0.push_str(zmij::Buffer::new().format_finite(ms));
        } else {
            o.0.push_str("null");
        }
    }
    o.opt_str("client", r.client);
    o.key("complete");
    o.0.push_str(if r.complete { "true" } else { "false" });
    o.0.push('}');
    o.0
}

struct Out(String);

impl Out {
    fn key(&mut self, name: &str) {
        if !self.0.ends_with('{') {
            self.0.push(',');
        }
        self.0.push('"');
        self.0.push_str(name);
        self.0.push_str("\":");
    }

    fn str_field(&mut self, name: &str, v: &str) {
        self.key(name);
        self.string(v);
    }

    fn opt_str(&mut self, name: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.str_field(name, v);
        }
    }

    fn opt_int(&mut self, name: &str, v: Option<u64>) {
        if let Some(v) = v {
            self.key(name);
            self.0.push_str(itoa::Buffer::new().format(v));
        }
    }

    fn list(&mut self, name: &str, items: &[String]) {
        if items.is_empty() {
            return;
        }
        self.key(name);
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
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if b >= 0x20 && b != b'"' && b != b'\\' {
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
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    self.0.push_str("\\u00");
                    self.0.push(char::from(HEX[usize::from(b >> 4)]));
                    self.0.push(char::from(HEX[usize::from(b & 15)]));
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

    #[test]
    fn empty_record() {
        let r = Record::default();
        assert_eq!(to_json(&r), serde_json::to_string(&r).unwrap());
    }
}
