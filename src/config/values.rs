//! Small value types for the config file: durations ("30s") and sizes ("64MiB").

use serde::{de, Deserialize, Deserializer};
use std::time::Duration;

/// A duration written as "30s", "5m", "250ms".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Dur).map_err(|e| {
            de::Error::custom(format!("invalid duration {s:?}: {e} (write e.g. \"30s\")"))
        })
    }
}

/// A size in bytes written as a number or "64MiB", "100MB", "512KiB".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl Size {
    pub fn parse(s: &str) -> Option<u64> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().ok()?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" => 1_000,
            "KiB" => 1 << 10,
            "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "GB" => 1_000_000_000,
            "GiB" => 1 << 30,
            _ => return None,
        };
        n.checked_mul(mult)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size(n)),
            Raw::S(s) => Size::parse(&s).map(Size).ok_or_else(|| {
                de::Error::custom(format!(
                    "invalid size {s:?} (write e.g. \"64MiB\" or a number of bytes)"
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(Size::parse("64MiB"), Some(64 << 20));
        assert_eq!(Size::parse("100 MB"), Some(100_000_000));
        assert_eq!(Size::parse("12"), Some(12));
        assert_eq!(Size::parse("12XB"), None);
        assert_eq!(Size::parse("99999999999999GiB"), None);
    }
}
