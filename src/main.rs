//! The redcap-gateway command line. All logic lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

// Many small, short-lived allocations per request: mimalloc handles them far better than
// glibc's malloc (measured in docs/PERFORMANCE.md); `alloc.rs` says how it is called.
// Deployments set
// MIMALLOC_PURGE_DELAY=1000 and MIMALLOC_ARENA_EAGER_COMMIT=0 (read before main runs) so
// freed memory goes back to the OS within a second.
#[global_allocator]
static ALLOC: redcap_gateway::alloc::Mimalloc = redcap_gateway::alloc::Mimalloc;
use redcap_gateway::config::{Config, LogFormat};
use redcap_gateway::reload::Live;
use redcap_gateway::server::{self, Gateway};

#[derive(Parser)]
#[command(
    name = "redcap-gateway",
    version,
    about = "An authenticating, policy-enforcing proxy for the REDCap API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a config file and explain every problem.
    CheckConfig { file: PathBuf },
    /// Personal tokens for clients that cannot send a Bearer header.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Check an audit log's hash chain (with its rotated files) and name the first
    /// broken line.
    VerifyAudit {
        file: PathBuf,
        /// Environment variable holding the HMAC key, if the chain is keyed.
        #[arg(long)]
        hmac_key_env: Option<String>,
    },
    /// Test a policy before deploying it.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Start with an embedded fake REDCap and a dev JWT issuer (the quick start).
    Dev {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue a token for a user and project; it is printed once and stored as a hash.
    Issue {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        user: String,
        #[arg(long)]
        project: String,
        /// Groups the token's holder is in (repeatable), for group grants.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Last valid day, YYYY-MM-DD (default: personal_tokens.max_lifetime from now).
        #[arg(long)]
        expires: Option<String>,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// List issued tokens (never the tokens themselves).
    List {
        #[arg(long)]
        config: PathBuf,
    },
    /// Revoke a token by id; the running gateway stops accepting it on its next reload.
    Revoke {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
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

fn policy_command(cmd: PolicyCommand) -> Result<bool, String> {
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
    let policy = ProjectPolicy::from_config(p)?;
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

fn verify_audit(file: &std::path::Path, key_env: Option<&str>) -> ExitCode {
    use redcap_gateway::audit::{chain, chain_files};
    let key = match key_env {
        Some(name) => match std::env::var(name) {
            Ok(k) => Some(redcap_gateway::secret::Secret::new(k)),
            Err(_) => {
                eprintln!("error: environment variable {name} is not set");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let mut files = Vec::new();
    for p in chain_files(file) {
        match std::fs::read(&p) {
            Ok(b) => files.push((
                p.display().to_string(),
                String::from_utf8_lossy(&b).into_owned(),
            )),
            Err(e) => {
                eprintln!("error: {}: {e}", p.display());
                return ExitCode::from(2);
            }
        }
    }
    match chain::verify(&files, key.as_ref()) {
        Ok(v) => {
            println!(
                "OK: {} records in {} file(s), chain intact{}",
                v.records,
                files.len(),
                if v.starts_mid_chain {
                    " (starts after older files were rotated away)"
                } else {
                    ""
                }
            );
            ExitCode::SUCCESS
        }
        Err(b) => {
            println!("BROKEN at {}:{}: {}", b.file, b.line, b.reason);
            ExitCode::from(1)
        }
    }
}

fn token_command(cmd: TokenCommand) -> Result<(), String> {
    use redcap_gateway::auth::personal;
    let load = |path: &PathBuf| -> Result<Config, String> {
        let c = redcap_gateway::gateway::load_config(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if c.personal_tokens.is_none() {
            return Err(format!(
                "{}: has no [personal_tokens] section",
                path.display()
            ));
        }
        Ok(c)
    };
    match cmd {
        TokenCommand::Issue {
            config,
            user,
            project,
            groups,
            expires,
            note,
        } => {
            let c = load(&config)?;
            if !c.projects.contains_key(&project) {
                return Err(format!("unknown project {project:?}"));
            }
            let pt = c.personal_tokens.as_ref().ok_or("no [personal_tokens]")?;
            let (token, rec) =
                personal::issue(pt, &user, &project, groups, expires.as_deref(), &note)?;
            let expires = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(rec.expires_at),
            );
            eprintln!(
                "issued {} for {} on project {} (expires {expires}); shown once:",
                rec.id, rec.user, rec.project
            );
            println!("{}", token.expose());
            Ok(())
        }
        TokenCommand::List { config } => {
            let c = load(&config)?;
            let pt = c.personal_tokens.as_ref().ok_or("no [personal_tokens]")?;
            let now = personal::now_unix();
            println!(
                "{:<16} {:<20} {:<20} {:<21} note",
                "id", "user", "project", "expires"
            );
            for t in personal::list(pt)? {
                let exp = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.expires_at),
                );
                let state = if t.expires_at <= now {
                    " (expired)"
                } else {
                    ""
                };
                println!(
                    "{:<16} {:<20} {:<20} {exp}{state} {}",
                    t.id, t.user, t.project, t.note
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { config, id } => {
            let c = load(&config)?;
            let pt = c.personal_tokens.as_ref().ok_or("no [personal_tokens]")?;
            if personal::revoke(pt, &id)? {
                println!("revoked {id}");
                Ok(())
            } else {
                Err(format!("no token with id {id}"))
            }
        }
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn serve(live: Arc<Live>) -> Result<(), Box<dyn std::error::Error>> {
    let (cfg, poll) = {
        let g = live.gateway();
        (g.config.server.clone(), g.config.vault.reload_interval.0)
    };
    // Reload triggers first: SIGHUP's default action would end the process.
    #[cfg(unix)]
    live.spawn_sighup()?;
    live.spawn_watcher(poll);
    let listeners = server::bind_serving(cfg.listen, server::workers(&cfg))?;
    let addr = listeners[0].local_addr()?;
    tracing::info!(addr = %addr, sockets = listeners.len(), "serving REDCap API");
    let (tx, rx) = tokio::sync::watch::channel(false);
    if let Some(admin) = cfg.admin_listen {
        let l = tokio::net::TcpListener::bind(admin).await?;
        tracing::info!(addr = %admin, "admin listener (metrics, healthz, readyz)");
        let mut rx = rx.clone();
        tokio::spawn(server::run_admin(l, live.clone(), async move {
            let _ = rx.wait_for(|v| *v).await;
        }));
    }
    let sig = async move {
        shutdown_signal().await;
        let _ = tx.send(true);
    };
    server::run_live(listeners, live, sig).await?;
    drop(rx);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::VerifyAudit { file, hmac_key_env } = &cli.command {
        return verify_audit(file, hmac_key_env.as_deref());
    }
    if let Command::Policy { command } = cli.command {
        return match policy_command(command) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Command::Token { command } = cli.command {
        return match token_command(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    rt.block_on(async move {
        match cli.command {
            Command::Token { .. } | Command::Policy { .. } | Command::VerifyAudit { .. } => {
                ExitCode::SUCCESS
            }
            Command::CheckConfig { file } => match redcap_gateway::gateway::load_config(&file) {
                // Everything but network reachability: keys and REDCap are not contacted.
                Ok(c) => match redcap_gateway::http_client::ClientHandle::new(
                    &redcap_gateway::http_client::ClientOptions::of(&c.upstream),
                ) {
                    Ok(_) => {
                        println!(
                            "{}: OK ({} project(s), {} issuer(s))",
                            file.display(),
                            c.projects.len(),
                            c.auth.issuers.len()
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("{}: invalid config:\n  - upstream: {e}", file.display());
                        ExitCode::from(2)
                    }
                },
                Err(e) => {
                    eprintln!("{}: invalid config:", file.display());
                    e.to_string().lines().for_each(|l| eprintln!("  - {l}"));
                    ExitCode::from(2)
                }
            },
            Command::Serve { config } => {
                let c = match redcap_gateway::gateway::load_config(&config) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("{}: invalid config:", config.display());
                        e.to_string().lines().for_each(|l| eprintln!("  - {l}"));
                        return ExitCode::from(2);
                    }
                };
                init_logs(c.server.log_format);
                let gw = match Gateway::build(c, Vec::new()).await {
                    Ok(g) => Arc::new(g),
                    Err(errs) => {
                        errs.iter().for_each(|e| eprintln!("error: {e}"));
                        return ExitCode::from(2);
                    }
                };
                match serve(Live::new(gw, Some(config))).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Command::Dev { listen } => {
                init_logs(LogFormat::Text);
                let env = match redcap_gateway::dev::DevEnv::start_with_portal(&listen).await {
                    Ok(e) => e,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                let url = format!("http://{}", env.gateway.config.server.listen);
                let audit = env.dir.path().join("audit.log").display().to_string();
                let jwt = env
                    .issuer
                    .token("dev-user", &[redcap_gateway::dev::DEV_GROUP]);
                let config = env.config_path();
                println!(
                    "{}",
                    redcap_gateway::dev::banner(&url, &jwt, &audit, &config.display().to_string())
                );
                let analyst = env
                    .issuer
                    .token("dev-analyst", &[redcap_gateway::dev::DEV_DEID_GROUP]);
                let site = env
                    .issuer
                    .token("dev-site-a", &[redcap_gateway::dev::DEV_SITE_GROUP]);
                println!(
                    "{}",
                    redcap_gateway::dev::analyst_banner(&url, &analyst, &site)
                );
                println!("{}", redcap_gateway::dev::portal_banner(&url));
                match serve(Live::new(env.gateway.clone(), Some(config))).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
        }
    })
}
