//! Who may do what: per-project grants over REDCap `content:action` pairs, then the
//! REDCap-aware rules on user, role and DAG changes (`users.rs`). Decisions are pure
//! functions of (Principal, RedcapCall, policy, now).

pub mod export;
pub mod users;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::auth::Principal;
use crate::config::{GrantConfig, ProjectConfig};
use crate::redcap::call::{Operation, RedcapCall, CONTENTS};
pub use crate::redcap::rights::{ExportLevel, ExportRights};
use crate::redcap::user_data;
pub use users::{Effect, UserRules};

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

/// A decision, with what it was based on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The rule that decided (grants, user_import, user_delete, ...).
    pub rule: &'static str,
    /// Every reason for a denial (all rows, all rules), empty when allowed.
    pub reasons: Vec<String>,
    /// Users affected and rights/DAGs/roles set, for the audit log.
    pub effect: Effect,
    /// Each rule consulted; filled only by `ProjectPolicy::explain` (`policy explain`).
    pub trace: Vec<String>,
    /// The call's data could not be read (a 400, not a policy denial): set with the
    /// parser's reason in `reasons`.
    pub bad_input: bool,
}

/// The trace of a decision, written only when asked for: on the request path it would
/// cost two `format!`s per call that nobody reads.
struct Trace {
    on: bool,
    lines: Vec<String>,
}

impl Trace {
    fn push(&mut self, line: impl FnOnce() -> String) {
        if self.on {
            self.lines.push(line());
        }
    }
}

impl Decision {
    fn deny(rule: &'static str, reasons: Vec<String>, trace: Vec<String>) -> Decision {
        Decision {
            allowed: false,
            rule,
            reasons,
            effect: Effect::default(),
            trace,
            bad_input: false,
        }
    }

    /// The data the rule must read is not well formed: refused as bad input, the
    /// parser's reason in `reasons`.
    fn unreadable(rule: &'static str, e: impl std::fmt::Display, trace: Vec<String>) -> Decision {
        Decision {
            bad_input: true,
            ..Decision::deny(rule, vec![format!("data: {e}")], trace)
        }
    }
}

struct Grant {
    groups: Vec<String>,
    users: Vec<String>,
    /// As written in the config (`read`, `user:*`), for the portal's pages.
    allow: Vec<String>,
    permissions: Vec<Permission>,
    export: ExportRights,
    /// The DAGs its members are scoped to; `None`: every record.
    dags: Option<Arc<BTreeSet<String>>>,
}

impl Grant {
    fn applies_to(&self, who: &Principal) -> bool {
        self.users.contains(&who.user)
            || self
                .groups
                .iter()
                .any(|grp| who.groups.iter().any(|mine| mine == grp))
    }
}

/// One project's compiled policy.
pub struct ProjectPolicy {
    grants: Vec<Grant>,
    users: UserRules,
    /// Every grant gives Full Data Set everywhere: export rights never apply.
    all_full: bool,
    /// Some grant lists DAGs: calls may be scoped.
    any_dags: bool,
}

impl ProjectPolicy {
    pub fn compile(grants: &[GrantConfig]) -> Result<ProjectPolicy, String> {
        Self::compile_with(grants, &Default::default(), None).map_err(|e| e.join("\n"))
    }

    /// A project's policy; every problem at once, each named by where it is in the
    /// project's section (`grants[1]: ...`, `user_rules: ...`).
    pub fn from_config(p: &ProjectConfig) -> Result<ProjectPolicy, Vec<String>> {
        Self::compile_with(&p.grants, &p.user_rules, p.token_owner.as_deref())
    }

    pub fn compile_with(
        grants: &[GrantConfig],
        rules: &crate::config::UserRulesConfig,
        token_owner: Option<&str>,
    ) -> Result<ProjectPolicy, Vec<String>> {
        let mut errs = Vec::new();
        let mut out = Vec::new();
        for (i, g) in grants.iter().enumerate() {
            let mut permissions = Vec::new();
            for a in &g.allow {
                match Permission::parse(a) {
                    Ok(p) => permissions.extend(p),
                    Err(e) => errs.push(format!("grants[{i}]: {e}")),
                }
            }
            out.push(Grant {
                groups: g.groups.clone(),
                users: g.users.clone(),
                allow: g.allow.clone(),
                permissions,
                export: ExportRights::of_grant(g),
                dags: g
                    .dags
                    .as_ref()
                    .map(|d| Arc::new(d.iter().cloned().collect())),
            });
        }
        let users = UserRules::compile(rules, token_owner)
            .map_err(|e| errs.push(format!("user_rules: {e}")))
            .ok();
        match users {
            Some(users) if errs.is_empty() => Ok(ProjectPolicy {
                all_full: out.iter().all(|g| g.export.is_full()),
                any_dags: out.iter().any(|g| g.dags.is_some()),
                grants: out,
                users,
            }),
            _ => Err(errs),
        }
    }

    /// The caller's export rights: per instrument the widest of the grants naming them
    /// (none when no grant does). `None` when they are Full Data Set everywhere, the
    /// common case, answered without building anything.
    pub fn export_rights(&self, who: &Principal) -> Option<ExportRights> {
        if self.all_full {
            return None;
        }
        let mine = self.grants.iter().filter(|g| g.applies_to(who));
        if mine.clone().any(|g| g.export.is_full()) {
            return None;
        }
        Some(ExportRights::widest(mine.map(|g| &g.export)))
    }

    /// The DAGs the caller is scoped to for this call: the union of the `dags` of the
    /// grants naming them that allow it, or `None` (every record) when one of those
    /// grants has no `dags`. A grant that does not allow the call cannot widen it.
    pub fn dag_scope(&self, who: &Principal, call: &RedcapCall) -> Option<Arc<BTreeSet<String>>> {
        if !self.any_dags {
            return None;
        }
        let mut allowing = self.grants.iter().filter(|g| {
            g.applies_to(who)
                && g.permissions
                    .iter()
                    .any(|p| p.allows(call.content, call.operation))
        });
        let first = allowing.next()?.dags.clone()?;
        let mut union: Option<BTreeSet<String>> = None;
        for g in allowing {
            let d = g.dags.as_ref()?;
            union
                .get_or_insert_with(|| (*first).clone())
                .extend(d.iter().cloned());
        }
        Some(union.map_or(first, Arc::new))
    }

    /// True when a grant naming `who` allows `user` export by name (`user:export` or
    /// `user:*`), not only through a wildcard content: the list of the project's users
    /// is then shown to callers whose data export rights are restricted.
    pub fn names_user_export(&self, who: &Principal) -> bool {
        self.grants.iter().filter(|g| g.applies_to(who)).any(|g| {
            g.permissions
                .iter()
                .any(|p| p.content == "user" && (p.action == "export" || p.action == "*"))
        })
    }

    /// True when some grant names `who` (by user or group), whatever it allows.
    pub fn names(&self, who: &Principal) -> bool {
        self.grants.iter().any(|g| g.applies_to(who))
    }

    /// What `who` may do here, grant by grant (`None` when no grant names them).
    pub fn access(&self, who: &Principal) -> Option<Access> {
        let grants: Vec<GrantAccess> = self
            .grants
            .iter()
            .filter(|g| g.applies_to(who))
            .map(|g| GrantAccess {
                allow: g.allow.clone(),
                dags: g.dags.as_ref().map(|d| d.iter().cloned().collect()),
            })
            .collect();
        if grants.is_empty() {
            return None;
        }
        Some(Access {
            grants,
            export: self.export_rights(who),
        })
    }

    /// Default deny: a grant naming the caller must allow the call; then calls that
    /// change users, roles or DAGs must pass the user rules, every row of them.
    pub fn decide(&self, who: &Principal, call: &RedcapCall, now: u64) -> Decision {
        self.decide_with(who, call, now, false)
    }

    /// `decide`, with the trace of each rule consulted.
    pub fn explain(&self, who: &Principal, call: &RedcapCall, now: u64) -> Decision {
        self.decide_with(who, call, now, true)
    }

    fn decide_with(&self, who: &Principal, call: &RedcapCall, now: u64, explain: bool) -> Decision {
        // `content:operation`, only for the trace and a denial (a `format!` otherwise).
        let perm = || call.permission();
        let mut trace = Trace {
            on: explain,
            lines: Vec::new(),
        };
        let allowed = self.grants.iter().filter(|g| g.applies_to(who)).any(|g| {
            g.permissions
                .iter()
                .any(|p| p.allows(call.content, call.operation))
        });
        if !allowed {
            trace.push(|| format!("grants: no grant for {} allows {}", who.user, perm()));
            return Decision::deny(
                "grants",
                vec![format!(
                    "{} may not {} on this project (no grant allows {})",
                    who.user,
                    call.operation.as_str(),
                    perm()
                )],
                trace.lines,
            );
        }
        trace.push(|| format!("grants: {} allowed for {}", perm(), who.user));
        trace.push(|| match self.export_rights(who) {
            None => "export rights: full (Full Data Set on every instrument)".to_string(),
            Some(r) => format!(
                "export rights: {} (widest per instrument of the grants naming {}; a grant without `export` gives none)",
                r.describe(),
                who.user
            ),
        });
        trace.push(|| match self.dag_scope(who, call) {
            None => "records: every data access group (a grant allowing the call has no `dags`)".to_string(),
            Some(d) => format!(
                "records: scoped to data access groups {} (every grant allowing the call lists dags; their union)",
                d.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        });
        let rows = || {
            let data = call.data.as_deref().unwrap_or(b"");
            user_data::parse(call.format.as_str(), data)
        };
        let outcome = match (call.content, call.operation) {
            ("user", Operation::Delete) => self.users.user_delete(&call.users),
            ("user", Operation::Import) => match rows() {
                Ok(r) => self.users.user_import(&r, now),
                Err(e) => return Decision::unreadable("user_import", e, trace.lines),
            },
            ("userRole", Operation::Import) => match rows() {
                Ok(r) => self.users.role_import(&r),
                Err(e) => return Decision::unreadable("user_role", e, trace.lines),
            },
            ("userRoleMapping", Operation::Import) => match rows() {
                Ok(r) => self.users.role_mapping(&r),
                Err(e) => return Decision::unreadable("user_role_mapping", e, trace.lines),
            },
            ("userDagMapping", Operation::Import) => match rows() {
                Ok(r) => self.users.dag_mapping(&r),
                Err(e) => return Decision::unreadable("user_dag_mapping", e, trace.lines),
            },
            _ => {
                return Decision {
                    allowed: true,
                    rule: "grants",
                    reasons: Vec::new(),
                    effect: Effect::default(),
                    trace: trace.lines,
                    bad_input: false,
                }
            }
        };
        trace.push(|| {
            format!(
                "{}: {} row(s) checked, {}",
                outcome.rule,
                outcome.effect.users.len(),
                if outcome.reasons.is_empty() {
                    "all pass".to_string()
                } else {
                    format!("{} problem(s)", outcome.reasons.len())
                }
            )
        });
        Decision {
            allowed: outcome.reasons.is_empty(),
            rule: outcome.rule,
            reasons: outcome.reasons,
            effect: outcome.effect,
            trace: trace.lines,
            bad_input: false,
        }
    }
}

/// What a caller may do on a project, as the portal shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// Each grant naming the caller.
    pub grants: Vec<GrantAccess>,
    /// Their data export rights (`None`: Full Data Set everywhere).
    pub export: Option<ExportRights>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantAccess {
    pub allow: Vec<String>,
    /// The data access groups whose records it reaches (`None`: every record).
    pub dags: Option<Vec<String>>,
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

    /// True when a grant of `project` names `who` (self-service tokens need one).
    pub fn names(&self, project: &str, who: &Principal) -> bool {
        self.projects.get(project).is_some_and(|p| p.names(who))
    }

    /// The projects some grant of which names `who`, in name order.
    pub fn projects_naming(&self, who: &Principal) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .projects
            .iter()
            .filter(|(_, p)| p.names(who))
            .map(|(n, _)| n.as_str())
            .collect();
        names.sort_unstable();
        names
    }

    /// What `who` may do on `project` (`None`: nothing, or no such project).
    pub fn access(&self, project: &str, who: &Principal) -> Option<Access> {
        self.projects.get(project)?.access(who)
    }

    /// True when some grant of some project names `group`: the only groups a session
    /// needs to keep.
    pub fn names_group(&self, group: &str) -> bool {
        self.projects
            .values()
            .any(|p| p.grants.iter().any(|g| g.groups.iter().any(|x| x == group)))
    }

    /// The caller's restricted export rights on a project (`None`: Full Data Set).
    pub fn export_rights(&self, project: &str, who: &Principal) -> Option<ExportRights> {
        match self.projects.get(project) {
            Some(p) => p.export_rights(who),
            None => Some(ExportRights::none()),
        }
    }

    pub fn names_user_export(&self, project: &str, who: &Principal) -> bool {
        self.projects
            .get(project)
            .is_some_and(|p| p.names_user_export(who))
    }

    /// True when some caller of the project may have restricted export rights or be
    /// scoped to DAGs (the gateway then keeps the project's metadata).
    pub fn keeps_metadata(&self, project: &str) -> bool {
        self.projects
            .get(project)
            .is_some_and(|p| !p.all_full || p.any_dags)
    }

    /// The DAGs a caller is scoped to for a call (`None`: every record). An unknown
    /// project scopes to no DAG at all.
    pub fn dag_scope(
        &self,
        project: &str,
        who: &Principal,
        call: &RedcapCall,
    ) -> Option<Arc<BTreeSet<String>>> {
        match self.projects.get(project) {
            Some(p) => p.dag_scope(who, call),
            None => Some(Arc::new(BTreeSet::new())),
        }
    }

    pub fn decide(&self, project: &str, who: &Principal, call: &RedcapCall) -> Decision {
        match self.projects.get(project) {
            Some(p) => p.decide(who, call, crate::auth::personal::now_unix()),
            None => Decision::deny(
                "grants",
                vec!["the project has no policy".into()],
                Vec::new(),
            ),
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
            export: Some(ExportLevel::Full),
            export_forms: Default::default(),
            dags: None,
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
            let got = p.decide(&w, &call(body), 0).allowed;
            assert_eq!(got, want, "{} {body}", w.user);
        }
    }

    #[test]
    fn switch_needs_explicit_grant() {
        let switch = call("content=dag&action=switch");
        assert!(
            !policy(&["t"], &[], &["*:*"])
                .decide(&who("x", &["t"]), &switch, 0)
                .allowed
        );
        assert!(
            policy(&["t"], &[], &["dag:switch"])
                .decide(&who("x", &["t"]), &switch, 0)
                .allowed
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
