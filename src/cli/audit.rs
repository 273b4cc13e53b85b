//! `verify-audit`: checks an audit log's hash chain.

use std::process::ExitCode;

pub fn verify_audit(file: &std::path::Path, key_env: Option<&str>) -> ExitCode {
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
            for (file, line) in &v.torn {
                println!(
                    "note: {file}:{line} was cut short by a crash; the notice after it continues the chain"
                );
            }
            if let Some(len) = v.unfinished_tail {
                println!(
                    "note: the last line ({len} bytes) is unfinished: being written, or cut short by a crash the gateway has not restarted from"
                );
            }
            ExitCode::SUCCESS
        }
        Err(b) => {
            println!("BROKEN at {}:{}: {}", b.file, b.line, b.reason);
            ExitCode::from(1)
        }
    }
}
