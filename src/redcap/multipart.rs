//! `multipart/form-data` bodies (REDCap file imports): small fields are read and parsed
//! as PHP would; the one `file` part streams through to the upstream unbuffered.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::php_form::{register_variable, FormError, ParsedForm, PhpArray, PhpLimits, Segment};

/// Why a multipart body was refused.
#[derive(Debug, thiserror::Error)]
pub enum MultipartError {
    #[error("the multipart body is malformed: {0}")]
    Malformed(String),
    #[error("the multipart part header is ambiguous: {0}")]
    AmbiguousHeader(String),
    #[error("a multipart field is larger than {0} bytes")]
    FieldTooLarge(usize),
    #[error("the request body is larger than the limit")]
    BodyTooLarge,
    #[error("only one file part, named \"file\", is accepted")]
    UnexpectedFile,
    #[error("all fields must come before the \"file\" part")]
    FieldAfterFile,
    #[error(transparent)]
    Form(#[from] FormError),
}

impl From<multer::Error> for MultipartError {
    fn from(e: multer::Error) -> Self {
        match e {
            multer::Error::StreamSizeExceeded { .. } => MultipartError::BodyTooLarge,
            multer::Error::FieldSizeExceeded { limit, .. } => {
                MultipartError::FieldTooLarge(limit as usize)
            }
            other => MultipartError::Malformed(other.to_string()),
        }
    }
}

/// The file part's own header, re-sent upstream.
#[derive(Debug, Clone)]
pub struct FileHead {
    pub filename: String,
    pub content_type: Option<String>,
}

/// A multipart body read up to (not into) its file part.
pub struct MultipartForm {
    pub form: ParsedForm,
    /// Non-file fields in arrival order: (raw name, value).
    pub fields: Vec<(String, Bytes)>,
    pub file: Option<(FileHead, multer::Field<'static>)>,
    /// The rest of the stream, for checking that nothing follows the file part.
    pub rest: multer::Multipart<'static>,
}

impl std::fmt::Debug for MultipartForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultipartForm")
            .field("fields", &self.fields.len())
            .field("file", &self.file.as_ref().map(|(h, _)| h))
            .finish()
    }
}

/// Limits for reading a multipart body.
#[derive(Debug, Clone, Copy)]
pub struct MultipartLimits {
    pub php: PhpLimits,
    pub max_body: u64,
    pub max_field: usize,
}

fn name_is_safe(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'[' | b']'))
}

fn value_is_safe(v: &str) -> bool {
    !v.bytes()
        .any(|b| b == b'"' || b == b'\\' || b.is_ascii_control())
}

/// Parses a Content-Disposition strictly: `form-data; name="..."[; filename="..."]`,
/// each once, no escapes. PHP and other parsers disagree on anything looser.
pub fn parse_disposition(value: &str) -> Result<(String, Option<String>), MultipartError> {
    let amb = |m: &str| MultipartError::AmbiguousHeader(m.to_string());
    let mut parts = value.split(';');
    let kind = parts.next().unwrap_or("").trim();
    if !kind.eq_ignore_ascii_case("form-data") {
        return Err(amb("Content-Disposition must be form-data"));
    }
    let (mut name, mut filename) = (None, None);
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| amb("a Content-Disposition parameter has no value"))?;
        let k = k.trim();
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(|| amb("Content-Disposition values must be quoted"))?;
        if !value_is_safe(v) {
            return Err(amb(
                "a Content-Disposition value has quotes, backslashes or control characters",
            ));
        }
        let slot = if k.eq_ignore_ascii_case("name") {
            &mut name
        } else if k.eq_ignore_ascii_case("filename") {
            &mut filename
        } else {
            return Err(amb(
                "Content-Disposition has a parameter other than name and filename",
            ));
        };
        if slot.replace(v.to_string()).is_some() {
            return Err(amb("a Content-Disposition parameter appears twice"));
        }
    }
    let name = name.ok_or_else(|| amb("a part has no name"))?;
    if !name_is_safe(&name) {
        return Err(amb(
            "a part name has characters other than letters, digits, _ - [ ]",
        ));
    }
    Ok((name, filename))
}

/// Reads fields until the file part (or the end). The returned form is `$_POST` as PHP
/// builds it from the fields read.
pub async fn read_multipart<S>(
    stream: S,
    boundary: String,
    limits: MultipartLimits,
) -> Result<MultipartForm, MultipartError>
where
    S: futures_util::Stream<Item = Result<Bytes, crate::BoxError>> + Send + 'static,
{
    let constraints = multer::Constraints::new()
        .size_limit(multer::SizeLimit::new().whole_stream(limits.max_body));
    let mut mp = multer::Multipart::with_constraints(stream, boundary, constraints);
    let mut post = PhpArray::new();
    let mut segments = Vec::new();
    let mut fields = Vec::new();
    while let Some(mut field) = mp.next_field().await? {
        let disposition = field
            .headers()
            .get_all(http::header::CONTENT_DISPOSITION)
            .iter()
            .collect::<Vec<_>>();
        let [disposition] = disposition.as_slice() else {
            return Err(MultipartError::AmbiguousHeader(
                "each part needs exactly one Content-Disposition".into(),
            ));
        };
        let disposition = disposition
            .to_str()
            .map_err(|_| MultipartError::AmbiguousHeader("non-ASCII Content-Disposition".into()))?;
        let (name, filename) = parse_disposition(disposition)?;
        if let Some(filename) = filename {
            if name != "file" {
                return Err(MultipartError::UnexpectedFile);
            }
            let content_type = field.content_type().map(|m| m.to_string());
            if let Some(ct) = &content_type {
                if !value_is_safe(ct) {
                    return Err(MultipartError::AmbiguousHeader("bad Content-Type".into()));
                }
            }
            let head = FileHead {
                filename,
                content_type,
            };
            return Ok(MultipartForm {
                form: ParsedForm { post, segments },
                fields,
                file: Some((head, field)),
                rest: mp,
            });
        }
        if segments.len() >= limits.php.max_input_vars {
            return Err(FormError::TooManyVars {
                count: segments.len() + 1,
                limit: limits.php.max_input_vars,
            }
            .into());
        }
        let mut value = BytesMut::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk?;
            if value.len() + chunk.len() > limits.max_field {
                return Err(MultipartError::FieldTooLarge(limits.max_field));
            }
            value.extend_from_slice(&chunk);
        }
        let value = value.freeze();
        let (top_key, is_array) = register_variable(
            &mut post,
            name.as_bytes(),
            value.to_vec(),
            limits.php.max_input_nesting_level,
        )?;
        let i = fields.len();
        segments.push(Segment {
            start: i,
            end: i,
            top_key,
            is_array,
        });
        fields.push((name, value));
    }
    Ok(MultipartForm {
        form: ParsedForm { post, segments },
        fields,
        file: None,
        rest: mp,
    })
}

/// Writes one text part.
pub fn write_text_part(out: &mut BytesMut, boundary: &str, name: &str, value: &[u8]) {
    out.extend_from_slice(b"--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"\r\nContent-Disposition: form-data; name=\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\"\r\n\r\n");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the header of the file part (its bytes follow, then `\r\n`).
pub fn write_file_head(out: &mut BytesMut, boundary: &str, head: &FileHead) {
    out.extend_from_slice(b"--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"\r\nContent-Disposition: form-data; name=\"file\"; filename=\"");
    out.extend_from_slice(head.filename.as_bytes());
    out.extend_from_slice(b"\"\r\n");
    if let Some(ct) = &head.content_type {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(ct.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

pub fn closing(boundary: &str) -> Bytes {
    Bytes::from(format!("--{boundary}--\r\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_disposition() {
        assert_eq!(
            parse_disposition("form-data; name=\"content\"").unwrap(),
            ("content".to_string(), None)
        );
        assert_eq!(
            parse_disposition("form-data; name=\"file\"; filename=\"a b.txt\"").unwrap(),
            ("file".to_string(), Some("a b.txt".to_string()))
        );
        for bad in [
            "form-data; name=content",
            "form-data; name=\"a\"; name=\"content\"",
            "form-data; name=\"con\\\"tent\"",
            "attachment; name=\"x\"",
            "form-data; name=\"a.b\"",
            "form-data; name=\"x\"; filename*=\"utf-8''x\"",
            "form-data",
        ] {
            assert!(parse_disposition(bad).is_err(), "{bad}");
        }
    }

    async fn read(body: &'static str) -> Result<MultipartForm, MultipartError> {
        let stream = futures_util::stream::iter(vec![Ok::<_, crate::BoxError>(Bytes::from(body))]);
        let limits = MultipartLimits {
            php: PhpLimits::default(),
            max_body: 1 << 20,
            max_field: 1024,
        };
        read_multipart(stream, "XX".into(), limits).await
    }

    #[tokio::test]
    async fn reads_fields_then_stops_at_file() {
        let body = "--XX\r\nContent-Disposition: form-data; name=\"content\"\r\n\r\nfile\r\n\
                    --XX\r\nContent-Disposition: form-data; name=\"action\"\r\n\r\nimport\r\n\
                    --XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\
                    Content-Type: text/plain\r\n\r\nhello\r\n--XX--\r\n";
        let mut mp = read(body).await.unwrap();
        assert_eq!(mp.fields.len(), 2);
        assert_eq!(mp.form.occurrences("content"), (1, false));
        let (head, mut file) = mp.file.take().unwrap();
        assert_eq!(head.filename, "a.txt");
        let mut got = Vec::new();
        while let Some(c) = file.next().await {
            got.extend_from_slice(&c.unwrap());
        }
        assert_eq!(got, b"hello");
        drop(file);
        assert!(mp.rest.next_field().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn rejects_other_file_names_and_big_fields() {
        let other = "--XX\r\nContent-Disposition: form-data; name=\"data\"; filename=\"a\"\r\n\r\nx\r\n--XX--\r\n";
        assert!(matches!(
            read(other).await,
            Err(MultipartError::UnexpectedFile)
        ));
        let big: &'static str = Box::leak(
            format!(
                "--XX\r\nContent-Disposition: form-data; name=\"data\"\r\n\r\n{}\r\n--XX--\r\n",
                "x".repeat(2000)
            )
            .into_boxed_str(),
        );
        assert!(matches!(
            read(big).await,
            Err(MultipartError::FieldTooLarge(1024))
        ));
    }
}
