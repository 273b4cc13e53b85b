//! `token issue|list|revoke`: personal tokens, from the command line.

use std::path::PathBuf;

use clap::Subcommand;
use redcap_gateway::config::Config;

#[derive(Subcommand)]
pub enum TokenCommand {
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

pub fn token_command(cmd: TokenCommand) -> Result<(), String> {
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
