//! Vault: the project's REDCap token replaces whatever the client sent; fields that would
//! widen rights (`mobile_app`, `mobileApp`, `uuid`, `project_init`) and headers REDCap
//! trusts blindly (Client-IP, X-Forwarded-For, ...) are removed; everything else in the
//! body is forwarded byte for byte.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};

use super::parse::{FormBody, ParsedBody};
use super::route::{ProjectName, PROJECT_HEADER};
use super::step::{Step, StepLayer};
use super::{Req, Result};
use crate::body::{full, Body, BoxError};
use crate::error::GatewayError;
use crate::redcap::multipart::{
    closing, write_file_head, write_text_part, MultipartError, MultipartForm,
};
use crate::redcap::php_form::{ParsedForm, PhpKey};
use crate::secret::Secret;
use crate::vault::Vault;

/// Body fields never forwarded as the client sent them.
pub const STRIPPED_FIELDS: &[&str] = &["token", "mobile_app", "mobileApp", "uuid", "project_init"];

/// Client headers never forwarded: credentials, addresses REDCap would trust, the
/// project selector, and the length of a body that is rewritten.
fn is_stripped_header(h: &HeaderName) -> bool {
    matches!(
        h.as_str(),
        "authorization"
            | "cookie"
            | "client-ip"
            | "x-forwarded-for"
            | "x-forwarded-host"
            | "x-forwarded-proto"
            | "x-real-ip"
            | "forwarded"
            | "true-client-ip"
            | "cf-connecting-ip"
            | PROJECT_HEADER
            | "content-length"
    )
}

/// Parameters the gateway sets in the forwarded body in place of the client's, filled in
/// by the export-rights and DAG-scope steps (request extension).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// A restricted export's field set (names of `[a-z0-9_]` and commas, so nothing to
    /// encode): replaces the client's `fields` and `forms`.
    pub fields: Option<Arc<str>>,
    /// `exportDataAccessGroups=true` in place of the client's value (DAG scoping reads
    /// each row's DAG).
    pub dags: bool,
}

impl Overrides {
    pub const NONE: Overrides = Overrides {
        fields: None,
        dags: false,
    };

    /// The client's parameter `name` gives way to the gateway's.
    fn replaces(&self, name: &[u8]) -> bool {
        (self.fields.is_some() && (name == b"fields" || name == b"forms"))
            || (self.dags && name == b"exportDataAccessGroups")
    }

    /// The gateway's parameters, as `name=value` pairs.
    fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let fields = self.fields.as_deref().map(|f| ("fields", f));
        let dags = self.dags.then_some(("exportDataAccessGroups", "true"));
        fields.into_iter().chain(dags)
    }
}

fn stripped(key: &Option<PhpKey>, ov: &Overrides) -> bool {
    match key {
        Some(PhpKey::Str(s)) => {
            STRIPPED_FIELDS.iter().any(|f| f.as_bytes() == &s[..]) || ov.replaces(s)
        }
        _ => false,
    }
}

#[derive(Clone)]
pub struct Inject {
    vault: Arc<Vault>,
    max_input_vars: usize,
}

pub type VaultLayer = StepLayer<Inject>;

impl Inject {
    pub fn layer(vault: Arc<Vault>, max_input_vars: usize) -> VaultLayer {
        StepLayer(Inject {
            vault,
            max_input_vars,
        })
    }
}

/// The urlencoded body for REDCap: the client's segments minus stripped ones, then ours
/// (the overrides, then the token).
pub fn rewrite_urlencoded(
    raw: &[u8],
    form: &ParsedForm,
    token: &Secret,
    max_vars: usize,
    ov: &Overrides,
) -> Result<Bytes> {
    let kept = || form.segments.iter().filter(|s| !stripped(&s.top_key, ov));
    if kept().count() + 1 + ov.pairs().count() > max_vars {
        return Err(GatewayError::BadRequest(format!(
            "the body has too many parameters to add the project token (PHP max_input_vars is {max_vars})"
        )));
    }
    let secret = token.expose().as_bytes();
    let mut out = Vec::with_capacity(raw.len() + secret.len() + 8);
    for s in kept() {
        out.extend_from_slice(&raw[s.start..s.end]);
        out.push(b'&');
    }
    for (name, value) in ov.pairs() {
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
        out.push(b'&');
    }
    out.extend_from_slice(b"token=");
    out.extend_from_slice(secret);
    Ok(wiped(out))
}

/// Bytes that hold the project's token: their memory is wiped when hyper lets go of them
/// (written, or the call dropped), not left for the allocator to hand out again.
pub(crate) fn wiped(b: Vec<u8>) -> Bytes {
    Bytes::from_owner(zeroize::Zeroizing::new(b))
}

/// A multipart body for REDCap: kept fields and our token, then the file streaming.
fn rewrite_multipart(
    mp: MultipartForm,
    token: &Secret,
    max_vars: usize,
    ov: &Overrides,
) -> Result<(Body, String, Option<u64>)> {
    let boundary = format!("redcap-gateway-{}", uuid::Uuid::new_v4().simple());
    let mut head = BytesMut::new();
    let mut kept = 0usize;
    for ((name, value), seg) in mp.fields.iter().zip(&mp.form.segments) {
        if stripped(&seg.top_key, ov) {
            continue;
        }
        kept += 1;
        write_text_part(&mut head, &boundary, name, value);
    }
    for (name, value) in ov.pairs() {
        kept += 1;
        write_text_part(&mut head, &boundary, name, value.as_bytes());
    }
    if kept + 1 > max_vars {
        return Err(GatewayError::BadRequest(format!(
            "the body has too many parameters to add the project token (PHP max_input_vars is {max_vars})"
        )));
    }
    // Room for the token part, the file part's head and the closing line (an upper
    // bound: 256 covers the fixed text), so the buffer never moves once the token is in
    // it, which would leave an unwiped copy behind.
    let file_head = mp.file.as_ref().map_or(0, |(h, _)| {
        h.filename.len() + h.content_type.as_ref().map_or(0, String::len)
    });
    head.reserve(token.expose().len() + 3 * boundary.len() + file_head + 256);
    write_text_part(&mut head, &boundary, "token", token.expose().as_bytes());
    let Some((file_head, file)) = mp.file else {
        head.extend_from_slice(&closing(&boundary));
        let len = head.len() as u64;
        return Ok((full(wiped(head.into())), boundary, Some(len)));
    };
    write_file_head(&mut head, &boundary, &file_head);
    let tail_boundary = boundary.clone();
    let mut rest = mp.rest;
    let file_stream = file.map(|r| r.map_err(|e| Box::new(MultipartError::from(e)) as BoxError));
    // After the file: the part's CRLF, then only the end of the body may follow.
    let after = futures_util::stream::once(async move {
        match rest.next_field().await {
            Ok(None) => {
                let mut tail = BytesMut::from(&b"\r\n"[..]);
                tail.extend_from_slice(&closing(&tail_boundary));
                Ok(tail.freeze())
            }
            Ok(Some(_)) => Err(Box::new(MultipartError::FieldAfterFile) as BoxError),
            Err(e) => Err(Box::new(MultipartError::from(e)) as BoxError),
        }
    });
    let stream = futures_util::stream::once(async move { Ok::<_, BoxError>(wiped(head.into())) })
        .chain(file_stream)
        .chain(after)
        .map(|r| r.map(http_body::Frame::data));
    let body = Body::new(http_body_util::StreamBody::new(stream));
    Ok((body, boundary, None))
}

impl Step for Inject {
    async fn apply(&self, mut req: Req) -> Result<Req> {
        let project = req
            .extensions()
            .get::<ProjectName>()
            .cloned()
            .ok_or(GatewayError::TokenUnavailable)?;
        let token = self
            .vault
            .token(&project.0)
            .ok_or(GatewayError::TokenUnavailable)?;
        let parsed = req
            .extensions()
            .get::<ParsedBody>()
            .and_then(ParsedBody::take)
            .ok_or_else(|| GatewayError::BadRequest("the request body was not parsed".into()))?;
        let ov = req
            .extensions_mut()
            .remove::<Overrides>()
            .unwrap_or_default();
        let (body, content_type, len) = match parsed {
            FormBody::Urlencoded { raw, form } => {
                let b = rewrite_urlencoded(&raw, &form, &token, self.max_input_vars, &ov)?;
                let len = b.len() as u64;
                (
                    full(b),
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                    Some(len),
                )
            }
            FormBody::Multipart(mp) => {
                let (body, boundary, len) =
                    rewrite_multipart(*mp, &token, self.max_input_vars, &ov)?;
                let content_type =
                    HeaderValue::from_str(&format!("multipart/form-data; boundary={boundary}"))
                        .map_err(|_| GatewayError::BadRequest("bad content type".into()))?;
                (body, content_type, len)
            }
        };
        // Our own X-Forwarded-For, from the real peer.
        let forwarded_for = req
            .extensions()
            .get::<crate::context::PeerAddr>()
            .map(|p| p.1.clone());
        let headers = req.headers_mut();
        super::forward::remove_headers(headers, is_stripped_header);
        headers.insert(CONTENT_TYPE, content_type);
        if let Some(len) = len {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
        if let Some(v) = forwarded_for {
            headers.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
        *req.body_mut() = body;
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redcap::php_form::{parse_urlencoded, PhpLimits};

    const T: &str = "0123456789ABCDEF0123456789ABCDEF";

    fn rewrite(body: &str, max: usize) -> Result<String> {
        let form = parse_urlencoded(body.as_bytes(), PhpLimits::default()).unwrap();
        rewrite_urlencoded(
            body.as_bytes(),
            &form,
            &Secret::new(T.into()),
            max,
            &Overrides::NONE,
        )
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn token_replaced_and_rights_fields_stripped_in_every_php_spelling() {
        let got = rewrite(
            "token=PLACEHOLDER&content=record&mobile_app=1&mobile.app=1&mobileApp=1&%20uuid=x&project_init=1&token%00junk=y&token[]=z&tok%00en=kept&format=json",
            1000,
        )
        .unwrap();
        assert_eq!(
            got,
            format!("content=record&tok%00en=kept&format=json&token={T}")
        );
    }

    #[test]
    fn rest_of_body_is_byte_identical() {
        let body =
            "content=record&format=json&records%5B0%5D=1&fields[]=a+b&data=%7B%22x%22%3A1%7D&&";
        let got = rewrite(body, 1000).unwrap();
        assert_eq!(
            got,
            format!("{}&token={T}", body.trim_end_matches('&').to_string() + "&")
        );
    }

    #[test]
    fn adding_the_token_must_not_push_past_max_input_vars() {
        assert!(rewrite("a=1&b=2", 3).is_ok());
        assert!(rewrite("a=1&b=2&c=3", 3).is_err());
        assert!(rewrite("a=1&b=2&token=x", 3).is_ok());
    }
}
