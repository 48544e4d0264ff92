//! Users kept in a database: `warden user add|remove|list`, and loading them into the
//! registrar. Only HA1 values are stored (RFC 3261 22.4, RFC 8760); passwords come from stdin.
//!
//! A node alone keeps them in its own SQLite (`database.path`). With `[cluster]` they live
//! in the database the nodes share (`cdr.url`), and an edit is announced on Redis so every
//! node reads them again within a second.

use std::io::BufRead;

use clap::Subcommand;
use sqlx::{Row, SqlitePool};

use super::Credentials;
use crate::cdr::store::Store;
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

const SELECT: &str = "SELECT username, ha1_md5, ha1_sha256 FROM users";
const UPSERT: &str = "INSERT INTO users (username, ha1_md5, ha1_sha256, created_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (username) DO UPDATE SET ha1_md5 = excluded.ha1_md5, ha1_sha256 = excluded.ha1_sha256";
const DELETE: &str = "DELETE FROM users WHERE username = $1";

fn user_of<R: Row>(row: &R) -> sqlx::Result<(String, Credentials)>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok((
        row.try_get("username")?,
        Credentials {
            ha1_md5: Some(row.try_get("ha1_md5")?),
            ha1_sha256: Some(row.try_get("ha1_sha256")?),
        },
    ))
}

/// Every user stored in a node's own database, with their HA1 values.
pub async fn load(pool: &SqlitePool) -> anyhow::Result<Vec<(String, Credentials)>> {
    let rows = sqlx::query(SELECT).fetch_all(pool).await?;
    Ok(rows.iter().map(user_of).collect::<sqlx::Result<_>>()?)
}

/// Every user of the cluster, from the database the nodes share.
pub async fn load_shared(store: &Store) -> anyhow::Result<Vec<(String, Credentials)>> {
    let rows = sqlx::query(SELECT)
        .fetch_all(store.migrated_pool().await?)
        .await?;
    Ok(rows.iter().map(user_of).collect::<sqlx::Result<_>>()?)
}

/// Where `warden user` writes: the node's own SQLite, or the cluster's database.
enum Place {
    Local(SqlitePool),
    Shared(Store),
}

impl Place {
    async fn open(config: &Config) -> anyhow::Result<Place> {
        Ok(match &config.cluster {
            Some(_) => Place::Shared(Store::new(&config.cdr_url())?),
            None => Place::Local(super::store::open(&config.database.path).await?),
        })
    }

    fn name(&self, config: &Config) -> String {
        match self {
            Place::Local(_) => config.database.path.display().to_string(),
            Place::Shared(store) => format!("the cluster's database {}", store.display),
        }
    }

    async fn put(&self, username: &str, c: &Credentials) -> anyhow::Result<()> {
        let (md5, sha256) = (
            c.ha1_md5.clone().unwrap_or_default(),
            c.ha1_sha256.clone().unwrap_or_default(),
        );
        let now = crate::clock::unix_now() as i64;
        match self {
            Place::Local(pool) => {
                let q = sqlx::query(UPSERT).bind(username).bind(md5).bind(sha256);
                q.bind(now).execute(pool).await?;
            }
            Place::Shared(store) => {
                let q = sqlx::query(UPSERT).bind(username).bind(md5).bind(sha256);
                q.bind(now).execute(store.migrated_pool().await?).await?;
            }
        }
        Ok(())
    }

    async fn remove(&self, username: &str) -> anyhow::Result<u64> {
        Ok(match self {
            Place::Local(pool) => sqlx::query(DELETE)
                .bind(username)
                .execute(pool)
                .await?
                .rows_affected(),
            Place::Shared(store) => sqlx::query(DELETE)
                .bind(username)
                .execute(store.migrated_pool().await?)
                .await?
                .rows_affected(),
        })
    }

    async fn users(&self) -> anyhow::Result<Vec<(String, Credentials)>> {
        match self {
            Place::Local(pool) => load(pool).await,
            Place::Shared(store) => load_shared(store).await,
        }
    }

    async fn close(self) {
        match self {
            Place::Local(pool) => pool.close().await,
            Place::Shared(store) => store.close().await,
        }
    }
}

/// Carry out a `warden user` command against the configured database; what it prints.
pub async fn run(config: &Config, command: UserCommand) -> anyhow::Result<String> {
    let place = Place::open(config).await?;
    let db = place.name(config);
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
            place.put(&username, &c).await?;
            format!(
                "user {username} stored in {db} (realm {:?}); {}\n",
                config.registrar.realm,
                announce(config).await
            )
        }
        UserCommand::Remove { username } => {
            let gone = place.remove(&username).await?;
            anyhow::ensure!(gone > 0, "no user {username:?} in {db}");
            format!(
                "user {username} removed from {db}; {}\n",
                announce(config).await
            )
        }
        UserCommand::List => {
            let mut names: Vec<String> = place.users().await?.into_iter().map(|(u, _)| u).collect();
            names.sort();
            names.iter().map(|n| format!("{n}\n")).collect()
        }
    };
    place.close().await;
    Ok(answer)
}

/// Tell the running nodes the users changed, and what the operator should know about it.
async fn announce(config: &Config) -> String {
    let Some(cluster) = &config.cluster else {
        return "`warden reload` has a running server read it".into();
    };
    match crate::cluster::edits::announce_users_changed(&cluster.redis_url).await {
        Ok(()) => "every node reads it within a second".into(),
        Err(e) => format!(
            "Redis did not take the announcement ({e}): the nodes read it when they reconnect \
             to Redis, or at `warden reload`"
        ),
    }
}
