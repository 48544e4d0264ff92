//! The admin HTTP API (axum): health, the jCard that 608 responses point at, and the
//! screening operations. Anything touching live state is a message to the server's loop.

pub mod jcard;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::screening::admin::Command;

/// A command for the server loop and where its answer goes.
pub type Ask = (Command, oneshot::Sender<Result<serde_json::Value, String>>);

#[derive(Clone)]
struct Shared {
    jcard: Arc<jcard::Jcard>,
    token: Option<String>,
    ask: mpsc::Sender<Ask>,
}

/// Serve the API on `addr` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    token: Option<String>,
    jcard: Arc<jcard::Jcard>,
    ask: mpsc::Sender<Ask>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let shared = Shared { jcard, token, ask };
    let operations = Router::new()
        .route("/screening/stats", get(stats))
        .route("/screening/users", get(users))
        .route("/screening/users/{user}", delete(remove_user))
        .route("/screening/users/{user}/reset", post(reset_user))
        .route("/screening/lists", get(lists).post(add_entry))
        .route(
            "/screening/lists/{list}/{kind}/{value}",
            delete(remove_entry),
        )
        .layer(middleware::from_fn_with_state(shared.clone(), authorize));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/jcard", get(signed_jcard))
        .route("/jcard/cert.pem", get(jcard_certificate))
        .merge(operations)
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("admin.listen {addr}: {e}"))?;
    tracing::info!(%addr, "admin API listening");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin API stopped");
        }
    }))
}

/// Operations need the token when one is configured (the jCard and health are public).
async fn authorize(State(s): State<Shared>, request: Request, next: Next) -> Response {
    if let Some(token) = &s.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compare in constant time: the token is a password.
        let ok = given.is_some_and(|g| {
            g.len() == token.len()
                && g.bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                "admin.token required (Authorization: Bearer ...)\n",
            )
                .into_response();
        }
    }
    next.run(request).await
}

async fn signed_jcard(State(s): State<Shared>) -> Response {
    match s.jcard.signed(crate::server::unix_now()) {
        Ok(jws) => ([(header::CONTENT_TYPE, "application/jose")], jws).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn jcard_certificate(State(s): State<Shared>) -> Response {
    match &s.jcard.own_certificate {
        Some(pem) => (
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            pem.clone(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "the jCard is signed with the configured key; see its certificate_url\n",
        )
            .into_response(),
    }
}

/// Hand a command to the server loop and answer with what it says.
async fn ask(s: &Shared, command: Command) -> Response {
    let (tx, rx) = oneshot::channel();
    if s.ask.send((command, tx)).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match rx.await {
        Ok(Ok(value)) => Json(value).into_response(),
        Ok(Err(e)) if e.starts_with("not found") => (StatusCode::NOT_FOUND, e).into_response(),
        Ok(Err(e)) => (StatusCode::BAD_REQUEST, e).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}

async fn stats(State(s): State<Shared>) -> Response {
    ask(&s, Command::Stats).await
}

async fn users(State(s): State<Shared>) -> Response {
    ask(&s, Command::Users).await
}

async fn reset_user(State(s): State<Shared>, Path(user): Path<String>) -> Response {
    ask(&s, Command::Reset { user }).await
}

async fn remove_user(State(s): State<Shared>, Path(user): Path<String>) -> Response {
    ask(&s, Command::Remove { user }).await
}

async fn lists(State(s): State<Shared>) -> Response {
    ask(&s, Command::Lists).await
}

#[derive(Deserialize)]
struct NewEntry {
    list: String,
    kind: String,
    value: String,
    #[serde(default)]
    note: String,
}

async fn add_entry(State(s): State<Shared>, Json(e): Json<NewEntry>) -> Response {
    let command = Command::Add {
        list: e.list,
        kind: e.kind,
        value: e.value,
        note: e.note,
    };
    ask(&s, command).await
}

async fn remove_entry(
    State(s): State<Shared>,
    Path((list, kind, value)): Path<(String, String, String)>,
) -> Response {
    ask(&s, Command::RemoveEntry { list, kind, value }).await
}
