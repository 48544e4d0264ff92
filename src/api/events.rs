//! `GET /events`: the live event stream over WebSocket (`crate::events`), one JSON text
//! message per event, filtered by call (`?call=17`) and kind (`?kind=answered,ended`).
//!
//! A subscriber reads at its own pace from the hub's ring. One that falls a whole ring
//! behind (`admin.event_queue`) or stops reading for `STALLED` is closed with code 1008
//! and the reason, and counted: the calls never wait for it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast::error::RecvError;

use crate::events::{Hub, KINDS, Subscription};

/// How long one message may take to leave before its subscriber is given up.
const STALLED: Duration = Duration::from_secs(10);

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Only this call's events.
    call: Option<u64>,
    /// Only these kinds, comma-separated.
    kind: Option<String>,
}

/// The upgrade to a WebSocket that streams events; 400 for an unknown kind.
pub(super) async fn subscribe(
    State(shared): State<super::Shared>,
    Query(filter): Query<Filter>,
    ws: WebSocketUpgrade,
) -> Response {
    let kinds = match filter.kind.as_deref().map(kinds_of).transpose() {
        Ok(kinds) => kinds,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let hub = shared.events;
    // Subscribed before the 101: nothing after the answer is missed.
    let subscription = hub.subscribe();
    let call = filter.call;
    ws.on_upgrade(move |socket| send_events(socket, subscription, call, kinds, hub))
}

fn kinds_of(list: &str) -> Result<Vec<&'static str>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| {
            KINDS
                .iter()
                .copied()
                .find(|known| *known == k)
                .ok_or_else(|| {
                    format!(
                        "kind: unknown event kind {k:?}; known: {}\n",
                        KINDS.join(", ")
                    )
                })
        })
        .collect()
}

async fn send_events(
    mut socket: WebSocket,
    mut subscription: Subscription,
    call: Option<u64>,
    kinds: Option<Vec<&'static str>>,
    hub: Arc<Hub>,
) {
    loop {
        tokio::select! {
            next = subscription.events.recv() => match next {
                Ok(event) => {
                    let wanted = call.is_none_or(|c| event.call == Some(c))
                        && kinds.as_ref().is_none_or(|k| k.contains(&event.kind));
                    if !wanted {
                        continue;
                    }
                    let sent = tokio::time::timeout(
                        STALLED,
                        socket.send(Message::Text(event.json.as_str().into())),
                    )
                    .await;
                    match sent {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return, // the subscriber went away
                        Err(_) => {
                            hub.note_dropped();
                            tracing::warn!("event stream: a subscriber stopped reading; dropped");
                            return;
                        }
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    hub.note_dropped();
                    tracing::warn!(missed, "event stream: a subscriber fell too far behind; dropped");
                    let reason = format!("too slow: {missed} events missed (admin.event_queue); reconnect");
                    return close(socket, close_code::POLICY, reason).await;
                }
                Err(RecvError::Closed) => {
                    return close(socket, close_code::AWAY, "shutting down".into()).await;
                }
            },
            incoming = socket.recv() => match incoming {
                // Pings are answered by the WebSocket itself; anything else is ignored.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn close(mut socket: WebSocket, code: u16, reason: String) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(STALLED, socket.send(Message::Close(Some(frame)))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_checked_against_the_known_ones() {
        assert_eq!(kinds_of("answered, ended").unwrap(), ["answered", "ended"]);
        let err = kinds_of("answered,hangup").unwrap_err();
        assert!(
            err.contains("\"hangup\"") && err.contains("call_started"),
            "{err}"
        );
    }
}
