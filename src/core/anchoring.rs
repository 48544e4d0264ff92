//! SDP through the media interface: anchoring offers and answers to the relay, refusing
//! what cannot be anchored, and the media-timeout pace.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::anchor::negotiate::Role;
use crate::anchor::{AnchorError, MediaSession, is_sdp};
use crate::call::Side;
use crate::sip::message::Request;
use crate::sip::transaction::TxKey;

use super::Core;

impl Core {
    /// The body `from` sent, anchored to the relay when it is SDP.
    pub(super) fn anchor(
        &mut self,
        media: &mut MediaSession,
        from: Side,
        body: &Bytes,
        content_type: Option<&str>,
        role: Role,
    ) -> Result<Bytes, AnchorError> {
        if body.is_empty() || !is_sdp(content_type) {
            return Ok(body.clone());
        }
        media
            .anchor(&mut *self.media, from, body, role, &self.transcodable)
            .map(Bytes::from)
    }

    /// For bodies in responses and ACKs, which cannot be refused: when anchoring fails the
    /// description goes on unchanged (media then flows directly) and the log says why.
    pub(super) fn anchor_or_pass(
        &mut self,
        media: &mut MediaSession,
        from: Side,
        body: &Bytes,
        content_type: Option<&str>,
        role: Role,
    ) -> Bytes {
        self.anchor(media, from, body, content_type, role)
            .unwrap_or_else(|e| {
                tracing::warn!(from = from.name(), error = %e, "media not anchored; SDP relayed as is");
                body.clone()
            })
    }

    pub(super) fn refuse_media(
        &mut self,
        key: &TxKey,
        req: &Request,
        error: AnchorError,
        now: Instant,
    ) -> u16 {
        let status = match &error {
            AnchorError::Sdp(_) => 400,
            AnchorError::Media(_) => 503,
        };
        if status == 503 {
            tracing::warn!(error = %error, method = %req.method(), "refused: no media ports free");
        } else {
            tracing::info!(error = %error, method = %req.method(), "refused: malformed SDP");
        }
        self.respond_warning(key, req, status, None, Some(&error.to_string()), now);
        status
    }

    /// The check interval for media timeouts: fine enough that a call ends close to the
    /// configured time, coarse enough to cost nothing.
    pub(super) fn media_check_interval(&self) -> Duration {
        (self.media_timeout() / 6).clamp(Duration::from_millis(100), Duration::from_secs(10))
    }

    pub(super) fn media_timeout(&self) -> Duration {
        Duration::from_secs(self.config.media.rtp_timeout_s)
    }
}
