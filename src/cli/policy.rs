//! `policy explain`: how a call would be read and decided, before a config is deployed.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Show how a call would be read and decided: the parsed call, each rule consulted,
    /// and the decision with every reason.
    Explain {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        user: String,
        /// Comma-separated groups.
        #[arg(long, default_value = "")]
        groups: String,
        #[arg(long)]
        project: String,
        /// The urlencoded body, as a client would send it.
        #[arg(long)]
        body: String,
        /// The project's metadata as REDCap exports it (`content=metadata&format=json`):
        /// with it, the field set a restricted caller's export would ask REDCap for.
        #[arg(long)]
        metadata: Option<PathBuf>,
    },
}

pub fn policy_command(cmd: PolicyCommand) -> Result<bool, String> {
    use redcap_gateway::auth::{CredentialKind, Principal};
    use redcap_gateway::policy::ProjectPolicy;
    use redcap_gateway::redcap::{php_form, PhpLimits, RedcapCall};
    let PolicyCommand::Explain {
        config,
        user,
        groups,
        project,
        body,
        metadata,
    } = cmd;
    let c = redcap_gateway::gateway::load_config(&config)
        .map_err(|e| format!("{}: {e}", config.display()))?;
    let p = c
        .projects
        .get(&project)
        .ok_or_else(|| format!("unknown project {project:?}"))?;
    let policy = ProjectPolicy::from_config(p).map_err(|e| e.join("\n"))?;
    let limits = PhpLimits {
        max_input_vars: c.limits.max_input_vars,
        max_input_nesting_level: c.limits.max_input_nesting_level,
    };
    let form = php_form::parse_urlencoded(body.as_bytes(), limits)
        .map_err(|e| format!("body: {e} (400)"))?;
    let call = RedcapCall::from_form(&form).map_err(|e| format!("body: {e} (400)"))?;
    let who = Principal {
        user,
        groups: groups
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect(),
        issuer: "policy-explain".into(),
        credential: CredentialKind::Jwt,
    };
    println!(
        "call:      content={} action={} -> {}",
        call.content,
        call.action.as_deref().unwrap_or(""),
        call.permission()
    );
    println!(
        "formats:   format={} returnFormat={}",
        call.format.as_str(),
        call.return_format.as_str()
    );
    if !call.users.is_empty() {
        println!("users:     {}", call.users.join(", "));
    }
    if let Some(d) = &call.data {
        println!("data:      {} bytes", d.len());
    }
    println!("caller:    {} groups=[{}]", who.user, who.groups.join(", "));
    let d = policy.explain(&who, &call, redcap_gateway::auth::personal::now_unix());
    for t in &d.trace {
        println!("consulted: {t}");
    }
    for c in &d.effect.changes {
        println!("change:    {c}");
    }
    if d.allowed {
        if let Err(why) = explain_export(&policy, &who, &call, &form.post, metadata.as_deref())? {
            println!("decision:  DENY by export_rights ({why})");
            return Ok(false);
        }
        println!("decision:  ALLOW");
    } else {
        let status = if d.bad_input { 400 } else { 403 };
        println!("decision:  DENY by {} ({status})", d.rule);
        for r in &d.reasons {
            println!("  - {r}");
        }
    }
    Ok(d.allowed)
}

/// What the caller's export rights make of an allowed call: `Err` with the status and
/// reason of a refusal.
fn explain_export(
    policy: &redcap_gateway::policy::ProjectPolicy,
    who: &redcap_gateway::auth::Principal,
    call: &redcap_gateway::redcap::RedcapCall,
    post: &redcap_gateway::redcap::php_form::PhpArray,
    metadata: Option<&std::path::Path>,
) -> Result<Result<(), String>, String> {
    use redcap_gateway::policy::export::{self, Screen};
    use redcap_gateway::redcap::metadata::{ProjectMetadata, Refusal};
    let Some(rights) = policy.export_rights(who) else {
        return Ok(Ok(()));
    };
    let refused = |r: Refusal| match r {
        Refusal::Forbidden(m) => format!("403): {m}"),
        Refusal::BadRequest(m) => format!("400): {m}"),
    };
    let screen = match export::screen(call, post, &rights, policy.names_user_export(who)) {
        Ok(s) => s,
        Err(r) => return Ok(Err(refused(r))),
    };
    if screen == Screen::Pass {
        return Ok(Ok(()));
    }
    let Some(path) = metadata else {
        println!("fields:    decided on the project's metadata: give it with --metadata FILE");
        return Ok(Ok(()));
    };
    let json = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let meta = ProjectMetadata::from_json(&json, b"[]", None)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let view = meta.view(&rights);
    match export::rule(&screen, call, post, &meta, &view) {
        Ok(Some(plan)) => {
            println!("fields:    {}", plan.fields);
            for d in &plan.dropped {
                println!("dropped:   {d}");
            }
            Ok(Ok(()))
        }
        Ok(None) => Ok(Ok(())),
        Err(r) => Ok(Err(refused(r))),
    }
}
