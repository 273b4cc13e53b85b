//! A browser's part of the portal's sign-in, without a browser: a cookie jar per
//! origin path, redirects followed by hand, and the dev sign-in service's page filled
//! in. For the attack tests (the real-browser test is tests/portal_browser.rs).
#![allow(dead_code)]

use std::collections::BTreeMap;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use super::{send, Reply};

#[derive(Default, Clone)]
pub struct Browser {
    /// name -> value, as the gateway set them (one origin: the gateway's).
    pub cookies: BTreeMap<String, String>,
    /// Headers added to every POST (a real browser's Origin and Sec-Fetch-Site).
    pub origin: Option<String>,
}

/// The value of `name="field" value="..."` in a page.
pub fn field(html: &str, name: &str) -> Option<String> {
    let needle = format!("name=\"{name}\" value=\"");
    let start = html.find(&needle)? + needle.len();
    let end = start + html[start..].find('"')?;
    Some(html[start..end].replace("&amp;", "&").replace("&#43;", "+"))
}

/// Every `name="field" value="..."` in a page, in order.
pub fn fields(html: &str, name: &str) -> Vec<String> {
    let needle = format!("name=\"{name}\" value=\"");
    html.match_indices(&needle)
        .filter_map(|(i, _)| {
            let start = i + needle.len();
            let end = start + html[start..].find('"')?;
            Some(html[start..end].to_string())
        })
        .collect()
}

/// The text of the element with id `id` (`<code id="new-token">...</code>`).
pub fn element_text(html: &str, id: &str) -> Option<String> {
    let needle = format!("id=\"{id}\">");
    let start = html.find(&needle)? + needle.len();
    let end = start + html[start..].find('<')?;
    Some(html[start..end].to_string())
}

impl Browser {
    pub fn new(origin: &str) -> Browser {
        Browser {
            cookies: BTreeMap::new(),
            origin: Some(origin.to_string()),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Takes the answer's Set-Cookie headers, as a browser would (Max-Age=0 removes).
    pub fn keep(&mut self, r: &Reply) {
        for v in r.headers.get_all("set-cookie") {
            let text = v.to_str().unwrap();
            let pair = text.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if text.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_string(), value.to_string());
            }
        }
    }

    pub async fn get(&mut self, url: &str) -> Reply {
        self.get_with(url, &[]).await
    }

    /// A GET with more headers.
    pub async fn get_with(&mut self, url: &str, headers: &[(&str, &str)]) -> Reply {
        let mut b = Request::get(url).header("cookie", self.cookie_header());
        for (name, value) in headers {
            b = b.header(*name, *value);
        }
        let r = send(b.body(Full::new(Bytes::new())).unwrap()).await;
        self.keep(&r);
        r
    }

    pub async fn post(&mut self, url: &str, body: &str) -> Reply {
        let mut b = Request::post(url)
            .header("cookie", self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some(o) = &self.origin {
            b = b
                .header("origin", o)
                .header("sec-fetch-site", "same-origin");
        }
        let r = send(b.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await;
        self.keep(&r);
        r
    }

    /// Where a redirect points.
    pub fn location(r: &Reply) -> String {
        r.headers
            .get("location")
            .unwrap_or_else(|| panic!("no redirect ({}): {}", r.status, r.text()))
            .to_str()
            .unwrap()
            .to_string()
    }

    /// Starts a sign-in at `base`, picks `user` on the dev sign-in page, and returns
    /// the IdP's answer URL (the callback, not yet followed).
    pub async fn until_callback(&mut self, base: &str, user: &str) -> String {
        let r = self.get(&format!("{base}/portal/login")).await;
        assert_eq!(r.status, 303, "{}", r.text());
        let authorize = Self::location(&r);
        // The IdP's own page: no gateway cookies go there.
        let page = send(
            Request::get(&authorize)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(page.status, 200, "{}", page.text());
        let html = page.text();
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        for &name in redcap_gateway::dev::idp::AUTHORIZE_FIELDS {
            form.append_pair(name, &field(&html, name).expect(name));
        }
        form.append_pair("user", user);
        let idp = authorize.split("/authorize").next().unwrap();
        let r = send(
            Request::post(format!("{idp}/authorize"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(form.finish())))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 303, "{}", r.text());
        Self::location(&r)
    }

    /// A whole sign-in as `user`; returns the page the portal sent us back to.
    pub async fn sign_in(&mut self, base: &str, user: &str) -> Reply {
        let callback = self.until_callback(base, user).await;
        let r = self.get(&callback).await;
        assert_eq!(r.status, 303, "{}", r.text());
        let next = Self::location(&r);
        self.get(&format!("{base}{next}")).await
    }

    /// The CSRF token of the page's forms.
    pub fn csrf(page: &Reply) -> String {
        field(&page.text(), "csrf").expect("a form with a CSRF token")
    }
}
