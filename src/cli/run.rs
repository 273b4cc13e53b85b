//! `serve`, `check-config` and `dev`: the commands that load a config and run a gateway.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use redcap_gateway::config::{Config, LogFormat};
#[cfg(feature = "dev")]
use redcap_gateway::dev::{self, DevEnv};
use redcap_gateway::gateway::{load_config, Gateway};
use redcap_gateway::http_client::{ClientHandle, ClientOptions};
use redcap_gateway::reload::Live;
use redcap_gateway::{admin, server};

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

pub async fn serve(live: Arc<Live>) -> Result<(), Box<dyn std::error::Error>> {
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
        tokio::spawn(admin::run(l, live.clone(), async move {
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

/// `check-config FILE`: every problem in one list (exit 2), without contacting the
/// network (keys and REDCap are not fetched).
pub fn check_config(file: &Path) -> ExitCode {
    let c = match load(file) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match ClientHandle::new(&ClientOptions::of(&c.upstream)) {
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
    }
}

/// `serve --config FILE`.
pub async fn serve_config(config: PathBuf) -> ExitCode {
    let c = match load(&config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logs(c.server.log_format);
    let gw = match Gateway::build(c, Vec::new()).await {
        Ok(g) => Arc::new(g),
        Err(errs) => {
            errs.iter().for_each(|e| eprintln!("error: {e}"));
            return ExitCode::from(2);
        }
    };
    exit(serve(Live::new(gw, Some(config))).await)
}

/// `dev`: the embedded fake REDCap, dev issuer and sign-in service, and the banner with
/// ready JWTs and commands.
#[cfg(feature = "dev")]
pub async fn dev(listen: &str) -> ExitCode {
    init_logs(LogFormat::Text);
    let env = match DevEnv::start_with_portal(listen).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let url = format!("http://{}", env.gateway.config.server.listen);
    let audit = env.dir.path().join("audit.log").display().to_string();
    let jwt = env.issuer.token("dev-user", &[dev::DEV_GROUP]);
    let config = env.config_path();
    println!(
        "{}",
        dev::banner(&url, &jwt, &audit, &config.display().to_string())
    );
    let analyst = env.issuer.token("dev-analyst", &[dev::DEV_DEID_GROUP]);
    let site = env.issuer.token("dev-site-a", &[dev::DEV_SITE_GROUP]);
    println!("{}", dev::analyst_banner(&url, &analyst, &site));
    println!("{}", dev::portal_banner(&url));
    exit(serve(Live::new(env.gateway.clone(), Some(config))).await)
}

/// A config file loaded and checked whole, or the exit code after listing its problems.
fn load(file: &Path) -> Result<Config, ExitCode> {
    load_config(file).map_err(|e| {
        eprintln!("{}: invalid config:", file.display());
        e.to_string().lines().for_each(|l| eprintln!("  - {l}"));
        ExitCode::from(2)
    })
}

fn exit(served: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
