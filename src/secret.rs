//! Secrets that cannot be printed and are wiped from memory when dropped.

use std::fmt;
use zeroize::Zeroizing;

/// A secret string (a REDCap project token, a personal token). Debug and Display print
/// `[redacted]`; the bytes are zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(Zeroizing::new(s))
    }

    /// The secret itself, for the one place that must send it (the upstream body).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares in constant time (for the length of the shorter input).
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(other).into()
    }
}

/// A fresh random REDCap-shaped token (32 upper-case hex characters, from the system's
/// secure random source): personal tokens, and the dev project's token.
pub fn random_redcap_token() -> Secret {
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut b);
    Secret::new(b.iter().map(|x| format!("{x:02X}")).collect())
}

/// Reads a secret named by reference: `env:NAME` (an environment variable) or
/// `file:/path` (the file's content, trailing newline trimmed). Errors name the
/// reference, never the value.
pub fn read_ref(reference: &str) -> Result<Secret, String> {
    let raw =
        match reference.split_once(':') {
            Some(("env", name)) if !name.is_empty() => std::env::var(name)
                .map_err(|_| format!("environment variable {name} is not set"))?,
            Some(("file", path)) if !path.is_empty() => std::fs::read_to_string(path)
                .map_err(|e| format!("reading {path}: {}", e.kind()))?,
            _ => return Err("write env:NAME or file:/path".into()),
        };
    let raw = Zeroizing::new(raw);
    let value = raw.trim_end_matches(['\r', '\n']);
    if value.is_empty() {
        return Err(format!("{reference} is empty"));
    }
    Ok(Secret::new(value.to_string()))
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// REDCap project tokens are 32 upper-case hex characters; super tokens 64.
pub fn is_redcap_token(s: &str) -> bool {
    (s.len() == 32 || s.len() == 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints() {
        let s = Secret::new("0123456789ABCDEF0123456789ABCDEF".into());
        assert_eq!(
            format!("{s:?} {s} {:?}", Some(&s)),
            "[redacted] [redacted] Some([redacted])"
        );
    }

    #[test]
    fn token_shapes() {
        assert!(is_redcap_token(&"A".repeat(32)));
        assert!(is_redcap_token(&"0".repeat(64)));
        assert!(!is_redcap_token(&"a".repeat(32)));
        assert!(!is_redcap_token(&"A".repeat(31)));
        assert!(!is_redcap_token(&"G".repeat(32)));
    }
}
