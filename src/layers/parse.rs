//! Parse: the form body (urlencoded, or multipart with a streamed file part) becomes a
//! `RedcapCall`, read exactly as PHP (and so REDCap) would read it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http_body_util::BodyExt;

use super::step::{Step, StepLayer};
use super::{Req, Result};
use crate::body::{collect_limited, CollectError};
use crate::context::{CallSummary, RequestContext};
use crate::error::GatewayError;
use crate::redcap::call::sniff_return_format;
use crate::redcap::multipart::{read_multipart, MultipartForm, MultipartLimits};
use crate::redcap::php_form::{parse_urlencoded_shared, ParsedForm, PhpLimits};
use crate::redcap::RedcapCall;

/// The body as read: what the vault step re-serializes for REDCap.
pub enum FormBody {
    Urlencoded { raw: Bytes, form: ParsedForm },
    Multipart(Box<MultipartForm>),
}

/// The parsed request, travelling in extensions (taken once by the vault step).
#[derive(Clone)]
pub struct ParsedBody(Arc<Mutex<Option<FormBody>>>);

impl ParsedBody {
    pub fn take(&self) -> Option<FormBody> {
        self.0.lock().ok()?.take()
    }

    /// Looks at the body without taking it.
    pub fn with<T>(&self, f: impl FnOnce(&FormBody) -> T) -> Option<T> {
        self.0.lock().ok()?.as_ref().map(f)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    pub php: PhpLimits,
    pub max_urlencoded: u64,
    pub max_multipart: u64,
    pub max_multipart_field: usize,
    pub body_timeout: Duration,
}

#[derive(Clone)]
pub struct Parse {
    limits: ParseLimits,
}

pub type ParseLayer = StepLayer<Parse>;

impl Parse {
    pub fn layer(limits: ParseLimits) -> ParseLayer {
        StepLayer(Parse { limits })
    }
}

enum Kind {
    Urlencoded,
    Multipart(String),
}

fn kind(req: &Req) -> Result<Kind> {
    let ct = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or(GatewayError::UnsupportedMediaType)?;
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Ok(Kind::Urlencoded)
    } else if mime.eq_ignore_ascii_case("multipart/form-data") {
        multer::parse_boundary(ct)
            .map(Kind::Multipart)
            .map_err(|_| {
                GatewayError::BadRequest("the multipart Content-Type has no boundary".into())
            })
    } else {
        Err(GatewayError::UnsupportedMediaType)
    }
}

fn content_length(req: &Req) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

impl Step for Parse {
    async fn apply(&self, mut req: Req) -> Result<Req> {
        let l = self.limits;
        let ctx = req.extensions().get::<Arc<RequestContext>>().cloned();
        let kind = kind(&req)?;
        let max = match kind {
            Kind::Urlencoded => l.max_urlencoded,
            Kind::Multipart(_) => l.max_multipart,
        };
        let declared = content_length(&req);
        if declared.is_some_and(|n| n > max) {
            return Err(GatewayError::PayloadTooLarge(max));
        }
        if let (Some(ctx), Some(n)) = (&ctx, declared) {
            let _ = ctx.bytes_in.set(n);
        }
        let body = std::mem::take(req.body_mut());
        let parsed = match kind {
            Kind::Urlencoded => {
                // A small body usually came with the headers: read it without arming
                // a timer (a timer wheel entry costs ~1k instructions); only a body still
                // on its way gets the timeout.
                let mut collect = std::pin::pin!(collect_limited(body, max as usize));
                let collected = match futures_util::FutureExt::now_or_never(&mut collect) {
                    Some(done) => done,
                    None => tokio::time::timeout(l.body_timeout, collect)
                        .await
                        .map_err(|_| GatewayError::BodyTimeout)?,
                };
                let raw = collected.map_err(|e| match e {
                    CollectError::TooLarge => GatewayError::PayloadTooLarge(max),
                    CollectError::Read(_) => {
                        GatewayError::BadRequest("the request body could not be read".into())
                    }
                })?;
                if let Some(ctx) = &ctx {
                    let _ = ctx.bytes_in.set(raw.len() as u64);
                }
                let form = parse_urlencoded_shared(&raw, l.php)?;
                FormBody::Urlencoded { raw, form }
            }
            Kind::Multipart(boundary) => {
                let limits = MultipartLimits {
                    php: l.php,
                    max_body: max,
                    max_field: l.max_multipart_field,
                };
                let stream = body.into_data_stream();
                let mp =
                    tokio::time::timeout(l.body_timeout, read_multipart(stream, boundary, limits))
                        .await
                        .map_err(|_| GatewayError::BodyTimeout)??;
                FormBody::Multipart(Box::new(mp))
            }
        };
        let form = match &parsed {
            FormBody::Urlencoded { form, .. } => form,
            FormBody::Multipart(mp) => &mp.form,
        };
        let call = RedcapCall::from_form(form).inspect_err(|_| {
            // The call is refused: answer in the format the body asked for, read leniently.
            if let Some(ctx) = &ctx {
                ctx.set_error_format(sniff_return_format(form));
            }
        })?;
        if let Some(ctx) = &ctx {
            ctx.set_error_format(call.return_format);
            let _ = ctx.call.set(CallSummary {
                content: call.content,
                action: call.operation.as_str(),
                format: call.format.as_str(),
                return_format: call.return_format.as_str(),
                users: call.users.clone(),
            });
        }
        req.extensions_mut().insert(Arc::new(call));
        req.extensions_mut()
            .insert(ParsedBody(Arc::new(Mutex::new(Some(parsed)))));
        Ok(req)
    }
}

/// Reads the parsed body's `$_POST` without taking it (the vault step takes it), for the
/// steps between parsing and the vault.
pub fn with_post<T>(
    req: &super::Req,
    f: impl FnOnce(&crate::redcap::php_form::PhpArray) -> T,
) -> super::Result<T> {
    req.extensions()
        .get::<ParsedBody>()
        .and_then(|p| {
            p.with(|b| match b {
                FormBody::Urlencoded { form, .. } => f(&form.post),
                FormBody::Multipart(mp) => f(&mp.form.post),
            })
        })
        .ok_or_else(|| GatewayError::BadRequest("the request body was not parsed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step() -> Parse {
        Parse {
            limits: ParseLimits {
                php: PhpLimits::default(),
                max_urlencoded: 1024,
                max_multipart: 4096,
                max_multipart_field: 1024,
                body_timeout: Duration::from_secs(5),
            },
        }
    }

    fn request(content_type: Option<&str>, body: &str) -> Req {
        let mut b = http::Request::post("/p/demo/api/").header(CONTENT_LENGTH, body.len());
        if let Some(ct) = content_type {
            b = b.header(CONTENT_TYPE, ct);
        }
        let mut req = b.body(crate::body::full(body.to_string())).unwrap();
        RequestContext::of(&mut req);
        req
    }

    async fn apply(content_type: Option<&str>, body: &str) -> Result<Req> {
        step().apply(request(content_type, body)).await
    }

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    /// A form body becomes the call (and its summary, and the format errors are answered
    /// in); the body stays for the vault step. Wrong types, sizes and calls are refused
    /// with the status REDCap's clients expect.
    #[tokio::test]
    async fn a_form_body_becomes_a_call_or_a_clear_refusal() {
        let req = apply(FORM, "content=record&format=csv&returnFormat=csv")
            .await
            .unwrap();
        let call = req.extensions().get::<Arc<RedcapCall>>().unwrap();
        assert_eq!(call.content, "record");
        let ctx = req.extensions().get::<Arc<RequestContext>>().unwrap();
        assert_eq!(ctx.call.get().unwrap().content, "record");
        assert_eq!(ctx.bytes_in.get(), Some(&42));
        assert_eq!(ctx.error_format().as_str(), "csv");
        let post = with_post(&req, |p| p.len()).unwrap();
        assert_eq!(post, 3);

        assert!(matches!(
            apply(None, "content=record").await,
            Err(GatewayError::UnsupportedMediaType)
        ));
        assert!(matches!(
            apply(Some("application/json"), "{}").await,
            Err(GatewayError::UnsupportedMediaType)
        ));
        assert!(matches!(
            apply(Some("multipart/form-data"), "x").await,
            Err(GatewayError::BadRequest(_))
        ));
        let big = format!("content=record&data={}", "a".repeat(1100));
        assert!(matches!(
            apply(FORM, &big).await,
            Err(GatewayError::PayloadTooLarge(1024))
        ));
        // No `content`: REDCap's own refusal, in the format the body asked for.
        let req = request(FORM, "format=json&returnFormat=xml");
        let ctx = req
            .extensions()
            .get::<Arc<RequestContext>>()
            .unwrap()
            .clone();
        assert!(step().apply(req).await.is_err());
        assert_eq!(ctx.error_format().as_str(), "xml");
    }
}
