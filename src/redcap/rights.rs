//! Data export rights, as REDCap keeps them per user: a level per instrument. A caller
//! holding several grants gets, on each instrument, the widest level any of them gives,
//! as REDCap would for one user given the union of those rights.

use std::collections::BTreeMap;
use std::fmt::Write as _;

pub use crate::config::ExportLevel;
use crate::config::GrantConfig;

impl ExportLevel {
    /// REDCap's code for the level (Users API `forms_export`): 0, 2, 3, 1.
    pub fn redcap_code(self) -> u8 {
        match self {
            ExportLevel::None => 0,
            ExportLevel::Deidentified => 2,
            ExportLevel::RemoveIdentifiers => 3,
            ExportLevel::Full => 1,
        }
    }

    /// The name used in the config and in explanations.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportLevel::None => "none",
            ExportLevel::Deidentified => "deidentified",
            ExportLevel::RemoveIdentifiers => "remove_identifiers",
            ExportLevel::Full => "full",
        }
    }
}

/// Export rights: a default level and per-instrument exceptions (never equal to it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExportRights {
    pub default: ExportLevel,
    pub forms: BTreeMap<String, ExportLevel>,
}

impl ExportRights {
    /// No record data at all: what a caller without any grant, or a grant without an
    /// `export` key, gets.
    pub fn none() -> ExportRights {
        ExportRights {
            default: ExportLevel::None,
            forms: BTreeMap::new(),
        }
    }

    pub fn full() -> ExportRights {
        ExportRights {
            default: ExportLevel::Full,
            forms: BTreeMap::new(),
        }
    }

    /// A grant's rights as configured (`export` defaults to `none`).
    pub fn of_grant(g: &GrantConfig) -> ExportRights {
        let default = g.export.unwrap_or(ExportLevel::None);
        ExportRights {
            default,
            forms: g
                .export_forms
                .iter()
                .filter(|(_, l)| **l != default)
                .map(|(f, l)| (f.clone(), *l))
                .collect(),
        }
    }

    pub fn level(&self, form: &str) -> ExportLevel {
        self.forms.get(form).copied().unwrap_or(self.default)
    }

    /// Full Data Set on every instrument: nothing to apply.
    pub fn is_full(&self) -> bool {
        self.default == ExportLevel::Full && self.forms.is_empty()
    }

    /// The widest level per instrument across several grants' rights. An instrument no
    /// grant names gets the widest default; one that some grant names gets the widest of
    /// each grant's level for it (its entry, or that grant's default).
    pub fn widest<'a>(all: impl IntoIterator<Item = &'a ExportRights> + Clone) -> ExportRights {
        let default = all
            .clone()
            .into_iter()
            .map(|r| r.default)
            .max()
            .unwrap_or(ExportLevel::None);
        let mut forms = BTreeMap::new();
        for r in all.clone() {
            for form in r.forms.keys() {
                if forms.contains_key(form) {
                    continue;
                }
                let level = all
                    .clone()
                    .into_iter()
                    .map(|o| o.level(form))
                    .max()
                    .unwrap_or(default);
                if level != default {
                    forms.insert(form.clone(), level);
                }
            }
        }
        ExportRights { default, forms }
    }

    /// `deidentified; consent=none, labs=full`: for the audit log and explanations.
    pub fn describe(&self) -> String {
        let mut s = self.default.as_str().to_string();
        for (i, (f, l)) in self.forms.iter().enumerate() {
            s.push_str(if i == 0 { "; " } else { ", " });
            let _ = write!(s, "{f}={}", l.as_str());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExportLevel::*;

    fn rights(default: ExportLevel, forms: &[(&str, ExportLevel)]) -> ExportRights {
        ExportRights::of_grant(&GrantConfig {
            groups: vec!["g".into()],
            users: vec![],
            allow: vec![],
            export: Some(default),
            export_forms: forms.iter().map(|(f, l)| (f.to_string(), *l)).collect(),
            dags: Option::None,
        })
    }

    #[test]
    fn levels_order_from_none_to_full() {
        assert!(
            None < Deidentified && Deidentified < RemoveIdentifiers && RemoveIdentifiers < Full
        );
        assert_eq!(
            [None, Deidentified, RemoveIdentifiers, Full].map(ExportLevel::redcap_code),
            [0, 2, 3, 1]
        );
    }

    #[test]
    fn widest_per_instrument() {
        let a = rights(Deidentified, &[("consent", None), ("labs", Full)]);
        let b = rights(None, &[("consent", RemoveIdentifiers)]);
        let w = ExportRights::widest([&a, &b]);
        assert_eq!(w.level("demographics"), Deidentified);
        assert_eq!(w.level("consent"), RemoveIdentifiers);
        assert_eq!(w.level("labs"), Full);
        assert_eq!(
            w.describe(),
            "deidentified; consent=remove_identifiers, labs=full"
        );
        // A grant's exception narrower than another grant's default does not narrow.
        let c = rights(Full, &[]);
        assert!(ExportRights::widest([&a, &c]).is_full());
        assert_eq!(ExportRights::widest([]), ExportRights::none());
    }

    #[test]
    fn missing_export_key_is_no_access() {
        let g = GrantConfig {
            groups: vec!["g".into()],
            users: vec![],
            allow: vec!["read".into()],
            export: Option::None,
            export_forms: BTreeMap::new(),
            dags: Option::None,
        };
        assert_eq!(ExportRights::of_grant(&g), ExportRights::none());
    }
}
