//! The admin HTTP API (axum): health, metrics, live calls, registrations, call records,
//! reload, the jCard 608 responses point at, and the screening operations. Anything
//! touching live state is a message to the server's loop; call records are read from the
//! database directly.

pub mod events;
pub mod jcard;
pub mod listener;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::cdr::store::{Filter, Store};
use crate::screening::admin::Command as ScreeningCommand;

/// What the API asks of the server loop.
#[derive(Debug)]
pub enum Command {
    Screening(ScreeningCommand),
    /// The live calls.
    Calls,
    /// End a call (its number in the call list).
    Hangup(u64),
    Registrations,
    /// Probed gateways and their state.
    Gateways,
    /// Reload the dialplan from its file.
    Reload,
    /// The figures for /metrics ([`metrics::Snapshot`] as JSON).
    Metrics,
    /// Sources the guard has banned.
    Bans,
    /// Lift a source's ban.
    Unban(std::net::IpAddr),
    /// Place a call (`POST /calls`).
    Originate(Box<crate::core::Originate>),
    /// Act on a live call: a prompt, keys, a transfer.
    Control(u64, crate::core::Control),
}

/// A command for the server loop and where its answer goes.
pub type Ask = (Command, oneshot::Sender<Result<serde_json::Value, String>>);

#[derive(Clone)]
struct Shared {
    jcard: Arc<jcard::Jcard>,
    token: Option<String>,
    ask: mpsc::Sender<Ask>,
    cdrs: Store,
    events: Arc<crate::events::Hub>,
}

/// Serve the API on `addr`, HTTP and HTTPS (with `tls`), until the process ends.
pub async fn serve(
    addr: SocketAddr,
    tls: tokio_rustls::TlsAcceptor,
    token: Option<String>,
    jcard: Arc<jcard::Jcard>,
    ask: mpsc::Sender<Ask>,
    records: Store,
    events: Arc<crate::events::Hub>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let shared = Shared {
        jcard,
        token,
        ask,
        cdrs: records,
        events,
    };
    let operations = Router::new()
        .route("/metrics", get(prometheus))
        .route("/calls", get(calls).post(originate))
        .route("/calls/{id}", delete(hangup))
        .route("/calls/{id}/{action}", post(control))
        .route("/events", get(events::subscribe))
        .route("/registrations", get(registrations))
        .route("/gateways", get(gateways))
        .route("/guard/bans", get(bans))
        .route("/guard/bans/{source}", delete(unban))
        .route("/cdrs", get(cdrs))
        .route("/cdrs/export", get(export_cdrs))
        .route("/reload", post(reload))
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
        .route("/readyz", get(ready))
        .route("/jcard", get(signed_jcard))
        .route("/jcard/cert.pem", get(jcard_certificate))
        .merge(operations)
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("admin.listen {addr}: {e}"))?;
    tracing::info!(%addr, "admin API listening (HTTP and HTTPS)");
    Ok(tokio::spawn(listener::serve(listener, app, tls)))
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
    match s.jcard.signed(crate::clock::unix_now()) {
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
        Ok(Err(e)) if e.starts_with("conflict") => (StatusCode::CONFLICT, e).into_response(),
        Ok(Err(e)) if e.starts_with("unavailable") => {
            (StatusCode::SERVICE_UNAVAILABLE, e).into_response()
        }
        Ok(Err(e)) => (StatusCode::BAD_REQUEST, e).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}

/// Ask the loop for the metrics snapshot.
async fn snapshot(s: &Shared) -> Result<metrics::Snapshot, Response> {
    let (tx, rx) = oneshot::channel();
    let unavailable = || (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    s.ask
        .send((Command::Metrics, tx))
        .await
        .map_err(|_| unavailable())?;
    match rx.await {
        Ok(Ok(value)) => serde_json::from_value(value)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()),
        _ => Err(unavailable()),
    }
}

async fn prometheus(State(s): State<Shared>) -> Response {
    let snapshot = match snapshot(&s).await {
        Ok(x) => x,
        Err(response) => return response,
    };
    match metrics::render(&snapshot) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Ready for traffic: not shutting down (the call records' database being away does not
/// stop calls: their records wait in the journal).
async fn ready(State(s): State<Shared>) -> Response {
    let snapshot = match snapshot(&s).await {
        Ok(x) => x,
        Err(response) => return response,
    };
    let body = serde_json::json!({
        "ready": !snapshot.draining,
        "calls_active": snapshot.calls_active,
        "cdr_database_up": snapshot.cdr_database_up,
        "cdr_spool_bytes": snapshot.cdr_spool_bytes,
    });
    let status = if snapshot.draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

async fn calls(State(s): State<Shared>) -> Response {
    ask(&s, Command::Calls).await
}

async fn hangup(State(s): State<Shared>, Path(id): Path<u64>) -> Response {
    ask(&s, Command::Hangup(id)).await
}

/// `POST /calls`: place a call; 201 with its number and record id at once.
async fn originate(State(s): State<Shared>, body: axum::body::Bytes) -> Response {
    let spec: crate::core::Originate = match serde_json::from_slice(&body) {
        Ok(spec) => spec,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad request: {e}\n")).into_response(),
    };
    let response = ask(&s, Command::Originate(Box::new(spec))).await;
    match response.status() {
        StatusCode::OK => (StatusCode::CREATED, response).into_response(),
        _ => response,
    }
}

/// `POST /calls/{id}/play|dtmf|transfer|record|stop_recording`: act on a live call.
async fn control(
    State(s): State<Shared>,
    Path((id, action)): Path<(u64, String)>,
    body: axum::body::Bytes,
) -> Response {
    let mut fields: serde_json::Value = match body.is_empty() {
        true => serde_json::json!({}),
        false => match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("bad request: {e}\n")).into_response();
            }
        },
    };
    if let Some(map) = fields.as_object_mut() {
        map.insert("action".into(), serde_json::Value::String(action.clone()));
    }
    let control: crate::core::Control = match serde_json::from_value(fields) {
        Ok(c) => c,
        Err(e) => {
            let why = format!(
                "bad request: {action}: {e} (play, dtmf, transfer, record or stop_recording)\n"
            );
            return (StatusCode::BAD_REQUEST, why).into_response();
        }
    };
    ask(&s, Command::Control(id, control)).await
}

async fn registrations(State(s): State<Shared>) -> Response {
    ask(&s, Command::Registrations).await
}

async fn gateways(State(s): State<Shared>) -> Response {
    ask(&s, Command::Gateways).await
}

async fn bans(State(s): State<Shared>) -> Response {
    ask(&s, Command::Bans).await
}

async fn unban(State(s): State<Shared>, Path(source): Path<std::net::IpAddr>) -> Response {
    ask(&s, Command::Unban(source)).await
}

async fn reload(State(s): State<Shared>) -> Response {
    ask(&s, Command::Reload).await
}

/// The CDR export's format: `format=csv`, else JSON.
#[derive(Deserialize)]
struct Format {
    #[serde(default)]
    format: Option<String>,
}

/// The CDR query: `Filter`'s fields as query parameters (`since_ms`, `caller`, `code`,
/// `open`, `limit`...), plus `format`.
async fn cdrs(
    State(s): State<Shared>,
    Query(filter): Query<Filter>,
    Query(q): Query<Format>,
) -> Response {
    let records = match s.cdrs.query(&filter).await {
        Ok(r) => r,
        Err(e) => return database_unavailable(&e),
    };
    match wants_csv(q.format.as_deref()) {
        Ok(true) => {
            let mut text = crate::cdr::record::csv_header();
            for r in &records {
                text.push_str(&r.csv_line());
            }
            ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], text).into_response()
        }
        Ok(false) => Json(
            records
                .iter()
                .map(crate::cdr::Record::to_json)
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(why) => (StatusCode::BAD_REQUEST, why).into_response(),
    }
}

/// The 503 for a record query the database could not answer.
fn database_unavailable(e: &sqlx::Error) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the call record database is unavailable: {e}\n"),
    )
        .into_response()
}

/// A record query's `format`: true for csv, false for json (the default), else why not.
fn wants_csv(format: Option<&str>) -> Result<bool, String> {
    match format {
        Some("csv") => Ok(true),
        None | Some("json") => Ok(false),
        Some(other) => Err(format!("format {other:?}: expected json or csv\n")),
    }
}

/// `GET /cdrs/export`: what `export_cdrs` takes.
#[derive(Debug, Deserialize)]
struct ExportQuery {
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    format: Option<String>,
}

/// Records per database read while exporting (the response streams page by page).
const EXPORT_PAGE: i64 = 1000;

/// Every record received in `[since_ms, until_ms)`, oldest first, streamed as CSV or JSON
/// lines (one record per line), however many there are: for billing.
async fn export_cdrs(State(s): State<Shared>, Query(q): Query<ExportQuery>) -> Response {
    let csv = match wants_csv(q.format.as_deref()) {
        Ok(csv) => csv,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    let (since, until) = (q.since_ms.unwrap_or(0), q.until_ms.unwrap_or(i64::MAX));
    // The first page is read before answering, so an unavailable database is a 503.
    let first = match s.cdrs.export_page(since, until, None, EXPORT_PAGE).await {
        Ok(page) => page,
        Err(e) => return database_unavailable(&e),
    };
    let store = s.cdrs.clone();
    let header_line = csv.then(crate::cdr::record::csv_header);
    let pages = futures_util::stream::unfold(
        (Some(first), store, header_line),
        move |(page, store, header_line)| async move {
            let page = page?;
            let mut text = header_line.unwrap_or_default();
            for r in &page {
                match csv {
                    true => text.push_str(&r.csv_line()),
                    false => {
                        text.push_str(&r.to_json().to_string());
                        text.push('\n');
                    }
                }
            }
            let next = match page.last() {
                Some(last) if page.len() as i64 == EXPORT_PAGE => {
                    let after = Some((last.received_ms, last.id.clone()));
                    match store.export_page(since, until, after, EXPORT_PAGE).await {
                        Ok(next) => Some(next),
                        Err(e) => {
                            // Headers are gone: cut the body short, so the client sees an error.
                            tracing::warn!(error = %e, "call record export cut short");
                            return Some((Err(std::io::Error::other(e)), (None, store, None)));
                        }
                    }
                }
                _ => None,
            };
            Some((Ok::<_, std::io::Error>(text), (next, store, None)))
        },
    );
    let content_type = match csv {
        true => "text/csv; charset=utf-8",
        false => "application/x-ndjson",
    };
    (
        [(header::CONTENT_TYPE, content_type)],
        axum::body::Body::from_stream(pages),
    )
        .into_response()
}

async fn stats(State(s): State<Shared>) -> Response {
    ask(&s, Command::Screening(ScreeningCommand::Stats)).await
}

async fn users(State(s): State<Shared>) -> Response {
    ask(&s, Command::Screening(ScreeningCommand::Users)).await
}

async fn reset_user(State(s): State<Shared>, Path(user): Path<String>) -> Response {
    ask(&s, Command::Screening(ScreeningCommand::Reset { user })).await
}

async fn remove_user(State(s): State<Shared>, Path(user): Path<String>) -> Response {
    ask(&s, Command::Screening(ScreeningCommand::Remove { user })).await
}

async fn lists(State(s): State<Shared>) -> Response {
    ask(&s, Command::Screening(ScreeningCommand::Lists)).await
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
    let command = ScreeningCommand::Add {
        list: e.list,
        kind: e.kind,
        value: e.value,
        note: e.note,
    };
    ask(&s, Command::Screening(command)).await
}

async fn remove_entry(
    State(s): State<Shared>,
    Path((list, kind, value)): Path<(String, String, String)>,
) -> Response {
    let command = ScreeningCommand::RemoveEntry { list, kind, value };
    ask(&s, Command::Screening(command)).await
}
