//! REDCap's error body shapes, chosen by `returnFormat` (REDCAP.md, "Errors").

use bytes::Bytes;

/// The format REDCap answers errors in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReturnFormat {
    #[default]
    Json,
    Csv,
    Xml,
}

impl ReturnFormat {
    /// REDCap's reading: json, csv or xml; anything else falls back to xml.
    pub fn from_param(v: &[u8]) -> ReturnFormat {
        match v {
            b"json" => ReturnFormat::Json,
            b"csv" => ReturnFormat::Csv,
            _ => ReturnFormat::Xml,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReturnFormat::Json => "json",
            ReturnFormat::Csv => "csv",
            ReturnFormat::Xml => "xml",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ReturnFormat::Json => "application/json; charset=utf-8",
            ReturnFormat::Csv => "text/csv; charset=utf-8",
            ReturnFormat::Xml => "text/xml; charset=utf-8",
        }
    }

    /// The error body exactly as REDCap writes it for this format.
    pub fn error_body(self, message: &str) -> Bytes {
        match self {
            ReturnFormat::Json => {
                let body = serde_json::json!({ "error": message });
                Bytes::from(body.to_string())
            }
            ReturnFormat::Csv => Bytes::from(format!("ERROR: {message}")),
            ReturnFormat::Xml => Bytes::from(format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\n<hash>\n\t<error>{}</error>\n</hash>",
                xml_escape(message)
            )),
        }
    }
}

pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_redcap() {
        assert_eq!(
            ReturnFormat::Json.error_body("no \"x\""),
            r#"{"error":"no \"x\""}"#
        );
        assert_eq!(ReturnFormat::Csv.error_body("bad"), "ERROR: bad");
        let xml = ReturnFormat::Xml.error_body("a<b");
        let xml = std::str::from_utf8(&xml).unwrap();
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\" ?>"));
        assert!(xml.contains("<error>a&lt;b</error>"));
    }

    #[test]
    fn unknown_format_is_xml() {
        assert_eq!(ReturnFormat::from_param(b"JSON"), ReturnFormat::Xml);
        assert_eq!(ReturnFormat::from_param(b""), ReturnFormat::Xml);
    }
}
