//! Who may do what: per-project grants over REDCap `content:action` pairs.
//! Decisions are pure functions of (Principal, RedcapCall, policy).

use std::collections::HashMap;

use crate::auth::Principal;
use crate::config::GrantConfig;
use crate::redcap::call::{Operation, RedcapCall, CONTENTS};

/// Actions a permission can name.
const ACTIONS: &[&str] = &[
    "export",
    "import",
    "delete",
    "rename",
    "randomize",
    "switch",
    "list",
    "createFolder",
];

/// What PyCap and other clients fetch around a read (metadata before records, and so on).
pub const READ_BUNDLE: &[&str] = &[
    "record:export",
    "metadata:export",
    "project:export",
    "formEventMapping:export",
    "exportFieldNames:export",
    "version:export",
    "instrument:export",
    "event:export",
    "arm:export",
    "repeatingFormsEvents:export",
    "report:export",
    "fileInfo:export",
    "file:export",
    "fileRepository:list",
    "fileRepository:export",
    "dag:export",
    "userDagMapping:export",
    "generateNextRecordName:export",
];

/// One allowed `content:action`, possibly with `*` on either side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    content: String,
    action: String,
}

impl Permission {
    /// Parses a grant entry. Bundles expand to several permissions.
    pub fn parse(s: &str) -> Result<Vec<Permission>, String> {
        if s == "read" {
            return READ_BUNDLE.iter().map(|p| Self::parse_one(p)).collect();
        }
        Self::parse_one(s).map(|p| vec![p])
    }

    fn parse_one(s: &str) -> Result<Permission, String> {
        let (content, action) = s.split_once(':').ok_or_else(|| {
            format!(
                "permission {s:?} must be content:action (e.g. record:export) or a bundle (read)"
            )
        })?;
        if content != "*" && !CONTENTS.contains(&content) {
            return Err(format!(
                "permission {s:?}: unknown content {content:?} (contents are case-sensitive)"
            ));
        }
        if action != "*" && !ACTIONS.contains(&action) {
            return Err(format!("permission {s:?}: unknown action {action:?}"));
        }
        Ok(Permission {
            content: content.to_string(),
            action: action.to_string(),
        })
    }

    fn allows(&self, content: &str, op: Operation) -> bool {
        let action = op.as_str();
        // A DAG switch changes the DAG of everyone sharing the token: only an explicit
        // `dag:switch` allows it, never a wildcard.
        if op == Operation::Switch {
            return self.content == "dag" && self.action == "switch";
        }
        (self.content == "*" || self.content == content)
            && (self.action == "*" || self.action == action)
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub rule: &'static str,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(Denial),
}

struct Grant {
    groups: Vec<String>,
    users: Vec<String>,
    permissions: Vec<Permission>,
}

/// One project's compiled grants.
pub struct ProjectPolicy {
    grants: Vec<Grant>,
}

impl ProjectPolicy {
    pub fn compile(grants: &[GrantConfig]) -> Result<ProjectPolicy, String> {
        let mut out = Vec::new();
        for g in grants {
            let mut permissions = Vec::new();
            for a in &g.allow {
                permissions.extend(Permission::parse(a)?);
            }
            out.push(Grant {
                groups: g.groups.clone(),
                users: g.users.clone(),
                permissions,
            });
        }
        Ok(ProjectPolicy { grants: out })
    }

    /// Default deny: allowed only when a grant naming the caller allows the call.
    pub fn decide(&self, who: &Principal, call: &RedcapCall) -> Decision {
        let applies = |g: &Grant| {
            g.users.contains(&who.user)
                || g.groups
                    .iter()
                    .any(|grp| who.groups.iter().any(|mine| mine == grp))
        };
        let allowed = self.grants.iter().filter(|g| applies(g)).any(|g| {
            g.permissions
                .iter()
                .any(|p| p.allows(&call.content, call.operation))
        });
        if allowed {
            Decision::Allow
        } else {
            Decision::Deny(Denial {
                rule: "grants",
                reasons: vec![format!(
                    "{} may not {} on this project (no grant allows {})",
                    who.user,
                    call.operation.as_str(),
                    call.permission()
                )],
            })
        }
    }
}

/// Every project's policy.
#[derive(Default)]
pub struct Policy {
    projects: HashMap<String, ProjectPolicy>,
}

impl Policy {
    pub fn new(projects: HashMap<String, ProjectPolicy>) -> Self {
        Policy { projects }
    }

    pub fn decide(&self, project: &str, who: &Principal, call: &RedcapCall) -> Decision {
        match self.projects.get(project) {
            Some(p) => p.decide(who, call),
            None => Decision::Deny(Denial {
                rule: "grants",
                reasons: vec!["the project has no policy".into()],
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::CredentialKind;
    use crate::redcap::php_form::{parse_urlencoded, PhpLimits};

    fn who(user: &str, groups: &[&str]) -> Principal {
        Principal {
            user: user.into(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            issuer: "test".into(),
            credential: CredentialKind::Jwt,
        }
    }

    fn call(body: &str) -> RedcapCall {
        RedcapCall::from_form(&parse_urlencoded(body.as_bytes(), PhpLimits::default()).unwrap())
            .unwrap()
    }

    fn policy(groups: &[&str], users: &[&str], allow: &[&str]) -> ProjectPolicy {
        ProjectPolicy::compile(&[GrantConfig {
            groups: groups.iter().map(|s| s.to_string()).collect(),
            users: users.iter().map(|s| s.to_string()).collect(),
            allow: allow.iter().map(|s| s.to_string()).collect(),
        }])
        .unwrap()
    }

    #[test]
    fn table() {
        let p = policy(&["team"], &["bob"], &["read", "user:delete", "dag:*"]);
        let cases = [
            (who("x", &["team"]), "content=record", true),
            (who("x", &["team"]), "content=metadata", true),
            (who("x", &["team"]), "content=record&data=x", false),
            (who("x", &["other"]), "content=record", false),
            (who("bob", &[]), "content=record", true),
            (
                who("x", &["team"]),
                "content=user&action=delete&users[]=a",
                true,
            ),
            (who("x", &["team"]), "content=user&data=x", false),
            (
                who("x", &["team"]),
                "content=user&action=export&data=x",
                false,
            ),
            (
                who("x", &["team"]),
                "content=dag&action=import&data=x",
                true,
            ),
            (
                who("x", &["team"]),
                "content=dag&action=switch&dag=a",
                false,
            ),
        ];
        for (w, body, want) in cases {
            let got = p.decide(&w, &call(body)) == Decision::Allow;
            assert_eq!(got, want, "{} {body}", w.user);
        }
    }

    #[test]
    fn switch_needs_explicit_grant() {
        assert_ne!(
            policy(&["t"], &[], &["*:*"])
                .decide(&who("x", &["t"]), &call("content=dag&action=switch")),
            Decision::Allow
        );
        assert_eq!(
            policy(&["t"], &[], &["dag:switch"])
                .decide(&who("x", &["t"]), &call("content=dag&action=switch")),
            Decision::Allow
        );
    }

    #[test]
    fn bad_permissions() {
        assert!(Permission::parse("records:export").is_err());
        assert!(Permission::parse("record:Export").is_err());
        assert!(Permission::parse("record").is_err());
        assert!(Permission::parse("*:*").is_ok());
    }
}
