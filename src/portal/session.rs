//! The portal's cookies: a sign-in in progress and a session, each a `cookie` private
//! (AES-256-GCM, the cookie's name bound in) value under a key derived from
//! `portal.cookie_key`, so a browser can neither read nor change nor swap them. HttpOnly,
//! SameSite=Lax, Secure (and the `__Host-` prefix) unless dev mode on loopback, Path=/.
//!
//! The expiry that counts is the one inside the encrypted value, not the cookie's
//! Max-Age (a browser's to ignore). Sign-out revokes the session id in this process
//! until it would have expired; the CSRF token of a session is random and lives in it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use cookie::{Cookie, CookieJar, Key, SameSite};
use http::header::{HeaderMap, HeaderValue, COOKIE, SET_COOKIE};
use serde::{Deserialize, Serialize};

use crate::auth::{CredentialKind, Principal};
use crate::clock::now_unix;
use crate::secret::Secret;

/// Browsers keep cookies up to about 4 KiB, name and attributes included.
const MAX_COOKIE_VALUE: usize = 3800;
/// At most this many revoked sessions and spent sign-ins are remembered.
const MAX_REMEMBERED: usize = 100_000;

/// 32 random bytes, base64url: session ids, CSRF tokens, `state` and `nonce`.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    let _ = aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A signed-in user, as the session cookie holds them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Session {
    pub sid: String,
    pub user: String,
    pub groups: Vec<String>,
    pub issuer: String,
    /// Unix seconds after which the session is refused.
    pub exp: u64,
    pub csrf: String,
}

impl Session {
    pub fn principal(&self) -> Principal {
        Principal {
            user: self.user.clone(),
            groups: self.groups.clone(),
            issuer: self.issuer.clone(),
            credential: CredentialKind::Session,
        }
    }

    /// The form's CSRF token is this session's (compared in constant time).
    pub fn csrf_matches(&self, sent: &str) -> bool {
        let same = subtle::ConstantTimeEq::ct_eq(sent.as_bytes(), self.csrf.as_bytes());
        !sent.is_empty() && bool::from(same)
    }
}

/// A sign-in between the redirect to the IdP and its answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    /// Where to go once signed in (a checked portal path).
    pub next: String,
    pub exp: u64,
}

pub struct Cookies {
    key: Key,
    secure: bool,
    session_lifetime: Duration,
    login_timeout: Duration,
    memory: std::sync::Arc<Memory>,
}

/// What this process remembers of sessions and sign-ins (kept across config reloads).
#[derive(Default)]
struct Memory {
    /// Signed-out session ids, until they would have expired.
    revoked: Mutex<HashMap<String, u64>>,
    /// `state`s of finished sign-ins, until their login would have expired: a replayed
    /// answer from the IdP finds its state spent.
    spent: Mutex<HashMap<String, u64>>,
}

/// Why a cookie did not give a session or a sign-in. None of these says which part of
/// the cookie was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieError {
    /// No cookie, or one that does not decrypt and verify under the key.
    Missing,
    Expired,
    Revoked,
}

fn remember(map: &Mutex<HashMap<String, u64>>, key: &str, until: u64) {
    if let Ok(mut m) = map.lock() {
        if m.len() >= MAX_REMEMBERED {
            let now = now_unix();
            m.retain(|_, exp| *exp > now);
        }
        if m.len() < MAX_REMEMBERED {
            m.insert(key.to_string(), until);
        }
    }
}

fn remembered(map: &Mutex<HashMap<String, u64>>, key: &str) -> bool {
    map.lock().map_or(true, |m| m.contains_key(key))
}

impl Cookies {
    /// `secure`: mark cookies Secure and name them `__Host-...` (every deployment but
    /// dev mode on a loopback http URL).
    pub fn new(
        master: &Secret,
        secure: bool,
        session_lifetime: Duration,
        login_timeout: Duration,
    ) -> Cookies {
        Cookies {
            // At least 32 bytes (checked by the config); HKDF makes the 64-byte key.
            key: Key::derive_from(master.expose().as_bytes()),
            secure,
            session_lifetime,
            login_timeout,
            memory: Default::default(),
        }
    }

    /// Remember what `old` remembered (a reload with the same key).
    pub fn keep_memory_of(&mut self, old: &Cookies) {
        self.memory = old.memory.clone();
    }

    /// Whether cookies are Secure (the public URL is https).
    pub fn secure(&self) -> bool {
        self.secure
    }

    pub fn session_name(&self) -> &'static str {
        if self.secure {
            "__Host-rgw-session"
        } else {
            "rgw-session"
        }
    }

    pub fn login_name(&self) -> &'static str {
        if self.secure {
            "__Host-rgw-login"
        } else {
            "rgw-login"
        }
    }

    /// The value of the private cookie `name` among the request's cookies, decrypted
    /// and verified.
    fn read<T: for<'de> Deserialize<'de>>(&self, headers: &HeaderMap, name: &str) -> Option<T> {
        let mut jar = CookieJar::new();
        for v in headers.get_all(COOKIE) {
            let Ok(text) = v.to_str() else { continue };
            for c in Cookie::split_parse(text).flatten() {
                if c.name() == name {
                    jar.add_original(c.into_owned());
                }
            }
        }
        let plain = jar.private(&self.key).get(name)?;
        serde_json::from_str(plain.value()).ok()
    }

    /// A Set-Cookie value holding `value` encrypted, for `max_age`.
    fn write<T: Serialize>(
        &self,
        name: &'static str,
        value: &T,
        max_age: Duration,
    ) -> Option<HeaderValue> {
        let text = serde_json::to_string(value).ok()?;
        let mut jar = CookieJar::new();
        let secs = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
        jar.private_mut(&self.key).add(
            Cookie::build((name, text))
                .http_only(true)
                .secure(self.secure)
                .same_site(SameSite::Lax)
                .path("/")
                .max_age(cookie::time::Duration::seconds(secs)),
        );
        let c = jar.delta().next()?;
        if c.value().len() > MAX_COOKIE_VALUE {
            return None;
        }
        HeaderValue::from_str(&c.to_string()).ok()
    }

    /// A Set-Cookie value that removes cookie `name`.
    pub fn clear(&self, name: &'static str) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{name}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{secure}"
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("rgw-session=; Path=/; Max-Age=0"))
    }

    /// The request's session, if it has a valid, unexpired, not signed-out one.
    pub fn session(&self, headers: &HeaderMap) -> Result<Session, CookieError> {
        let s: Session = self
            .read(headers, self.session_name())
            .ok_or(CookieError::Missing)?;
        if s.exp <= now_unix() {
            return Err(CookieError::Expired);
        }
        if remembered(&self.memory.revoked, &s.sid) {
            return Err(CookieError::Revoked);
        }
        Ok(s)
    }

    /// A new session for `who`, and the Set-Cookie that holds it; `None` when it does
    /// not fit in a cookie.
    pub fn open_session(&self, who: &Principal) -> Option<(Session, HeaderValue)> {
        let s = Session {
            sid: random_token(),
            user: who.user.clone(),
            groups: who.groups.clone(),
            issuer: who.issuer.clone(),
            exp: now_unix() + self.session_lifetime.as_secs(),
            csrf: random_token(),
        };
        let cookie = self.seal(&s)?;
        Some((s, cookie))
    }

    /// The Set-Cookie value holding session `s` as it is (tests forge expired ones).
    pub fn seal(&self, s: &Session) -> Option<HeaderValue> {
        self.write(self.session_name(), s, self.session_lifetime)
    }

    /// Signs the session out in this process (its cookie is cleared by the caller).
    pub fn revoke(&self, s: &Session) {
        remember(&self.memory.revoked, &s.sid, s.exp);
    }

    /// A new sign-in's cookie, returning to `next` afterwards.
    pub fn start_login(
        &self,
        state: &str,
        nonce: &str,
        pkce_verifier: &str,
        next: &str,
    ) -> Option<HeaderValue> {
        let login = Login {
            state: state.to_string(),
            nonce: nonce.to_string(),
            pkce_verifier: pkce_verifier.to_string(),
            next: next.to_string(),
            exp: now_unix() + self.login_timeout.as_secs(),
        };
        self.write(self.login_name(), &login, self.login_timeout)
    }

    /// The sign-in the IdP's answer belongs to: this browser's login cookie, unexpired,
    /// for this `state` (compared in constant time), not finished before. It is spent
    /// by this call, whatever happens next.
    pub fn finish_login(&self, headers: &HeaderMap, state: &str) -> Result<Login, &'static str> {
        let login: Login = self
            .read(headers, self.login_name())
            .ok_or("no sign-in is in progress in this browser (or its cookie is not ours)")?;
        let same = subtle::ConstantTimeEq::ct_eq(state.as_bytes(), login.state.as_bytes());
        if state.is_empty() || !bool::from(same) {
            return Err("the answer's state is not this sign-in's");
        }
        if login.exp <= now_unix() {
            return Err("the sign-in took too long; sign in again");
        }
        if remembered(&self.memory.spent, &login.state) {
            return Err("this sign-in has already been used");
        }
        remember(&self.memory.spent, &login.state, login.exp);
        Ok(login)
    }
}

/// Adds a Set-Cookie header.
pub fn set_cookie(headers: &mut HeaderMap, value: HeaderValue) {
    headers.append(SET_COOKIE, value);
}

/// A return path after sign-in: a portal page of this gateway, never another site. Only
/// `/portal` and paths under `/portal/` of letters, digits and `/_-.` (no `//`, no `..`,
/// no escapes, no query) are taken; anything else is refused, not rewritten.
pub fn safe_next(next: &str) -> Option<&str> {
    let ok_chars = next
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'.'));
    let under = next == "/portal" || next.starts_with("/portal/");
    (ok_chars && under && !next.contains("//") && !next.contains("..") && next.len() <= 200)
        .then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies() -> Cookies {
        Cookies::new(
            &Secret::new("k".repeat(32)),
            true,
            Duration::from_secs(3600),
            Duration::from_secs(600),
        )
    }

    fn who() -> Principal {
        Principal {
            user: "ana".into(),
            groups: vec!["g".into()],
            issuer: "https://idp".into(),
            credential: CredentialKind::Jwt,
        }
    }

    /// The request headers a browser sends back for a Set-Cookie value.
    fn sent(set: &HeaderValue) -> HeaderMap {
        let pair = set.to_str().unwrap().split(';').next().unwrap().to_string();
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(&pair).unwrap());
        h
    }

    #[test]
    fn a_session_round_trips_and_is_private() {
        let c = cookies();
        let (s, set) = c.open_session(&who()).unwrap();
        let text = set.to_str().unwrap();
        assert!(text.starts_with("__Host-rgw-session="), "{text}");
        for attr in [
            "HttpOnly",
            "Secure",
            "SameSite=Lax",
            "Path=/",
            "Max-Age=3600",
        ] {
            assert!(text.contains(attr), "{attr} in {text}");
        }
        assert!(
            !text.contains("ana") && !text.contains(&s.csrf),
            "readable: {text}"
        );
        let back = c.session(&sent(&set)).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.principal().credential, CredentialKind::Session);
        c.revoke(&back);
        assert_eq!(c.session(&sent(&set)), Err(CookieError::Revoked));
    }

    #[test]
    fn another_key_or_another_name_gives_nothing() {
        let c = cookies();
        let (_, set) = c.open_session(&who()).unwrap();
        let other = Cookies::new(
            &Secret::new("x".repeat(32)),
            true,
            Duration::from_secs(3600),
            Duration::from_secs(600),
        );
        assert_eq!(other.session(&sent(&set)), Err(CookieError::Missing));
        // The session's value under the login cookie's name does not decrypt.
        let value = set.to_str().unwrap().split(';').next().unwrap();
        let swapped = value.replacen("__Host-rgw-session", "__Host-rgw-login", 1);
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(&swapped).unwrap());
        assert!(c.finish_login(&h, "x").is_err());
    }

    #[test]
    fn a_login_is_spent_once() {
        let c = cookies();
        let set = c.start_login("st", "no", "pk", "/portal/").unwrap();
        let h = sent(&set);
        assert!(c.finish_login(&h, "other").is_err());
        let login = c.finish_login(&h, "st").unwrap();
        assert_eq!(
            (login.nonce.as_str(), login.next.as_str()),
            ("no", "/portal/")
        );
        assert_eq!(
            c.finish_login(&h, "st"),
            Err("this sign-in has already been used")
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any change to a session cookie's value (a character replaced, the value cut
        /// or lengthened) gives no session: the value is authenticated, not only
        /// encoded.
        #[test]
        fn a_changed_cookie_never_opens_a_session(
            at in 0usize..10_000,
            with in "[A-Za-z0-9+/=]",
            cut in 0usize..10_000,
            tail in "[A-Za-z0-9+/=]{1,8}",
        ) {
            let c = cookies();
            let (_, set) = c.open_session(&who()).unwrap();
            let pair = set.to_str().unwrap().split(';').next().unwrap().to_string();
            let (name, value) = pair.split_once('=').unwrap();
            let try_value = |v: &str| {
                let mut h = HeaderMap::new();
                h.insert(COOKIE, HeaderValue::from_str(&format!("{name}={v}")).unwrap());
                c.session(&h)
            };
            proptest::prop_assert!(try_value(value).is_ok());
            let i = at % value.len();
            let mut replaced = value.to_string();
            replaced.replace_range(i..i + 1, &with);
            if replaced != value {
                proptest::prop_assert_eq!(try_value(&replaced), Err(CookieError::Missing));
            }
            let short = &value[..cut % value.len()];
            proptest::prop_assert_eq!(try_value(short), Err(CookieError::Missing));
            proptest::prop_assert_eq!(try_value(&format!("{value}{tail}")), Err(CookieError::Missing));
        }

        /// A session opens exactly while its own expiry (inside the sealed value) is
        /// ahead, whatever the cookie's Max-Age says.
        #[test]
        fn a_session_opens_only_before_its_expiry(offset in -100_000i64..100_000) {
            let c = cookies();
            let (mut s, _) = c.open_session(&who()).unwrap();
            let now = now_unix() as i64;
            s.exp = (now + offset).max(0) as u64;
            let set = c.seal(&s).unwrap();
            let opened = c.session(&sent(&set));
            if offset > 1 {
                proptest::prop_assert!(opened.is_ok());
            } else if offset <= 0 {
                proptest::prop_assert_eq!(opened, Err(CookieError::Expired));
            }
        }

        /// Whatever a return address accepted by `safe_next`, a browser resolving it
        /// against the gateway's URL stays on the gateway, under /portal.
        #[test]
        fn an_accepted_return_address_stays_in_the_portal(
            next in "(/portal)?(/|[.][.]|[.]|[a-z]|[\\\\]|%2f|:|@){0,6}",
        ) {
            if let Some(ok) = safe_next(&next) {
                let base = url::Url::parse("https://gateway.example.edu/portal/p/demo").unwrap();
                let to = base.join(ok).unwrap();
                proptest::prop_assert_eq!(to.origin(), base.origin(), "{} left the gateway", ok);
                proptest::prop_assert!(
                    to.path() == "/portal" || to.path().starts_with("/portal/"),
                    "{} resolves to {}", ok, to.path()
                );
            }
        }
    }

    #[test]
    fn next_stays_in_the_portal() {
        for ok in ["/portal", "/portal/", "/portal/p/demo"] {
            assert_eq!(safe_next(ok), Some(ok));
        }
        for bad in [
            "https://evil.example/",
            "//evil.example/portal/",
            "/portal//evil.example",
            "/\\evil.example",
            "/portal/../api/",
            "/portal/%2F%2Fevil",
            "/portalx",
            "portal/",
            "/api/",
            "/portal/p/demo?x=1",
            "/portal/\u{0}",
            "",
        ] {
            assert_eq!(safe_next(bad), None, "{bad:?}");
        }
    }
}
