//! The redcap-gateway command line: parses it and dispatches to `cli/`. All logic lives in
//! the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

// Many small, short-lived allocations per request: mimalloc handles them far better than
// glibc's malloc (measured in docs/PERFORMANCE.md); `alloc.rs` says how it is called.
// Deployments set
// MIMALLOC_PURGE_DELAY=1000 and MIMALLOC_ARENA_EAGER_COMMIT=0 (read before main runs) so
// freed memory goes back to the OS within a second.
#[global_allocator]
static ALLOC: redcap_gateway::alloc::Mimalloc = redcap_gateway::alloc::Mimalloc;

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
        command: cli::token::TokenCommand,
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
        command: cli::policy::PolicyCommand,
    },
    /// Start with an embedded fake REDCap and a dev JWT issuer (the quick start).
    #[cfg(feature = "dev")]
    Dev {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let on_failure = |e: String| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    };
    let run = |f: std::pin::Pin<Box<dyn std::future::Future<Output = ExitCode>>>| {
        match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(f),
            Err(e) => {
                eprintln!("error: cannot start the runtime: {e}");
                ExitCode::FAILURE
            }
        }
    };
    match cli.command {
        Command::VerifyAudit { file, hmac_key_env } => {
            cli::audit::verify_audit(&file, hmac_key_env.as_deref())
        }
        Command::Policy { command } => match cli::policy::policy_command(command) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => on_failure(e),
        },
        Command::Token { command } => {
            cli::token::token_command(command).map_or_else(on_failure, |()| ExitCode::SUCCESS)
        }
        // Building the upstream's TLS setup needs no runtime, but the check runs in one
        // as serve does.
        Command::CheckConfig { file } => {
            run(Box::pin(async move { cli::run::check_config(&file) }))
        }
        Command::Serve { config } => run(Box::pin(cli::run::serve_config(config))),
        #[cfg(feature = "dev")]
        Command::Dev { listen } => run(Box::pin(async move { cli::run::dev(&listen).await })),
    }
}
