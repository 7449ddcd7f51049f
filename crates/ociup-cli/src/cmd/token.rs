//! `ociup token create|list|revoke`: the bearer tokens `ociup serve` accepts.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use ociup_serve::tokens::{self, Role, TokenFile};

use crate::output;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token: printed once on stdout, only its SHA-256 kept in the tokens file.
    ///
    /// Example: ociup token create ci --role requester --file /etc/ociup/tokens.json
    Create(CreateArgs),
    /// List the tokens (name, role, when made); the tokens themselves are not kept.
    List(ListArgs),
    /// Revoke a token: `ociup serve` refuses it from its next request on (it reads the file
    /// again when it changes).
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct FileArg {
    /// The tokens file (JSON, written atomically with mode 0600).
    #[arg(long, env = "OCIUP_TOKENS", value_name = "TOKENS")]
    pub file: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// Resolve, status, history, verify.
    Requester,
    /// Also register, unregister, upgrade all, gc.
    Admin,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Who holds the token: recorded as the actor of what it does (1 to 64 of letters,
    /// digits, '.', '_', '@', '-').
    pub name: String,
    /// What the token may do.
    #[arg(long, value_enum)]
    pub role: RoleArg,
    #[command(flatten)]
    pub file: FileArg,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print a JSON array: name, role, created.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub file: FileArg,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The token's name.
    pub name: String,
    #[command(flatten)]
    pub file: FileArg,
}

pub fn run(c: TokenCommand) -> Result<()> {
    match c {
        TokenCommand::Create(a) => {
            let role = match a.role {
                RoleArg::Requester => Role::Requester,
                RoleArg::Admin => Role::Admin,
            };
            let now = ociup_core::time::rfc3339(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            );
            let token = tokens::create(&a.file.file, &a.name, role, &now)
                .with_context(|| format!("creating token {}", a.name))?;
            eprintln!(
                "ociup: token {} ({}) stored in {}; it is shown only now",
                a.name,
                role.as_str(),
                a.file.file.display()
            );
            output::line(token)?;
        }
        TokenCommand::List(a) => {
            let file = TokenFile::load(&a.file.file)?;
            if a.json {
                let list: Vec<_> = file
                    .tokens
                    .iter()
                    .map(|t| {
                        serde_json::json!({"name": t.name, "role": t.role.as_str(), "created": t.created})
                    })
                    .collect();
                return output::json(&serde_json::Value::Array(list));
            }
            for t in &file.tokens {
                output::line(format!(
                    "{:<24} {:<10} {}",
                    t.name,
                    t.role.as_str(),
                    t.created
                ))?;
            }
        }
        TokenCommand::Revoke(a) => {
            let t = tokens::revoke(&a.file.file, &a.name)
                .with_context(|| format!("revoking token {}", a.name))?;
            output::line(format!("revoked {} ({})", t.name, t.role.as_str()))?;
        }
    }
    Ok(())
}
