//! Rows in and out of the fake REDCap: json, csv and xml, as REDCap reads and writes them.

use quick_xml::events::Event;
use serde::ser::{Serialize, SerializeMap, Serializer};

/// One record/user/mapping: ordered field -> value, as REDCap exports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row(pub Vec<(String, String)>);

impl Row {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, k: &str, v: &str) {
        match self.0.iter_mut().find(|(f, _)| f == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => self.0.push((k.to_string(), v.to_string())),
        }
    }

    pub fn of(pairs: &[(&str, &str)]) -> Row {
        Row(pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Parses import `data` in the given format into rows.
pub fn parse_rows(format: &str, data: &[u8]) -> Result<Vec<Row>, String> {
    match format {
        "json" => {
            let v: serde_json::Value = serde_json::from_slice(data)
                .map_err(|e| format!("The data is not valid JSON: {e}"))?;
            let items = match v {
                serde_json::Value::Array(a) => a,
                o @ serde_json::Value::Object(_) => vec![o],
                _ => return Err("The data must be a JSON list of objects".into()),
            };
            items
                .into_iter()
                .map(|item| match item {
                    serde_json::Value::Object(o) => Ok(Row(o
                        .into_iter()
                        .map(|(k, v)| {
                            let v = match v {
                                serde_json::Value::String(s) => s,
                                serde_json::Value::Null => String::new(),
                                other => other.to_string(),
                            };
                            (k, v)
                        })
                        .collect())),
                    _ => Err("The data must be a JSON list of objects".to_string()),
                })
                .collect()
        }
        "csv" => {
            let mut r = csv::ReaderBuilder::new()
                .has_headers(true)
                .from_reader(data);
            let headers = r.headers().map_err(|e| e.to_string())?.clone();
            r.records()
                .map(|rec| {
                    let rec = rec.map_err(|e| e.to_string())?;
                    Ok(Row(headers
                        .iter()
                        .zip(rec.iter())
                        .map(|(h, v)| (h.to_string(), v.to_string()))
                        .collect()))
                })
                .collect()
        }
        _ => parse_xml_rows(data),
    }
}

/// `<records><item><field>value</field>...</item>...</records>`
fn parse_xml_rows(data: &[u8]) -> Result<Vec<Row>, String> {
    let mut reader = quick_xml::Reader::from_reader(data);
    let mut rows = Vec::new();
    let mut depth = 0usize;
    let mut cur: Option<Row> = None;
    let mut field: Option<String> = None;
    let mut text = String::new();
    let mut buf = Vec::new();
    loop {
        match reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("The data is not valid XML: {e}"))?
        {
            Event::Start(e) => {
                depth += 1;
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                match depth {
                    2 => cur = Some(Row::default()),
                    3 => {
                        field = Some(name);
                        text.clear();
                    }
                    _ => {}
                }
            }
            Event::Empty(e) if depth == 2 => {
                if let Some(row) = cur.as_mut() {
                    row.set(&String::from_utf8_lossy(e.name().as_ref()), "");
                }
            }
            Event::Text(t) => {
                text.push_str(&t.decode().map_err(|e| e.to_string())?);
            }
            Event::GeneralRef(r) => {
                let name = String::from_utf8_lossy(&r).into_owned();
                text.push_str(match name.as_str() {
                    "lt" => "<",
                    "gt" => ">",
                    "amp" => "&",
                    "quot" => "\"",
                    "apos" => "'",
                    _ => "",
                });
            }
            Event::CData(c) => text.push_str(&String::from_utf8_lossy(&c)),
            Event::End(_) => {
                if depth == 3 {
                    if let (Some(row), Some(f)) = (cur.as_mut(), field.take()) {
                        row.set(&f, &text);
                    }
                } else if depth == 2 {
                    if let Some(row) = cur.take() {
                        rows.push(row);
                    }
                }
                depth = depth.saturating_sub(1);
            }
            Event::DocType(_) => return Err("DTDs are not accepted".into()),
            Event::Eof if depth > 0 => {
                return Err("The data is not valid XML: an element is not closed".into())
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(rows)
}

/// CSV with REDCap's `csvDelimiter` (the first row's field order for the header).
pub fn write_csv(rows: &[Row], delimiter: u8) -> (String, &'static str) {
    let mut w = csv::WriterBuilder::new()
        .delimiter(delimiter)
        .from_writer(Vec::new());
    if let Some(first) = rows.first() {
        let _ = w.write_record(first.0.iter().map(|(k, _)| k));
        for r in rows {
            let _ = w.write_record(first.0.iter().map(|(k, _)| r.get(k).unwrap_or("")));
        }
    }
    let out = w.into_inner().unwrap_or_default();
    (
        String::from_utf8_lossy(&out).into_owned(),
        "text/csv; charset=utf-8",
    )
}

/// Writes rows in a format; csv uses the first row's field order for the header.
pub fn write_rows(format: &str, rows: &[Row]) -> (String, &'static str) {
    match format {
        "json" => (
            serde_json::to_string(rows).unwrap_or_else(|_| "[]".into()),
            "application/json; charset=utf-8",
        ),
        "csv" => write_csv(rows, b','),
        _ => {
            let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\n<records>\n");
            for r in rows {
                s.push_str("<item>");
                for (k, v) in &r.0 {
                    s.push_str(&format!(
                        "<{k}><![CDATA[{}]]></{k}>",
                        v.replace("]]>", "]]]]><![CDATA[>")
                    ));
                }
                s.push_str("</item>\n");
            }
            s.push_str("</records>");
            (s, "text/xml; charset=utf-8")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_rows_in_every_format() {
        let rows = vec![
            Row::of(&[("username", "alice"), ("design", "0")]),
            Row::of(&[("username", "bob"), ("design", "1")]),
        ];
        for f in ["json", "csv", "xml"] {
            let (text, _) = write_rows(f, &rows);
            assert_eq!(parse_rows(f, text.as_bytes()).unwrap(), rows, "{f}");
        }
    }
}
