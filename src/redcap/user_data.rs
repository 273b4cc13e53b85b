//! The `data` of user, role and mapping imports, in json, csv or xml, read into one row
//! model so that a decision never depends on the format. Bounded and strict: XML with a
//! DTD or unknown entities, ragged CSV, or JSON that is not a list of flat objects is
//! refused, never guessed.

use quick_xml::events::Event;

/// A field's value: text, or per-form rights (`forms`, `forms_export`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    Text(String),
    Forms(Vec<(String, String)>),
}

impl FieldValue {
    pub fn text(&self) -> Option<&str> {
        match self {
            FieldValue::Text(s) => Some(s),
            FieldValue::Forms(_) => None,
        }
    }

    /// Per-form rights, from a map or REDCap's `form:value,form:value` text.
    pub fn forms(&self) -> Result<Vec<(String, String)>, String> {
        match self {
            FieldValue::Forms(f) => Ok(f.clone()),
            FieldValue::Text(t) if t.trim().is_empty() => Ok(Vec::new()),
            FieldValue::Text(t) => t
                .split(',')
                .map(|p| {
                    let (f, v) = p
                        .split_once(':')
                        .ok_or_else(|| format!("form rights {p:?} are not form:value"))?;
                    Ok((f.trim().to_string(), v.trim().to_string()))
                })
                .collect(),
        }
    }
}

/// One row: field -> value, in the order given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataRow(pub Vec<(String, FieldValue)>);

impl DataRow {
    pub fn get(&self, k: &str) -> Option<&FieldValue> {
        self.0.iter().find(|(f, _)| f == k).map(|(_, v)| v)
    }

    pub fn text(&self, k: &str) -> Option<&str> {
        self.get(k).and_then(FieldValue::text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    #[error("the data is not valid {format}: {detail}")]
    Invalid {
        format: &'static str,
        detail: String,
    },
    #[error("the data has more than {0} rows")]
    TooManyRows(usize),
    #[error("the data nests deeper than REDCap's formats allow")]
    TooDeep,
    #[error("XML with a DTD or entity declarations is not accepted")]
    Dtd,
    #[error("the field {0:?} appears twice in one row")]
    DuplicateField(String),
}

pub const MAX_ROWS: usize = 10_000;

fn invalid(format: &'static str, detail: impl ToString) -> DataError {
    DataError::Invalid {
        format,
        detail: detail.to_string(),
    }
}

fn push(row: &mut DataRow, k: String, v: FieldValue) -> Result<(), DataError> {
    if row.get(&k).is_some() {
        return Err(DataError::DuplicateField(k));
    }
    row.0.push((k, v));
    Ok(())
}

/// Reads `data` as REDCap would for the call's `format` (json, csv, else xml).
pub fn parse(format: &str, data: &[u8]) -> Result<Vec<DataRow>, DataError> {
    match format {
        "json" => parse_json(data),
        "csv" => parse_csv(data),
        _ => parse_xml(data),
    }
}

fn json_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(if *b { "1" } else { "0" }.into()),
        serde_json::Value::Null => Some(String::new()),
        _ => None,
    }
}

fn parse_json(data: &[u8]) -> Result<Vec<DataRow>, DataError> {
    // Straight into rows when the data is well formed (nearly always); anything the fast
    // reader declines is read again the general way, so errors and their wording stay
    // those of `parse_json_value`. A property test holds the two to the same rows.
    match serde_json::from_slice::<fast::Rows>(data) {
        Ok(fast::Rows(rows)) => Ok(rows),
        Err(_) => parse_json_value(data),
    }
}

/// `parse("json", ..)` without the fast reader, for the differential fuzz target.
#[doc(hidden)]
pub fn parse_json_general(data: &[u8]) -> Result<Vec<DataRow>, DataError> {
    parse_json_value(data)
}

/// The general JSON reader: a `serde_json::Value` first (objects keep their order, and a
/// repeated key keeps its first place with its last value, as PHP's `json_decode`).
fn parse_json_value(data: &[u8]) -> Result<Vec<DataRow>, DataError> {
    let v: serde_json::Value = serde_json::from_slice(data).map_err(|e| invalid("JSON", e))?;
    let items = match v {
        serde_json::Value::Array(a) => a,
        o @ serde_json::Value::Object(_) => vec![o],
        _ => return Err(invalid("JSON", "expected a list of objects")),
    };
    if items.len() > MAX_ROWS {
        return Err(DataError::TooManyRows(MAX_ROWS));
    }
    items
        .into_iter()
        .map(|item| {
            let serde_json::Value::Object(o) = item else {
                return Err(invalid("JSON", "every row must be an object"));
            };
            let mut row = DataRow::default();
            for (k, v) in o {
                let value = match &v {
                    serde_json::Value::Object(m) => FieldValue::Forms(
                        m.iter()
                            .map(|(f, x)| {
                                json_text(x)
                                    .map(|t| (f.clone(), t))
                                    .ok_or(DataError::TooDeep)
                            })
                            .collect::<Result<_, _>>()?,
                    ),
                    serde_json::Value::Array(_) => {
                        return Err(invalid("JSON", format!("field {k:?} is a list")))
                    }
                    other => FieldValue::Text(json_text(other).unwrap_or_default()),
                };
                push(&mut row, k, value)?;
            }
            Ok(row)
        })
        .collect()
}

/// Rows read straight from JSON, without a `serde_json::Value` in between: a one-row user
/// import cost ~18k instructions through `Value`. Accepts exactly what `parse_json_value`
/// turns into rows, with the same result; declines (with any error) everything else.
mod fast {
    use std::fmt;

    use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde::Deserialize;

    use super::{DataRow, FieldValue, MAX_ROWS};

    pub struct Rows(pub Vec<DataRow>);

    /// Declined: the general reader will say why.
    fn decline<E: de::Error>() -> E {
        E::custom("declined")
    }

    /// Sets `k` as `serde_json::Map` does: a repeated key keeps its first place and
    /// takes the last value.
    fn set<V>(pairs: &mut Vec<(String, V)>, k: String, v: V) {
        match pairs.iter_mut().find(|(have, _)| *have == k) {
            Some(slot) => slot.1 = v,
            None => pairs.push((k, v)),
        }
    }

    impl<'de> Deserialize<'de> for Rows {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct RowsVisitor;
            impl<'de> Visitor<'de> for RowsVisitor {
                type Value = Rows;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a list of objects")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Rows, A::Error> {
                    let mut rows = Vec::new();
                    while let Some(Row(row)) = seq.next_element()? {
                        if rows.len() == MAX_ROWS {
                            return Err(decline());
                        }
                        rows.push(row);
                    }
                    Ok(Rows(rows))
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Rows, A::Error> {
                    Ok(Rows(vec![RowVisitor.visit_map(map)?]))
                }
            }
            d.deserialize_any(RowsVisitor)
        }
    }

    struct Row(DataRow);

    struct RowVisitor;

    impl<'de> Visitor<'de> for RowVisitor {
        type Value = DataRow;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DataRow, A::Error> {
            let mut row = Vec::new();
            while let Some(k) = map.next_key::<String>()? {
                let Field(v) = map.next_value()?;
                set(&mut row, k, v);
            }
            Ok(DataRow(row))
        }
    }

    impl<'de> Deserialize<'de> for Row {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(RowVisitor).map(Row)
        }
    }

    /// A field: a scalar as text, or an object of form rights.
    struct Field(FieldValue);

    impl<'de> Deserialize<'de> for Field {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct FieldVisitor;
            impl<'de> Visitor<'de> for FieldVisitor {
                type Value = Field;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a value")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field, A::Error> {
                    let mut forms = Vec::new();
                    while let Some(k) = map.next_key::<String>()? {
                        let Scalar(v) = map.next_value()?;
                        set(&mut forms, k, v);
                    }
                    Ok(Field(FieldValue::Forms(forms)))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Field, A::Error> {
                    Err(decline())
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                    ScalarVisitor
                        .visit_str(v)
                        .map(|s| Field(FieldValue::Text(s)))
                }
                fn visit_string<E: de::Error>(self, v: String) -> Result<Field, E> {
                    Ok(Field(FieldValue::Text(v)))
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Field, E> {
                    ScalarVisitor
                        .visit_u64(v)
                        .map(|s| Field(FieldValue::Text(s)))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Field, E> {
                    ScalarVisitor
                        .visit_i64(v)
                        .map(|s| Field(FieldValue::Text(s)))
                }
                fn visit_f64<E: de::Error>(self, v: f64) -> Result<Field, E> {
                    ScalarVisitor
                        .visit_f64(v)
                        .map(|s| Field(FieldValue::Text(s)))
                }
                fn visit_bool<E: de::Error>(self, v: bool) -> Result<Field, E> {
                    ScalarVisitor
                        .visit_bool(v)
                        .map(|s| Field(FieldValue::Text(s)))
                }
                fn visit_unit<E: de::Error>(self) -> Result<Field, E> {
                    Ok(Field(FieldValue::Text(String::new())))
                }
            }
            d.deserialize_any(FieldVisitor)
        }
    }

    /// A scalar as `json_text` writes it; lists and objects are declined.
    struct Scalar(String);

    struct ScalarVisitor;

    impl<'de> Visitor<'de> for ScalarVisitor {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a scalar")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(serde_json::Number::from(v).to_string())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            Ok(serde_json::Number::from(v).to_string())
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
            // As `Value` would hold it: a number, or null (text "") if not finite.
            Ok(serde_json::Number::from_f64(v).map_or_else(String::new, |n| n.to_string()))
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
            Ok(if v { "1" } else { "0" }.to_string())
        }
        fn visit_unit<E: de::Error>(self) -> Result<String, E> {
            Ok(String::new())
        }
    }

    impl<'de> Deserialize<'de> for Scalar {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(ScalarVisitor).map(Scalar)
        }
    }
}

fn parse_csv(data: &[u8]) -> Result<Vec<DataRow>, DataError> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(data);
    let headers = r.headers().map_err(|e| invalid("CSV", e))?.clone();
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| invalid("CSV", e))?;
        if rows.len() >= MAX_ROWS {
            return Err(DataError::TooManyRows(MAX_ROWS));
        }
        let mut row = DataRow::default();
        for (h, v) in headers.iter().zip(rec.iter()) {
            push(
                &mut row,
                h.trim().to_string(),
                FieldValue::Text(v.to_string()),
            )?;
        }
        rows.push(row);
    }
    Ok(rows)
}

/// `<records><item><field>v</field>...</item></records>`; `forms` may hold
/// `<form_name>v</form_name>` children.
fn parse_xml(data: &[u8]) -> Result<Vec<DataRow>, DataError> {
    let mut reader = quick_xml::Reader::from_reader(data);
    let mut rows = Vec::new();
    let mut depth = 0usize;
    let mut row: Option<DataRow> = None;
    let mut field: Option<String> = None;
    let mut forms: Option<Vec<(String, String)>> = None;
    let mut sub: Option<String> = None;
    let mut text = String::new();
    let mut buf = Vec::new();
    let xml = |e: quick_xml::Error| invalid("XML", e);
    loop {
        let ev = reader.read_event_into(&mut buf).map_err(xml)?;
        match ev {
            Event::DocType(_) => return Err(DataError::Dtd),
            Event::Start(e) => {
                depth += 1;
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                match depth {
                    1 => {}
                    2 => {
                        if rows.len() >= MAX_ROWS {
                            return Err(DataError::TooManyRows(MAX_ROWS));
                        }
                        row = Some(DataRow::default());
                    }
                    3 => {
                        field = Some(name);
                        text.clear();
                    }
                    4 => {
                        forms.get_or_insert_with(Vec::new);
                        sub = Some(name);
                        text.clear();
                    }
                    _ => return Err(DataError::TooDeep),
                }
            }
            Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                match (depth, row.as_mut()) {
                    (2, Some(r)) => push(r, name, FieldValue::Text(String::new()))?,
                    (3, _) => forms
                        .get_or_insert_with(Vec::new)
                        .push((name, String::new())),
                    (1, None) => rows.push(DataRow::default()),
                    (0, _) => {}
                    _ => return Err(DataError::TooDeep),
                }
            }
            Event::Text(t) => text.push_str(&t.decode().map_err(|e| invalid("XML", e))?),
            Event::CData(c) => text.push_str(&String::from_utf8_lossy(&c)),
            Event::GeneralRef(r) => {
                let name = String::from_utf8_lossy(&r).into_owned();
                let ch = match name.as_str() {
                    "lt" => '<',
                    "gt" => '>',
                    "amp" => '&',
                    "quot" => '"',
                    "apos" => '\'',
                    n if n.starts_with('#') => {
                        let code = match n.strip_prefix("#x") {
                            Some(hex) => u32::from_str_radix(hex, 16).ok(),
                            None => n[1..].parse().ok(),
                        };
                        code.and_then(char::from_u32).ok_or_else(|| {
                            invalid("XML", format!("bad character reference &{n};"))
                        })?
                    }
                    // No DTD is accepted, so no other entity can be defined.
                    _ => return Err(invalid("XML", format!("unknown entity &{name};"))),
                };
                text.push(ch);
            }
            Event::End(_) => {
                match depth {
                    4 => {
                        if let (Some(f), Some(s)) = (forms.as_mut(), sub.take()) {
                            f.push((s, std::mem::take(&mut text)));
                        }
                    }
                    3 => {
                        if let (Some(r), Some(f)) = (row.as_mut(), field.take()) {
                            let v = match forms.take() {
                                Some(pairs) => FieldValue::Forms(pairs),
                                None => FieldValue::Text(std::mem::take(&mut text)),
                            };
                            push(r, f, v)?;
                        }
                    }
                    2 => rows.extend(row.take()),
                    _ => {}
                }
                depth = depth.saturating_sub(1);
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if depth != 0 {
        return Err(invalid("XML", "unclosed elements"));
    }
    Ok(rows)
}

/// Writes rows back in a format (tests use it to show decisions are format-independent).
pub fn write(format: &str, rows: &[DataRow]) -> String {
    let forms_text = |f: &[(String, String)]| {
        f.iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    match format {
        "json" => {
            let arr: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    let mut m = serde_json::Map::new();
                    for (k, v) in &r.0 {
                        let v = match v {
                            FieldValue::Text(t) => serde_json::Value::String(t.clone()),
                            FieldValue::Forms(f) => serde_json::Value::Object(
                                f.iter()
                                    .map(|(a, b)| (a.clone(), serde_json::Value::String(b.clone())))
                                    .collect(),
                            ),
                        };
                        m.insert(k.clone(), v);
                    }
                    serde_json::Value::Object(m)
                })
                .collect();
            serde_json::Value::Array(arr).to_string()
        }
        "csv" => {
            let mut w = csv::Writer::from_writer(Vec::new());
            if let Some(first) = rows.first() {
                let _ = w.write_record(first.0.iter().map(|(k, _)| k.as_str()));
                for r in rows {
                    let vals: Vec<String> = first
                        .0
                        .iter()
                        .map(|(k, _)| match r.get(k) {
                            Some(FieldValue::Text(t)) => t.clone(),
                            Some(FieldValue::Forms(f)) => forms_text(f),
                            None => String::new(),
                        })
                        .collect();
                    let _ = w.write_record(vals);
                }
            }
            String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
        }
        _ => {
            let esc = crate::redcap::error_body::xml_escape;
            let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\n<records>");
            for r in rows {
                s.push_str("<item>");
                for (k, v) in &r.0 {
                    match v {
                        FieldValue::Text(t) => s.push_str(&format!("<{k}>{}</{k}>", esc(t))),
                        FieldValue::Forms(f) => {
                            s.push_str(&format!("<{k}>{}</{k}>", esc(&forms_text(f))))
                        }
                    }
                }
                s.push_str("</item>");
            }
            s.push_str("</records>");
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// JSON text (not a `Value`, so keys can repeat), shaped like user data and not.
    fn json_text_strategy() -> impl Strategy<Value = String> {
        let scalar = prop_oneof![
            "[a-z0-9 \"\\\\é:,]{0,6}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| serde_json::to_string(&f).unwrap()),
            prop::sample::select(vec![
                "true",
                "false",
                "null",
                "-0",
                "1.0",
                "-0.0",
                "1e400",
                "1E2",
                "0.1e-3",
                "123456789012345678901234",
            ])
            .prop_map(String::from),
        ];
        fn object(value: BoxedStrategy<String>) -> BoxedStrategy<String> {
            let key = prop::sample::select(vec!["username", "design", "forms", "a", "a\\u0000"])
                .prop_map(|k| format!("\"{k}\""));
            prop::collection::vec((key, value), 0..5)
                .prop_map(|kv| {
                    let body: Vec<String> =
                        kv.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                    format!("{{{}}}", body.join(","))
                })
                .boxed()
        }
        let field = scalar.clone().prop_recursive(2, 12, 4, |inner| {
            prop_oneof![
                object(inner.clone().boxed()),
                prop::collection::vec(inner, 0..3).prop_map(|v| format!("[{}]", v.join(","))),
            ]
        });
        let row = object(field.boxed());
        // Rows a client would send: scalars, and objects of scalars (form rights).
        let forms = object(scalar.clone().boxed());
        let good_row = object(prop_oneof![3 => scalar.clone(), 1 => forms].boxed());
        prop_oneof![
            2 => prop::collection::vec(good_row, 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            1 => prop::collection::vec(row.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            1 => row,
            1 => scalar,
            1 => Just("[1]".to_string()),
            1 => Just("[{}] x".to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        /// The fast JSON reader gives the general reader's answer for every input: the
        /// same rows, or (by falling back) the same error.
        #[test]
        fn fast_json_rows_are_the_general_readers(text in json_text_strategy()) {
            prop_assert_eq!(parse_json(text.as_bytes()), parse_json_value(text.as_bytes()));
            if let Ok(fast::Rows(rows)) = serde_json::from_slice::<fast::Rows>(text.as_bytes()) {
                prop_assert_eq!(Ok(rows), parse_json_value(text.as_bytes()));
            }
        }
    }

    #[test]
    fn fast_json_keeps_the_first_place_and_the_last_value_of_a_repeated_key() {
        let text = br#"[{"a":"1","b":"2","a":"3","forms":{"x":"1","y":2,"x":true}}]"#;
        let fast::Rows(rows) = serde_json::from_slice(text).unwrap();
        assert_eq!(
            rows,
            vec![DataRow(vec![
                ("a".into(), FieldValue::Text("3".into())),
                ("b".into(), FieldValue::Text("2".into())),
                (
                    "forms".into(),
                    FieldValue::Forms(vec![("x".into(), "1".into()), ("y".into(), "2".into())])
                ),
            ])]
        );
        assert_eq!(Ok(rows), parse_json_value(text));
    }

    fn t(s: &str) -> FieldValue {
        FieldValue::Text(s.into())
    }

    #[test]
    fn same_rows_from_every_format() {
        let json = r#"[{"username":"alice","design":0,"forms":{"demo":"1","consent":"2"}}]"#;
        let csv = "username,design,forms\nalice,0,\"demo:1,consent:2\"\n";
        let xml = "<?xml version=\"1.0\"?><records><item><username>alice</username><design>0</design><forms><demo>1</demo><consent>2</consent></forms></item></records>";
        for (f, d) in [("json", json), ("csv", csv), ("xml", xml)] {
            let rows = parse(f, d.as_bytes()).unwrap();
            assert_eq!(rows.len(), 1, "{f}");
            assert_eq!(rows[0].get("username"), Some(&t("alice")), "{f}");
            assert_eq!(rows[0].get("design"), Some(&t("0")), "{f}");
            assert_eq!(
                rows[0].get("forms").unwrap().forms().unwrap(),
                vec![
                    ("demo".to_string(), "1".to_string()),
                    ("consent".to_string(), "2".to_string())
                ],
                "{f}"
            );
        }
    }

    #[test]
    fn xml_dtds_and_entities_are_refused() {
        let bomb = "<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY a \"aaaa\">]><records><item><username>&a;</username></item></records>";
        assert_eq!(parse("xml", bomb.as_bytes()), Err(DataError::Dtd));
        let ext = "<records><item><username>&xxe;</username></item></records>";
        assert!(matches!(
            parse("xml", ext.as_bytes()),
            Err(DataError::Invalid { .. })
        ));
        let ok = "<records><item><username>a&amp;b&#65;</username></item></records>";
        assert_eq!(
            parse("xml", ok.as_bytes()).unwrap()[0].text("username"),
            Some("a&bA")
        );
        let deep = "<records><item><forms><a><b>1</b></a></forms></item></records>";
        assert_eq!(parse("xml", deep.as_bytes()), Err(DataError::TooDeep));
    }

    #[test]
    fn strictness() {
        assert!(parse("json", br#"[{"username":["a"]}]"#).is_err());
        assert!(parse("json", br#"["alice"]"#).is_err());
        assert!(
            parse("json", br#"[{"a":1,"a":2}]"#).is_err()
                || parse("json", br#"[{"a":1,"a":2}]"#).unwrap()[0].0.len() == 1
        );
        assert!(
            parse("csv", b"username,design\nalice\n").is_err(),
            "ragged CSV"
        );
        assert!(
            parse("csv", b"username,username\na,b\n").is_err(),
            "duplicate columns"
        );
        assert!(parse(
            "xml",
            b"<records><item><username>a</username><username>b</username></item></records>"
        )
        .is_err());
        assert!(parse("xml", b"<records><item><username>a</item></records>").is_err());
    }
}
