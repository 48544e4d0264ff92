//! Users kept in the database: `warden user add|remove|list`, and loading them into the
//! registrar. Only HA1 values are stored (RFC 3261 22.4, RFC 8760); passwords come from stdin.

use std::io::BufRead;

use clap::Subcommand;
use sqlx::{Row, SqlitePool};

use super::Credentials;
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user or change their password (read from the first line of stdin, so it never
    /// shows in the process list or the shell history).
    Add { username: String },
    /// Remove a user.
    Remove { username: String },
    /// The users in the database (configured users are in the config file).
    List,
}

/// Every stored user with their HA1 values.
pub async fn load(pool: &SqlitePool) -> anyhow::Result<Vec<(String, Credentials)>> {
    let rows = sqlx::query("SELECT username, ha1_md5, ha1_sha256 FROM users")
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("username")?,
                Credentials {
                    ha1_md5: Some(row.try_get("ha1_md5")?),
                    ha1_sha256: Some(row.try_get("ha1_sha256")?),
                },
            ))
        })
        .collect()
}

/// Carry out a `warden user` command against the configured database; what it prints.
pub async fn run(config: &Config, command: UserCommand) -> anyhow::Result<String> {
    let pool = super::store::open(&config.database.path).await?;
    let db = config.database.path.display();
    let answer = match command {
        UserCommand::Add { username } => {
            anyhow::ensure!(
                !username.is_empty() && !username.contains(['@', ':', ' ']),
                "user name {username:?}: expected the user part of an address, without @, : or spaces"
            );
            let mut password = String::new();
            std::io::stdin().lock().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(
                password.len() >= 8,
                "the password (first line of stdin) must have 8 characters or more"
            );
            let c = Credentials::from_password(&username, &config.registrar.realm, password);
            sqlx::query(
                "INSERT INTO users (username, ha1_md5, ha1_sha256, created_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (username) DO UPDATE SET ha1_md5 = excluded.ha1_md5, ha1_sha256 = excluded.ha1_sha256",
            )
            .bind(&username)
            .bind(c.ha1_md5.unwrap_or_default())
            .bind(c.ha1_sha256.unwrap_or_default())
            .bind(crate::clock::unix_now() as i64)
            .execute(&pool)
            .await?;
            format!(
                "user {username} stored in {db} (realm {:?}); `warden reload` has a running server read it\n",
                config.registrar.realm
            )
        }
        UserCommand::Remove { username } => {
            let gone = sqlx::query("DELETE FROM users WHERE username = ?")
                .bind(&username)
                .execute(&pool)
                .await?
                .rows_affected();
            anyhow::ensure!(gone > 0, "no user {username:?} in {db}");
            format!("user {username} removed from {db}\n")
        }
        UserCommand::List => {
            let mut names: Vec<String> = load(&pool).await?.into_iter().map(|(u, _)| u).collect();
            names.sort();
            names.iter().map(|n| format!("{n}\n")).collect()
        }
    };
    pool.close().await;
    Ok(answer)
}
