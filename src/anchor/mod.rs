//! Media anchoring for one call: every SDP crossing Warden is rewritten so both parties send
//! their media to Warden's relay, and the relay learns where each party receives.
//!
//! The same rule serves offers and answers, initial or re-INVITE: for each m= line, the
//! sender's address goes to the relay as that side's remote, and the description goes on
//! with the relay's port on the other side. Streams stay open until the call ends.
//! SRTP is terminated on each leg: a leg's keys stay on that leg (see `sdes`).

mod line_map;
pub mod negotiate;
pub mod precondition;
pub mod sdes;
pub mod sdp;

use line_map::LineMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use warden_media::{LegStats, MediaError, Remote, Side as MediaSide, StreamId, StreamStats};

use crate::call::Side;
use crate::media::Media;
use negotiate::Role;
use sdes::{Crypto, Mode, SrtpPolicy};
use sdp::{Direction, MediaLine, MediaPlan, Sdp, SdpError, Security};
use warden_media::codec::{Codec, FormatParams};
use warden_media::{EventFormat, LegCodec, SrtpKeys, SrtpSetting, Suite, Transcoding};

#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("malformed SDP: {0}")]
    Sdp(#[from] SdpError),
    #[error("no media ports: {0}")]
    Media(#[from] MediaError),
}

pub(crate) fn media_side(side: Side) -> MediaSide {
    match side {
        Side::A => MediaSide::A,
        Side::B => MediaSide::B,
    }
}

/// A call's relay streams (one per m= line index) and what it knows about media activity.
#[derive(Debug, Default)]
pub struct MediaSession {
    streams: Vec<Option<StreamId>>,
    /// Per m= line index, what each side last described (A, B).
    described: LineMap<[Option<MediaLine>; 2]>,
    /// Per m= line index, the last offer: who made it, the formats it listed, and the
    /// formats Warden passed on (widened).
    offers: LineMap<(Side, Vec<sdp::Format>, Vec<sdp::Format>)>,
    /// Per m= line index, the transcoding in force: a change in either leg's payload type
    /// or ptime rebuilds it.
    transcoding: LineMap<Transcoding>,
    /// Per m= line index, each side's telephone-event format (A, B) once an answer settled.
    events: LineMap<[EventFormat; 2]>,
    /// The caller's last offer as it came, for answering it ourselves (announcements):
    /// kept as text, parsed again in the rare call that needs it (a parsed description is
    /// a few allocations per line, held by every call).
    caller_offer: Option<Vec<u8>>,
    /// Each side's last description as it came (A, B), to offer it again to a new party
    /// (a transfer): text, parsed again in the call that needs it, like `caller_offer`.
    last: [Option<Vec<u8>>; 2],
    /// Each side's last description put its media on hold (sendonly/inactive/0.0.0.0).
    holding: [bool; 2],
    /// RTP packets seen across all streams at the last check, and when that count changed.
    last_count: u64,
    last_change: Option<Instant>,
    /// Per m= line index, the SRTP keys and modes of both legs.
    srtp: LineMap<LineSrtp>,
    /// What Warden offers each side (A, B) until that side has settled a mode.
    srtp_policy: [SrtpPolicy; 2],
    /// The description Warden last sent each side (A, B): a session refresh by re-INVITE
    /// offers it again unchanged (RFC 3264 8: same version, no change).
    sent: [Option<Vec<u8>>; 2],
}

/// SDES state of one m= line.
#[derive(Debug, Default)]
struct LineSrtp {
    /// The keys each side (A, B) declared in its last description: what it sends with.
    theirs: [Vec<Crypto>; 2],
    /// The keys Warden declared to each side: what Warden sends to it with. Kept across
    /// offers, so a re-INVITE does not rekey.
    ours: [Vec<Crypto>; 2],
    /// Who made the last offer, and its mode.
    offered: Option<(Side, Mode)>,
    /// The mode each side settled in its last offer/answer exchange.
    settled: [Option<Mode>; 2],
}

/// A call's media figures per party, summed over its streams.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MediaSummary {
    pub caller: LegStats,
    pub callee: LegStats,
}

/// Is `content_type` an SDP body Warden must anchor?
pub fn is_sdp(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
    })
}

impl MediaSession {
    /// Rewrite `body`, sent by `from` as an offer or answer, for the other side; open the
    /// streams it newly needs. Offers are widened with `transcodable` codecs; an answer that
    /// picks one of those switches the stream to transcoding.
    pub fn anchor(
        &mut self,
        relay: &mut dyn Media,
        from: Side,
        body: &[u8],
        role: Role,
        transcodable: &[&'static Codec],
    ) -> Result<Vec<u8>, AnchorError> {
        let sdp = Sdp::parse(body)?;
        if from == Side::A && role == Role::Offer {
            self.caller_offer = Some(body.to_vec());
        }
        let rewritten = self.anchor_sdp(relay, from, sdp, role, transcodable, false)?;
        self.last[index_of(from)] = Some(body.to_vec());
        Ok(rewritten)
    }

    /// Offer `from`'s media again, toward a new party taking the other side's place (a
    /// transfer's target): `from`'s last description with its audio cut to the codec it
    /// uses now (it keeps sending that), widened with `transcodable` as any offer; the new
    /// party's answer is then anchored as the other side's. None without a description.
    pub fn reoffer(
        &mut self,
        relay: &mut dyn Media,
        from: Side,
        transcodable: &[&'static Codec],
    ) -> Option<Vec<u8>> {
        // The description as `from` last sent it, not as a previous re-offer cut it: the
        // cut below depends only on what `from` sends now.
        let mut sdp = Sdp::parse(self.last[index_of(from)].as_deref()?).ok()?;
        // A new party takes the other side: it settles its own SRTP, with keys of its own.
        for line in self.srtp.values_mut() {
            let other = index_of(from.other());
            line.ours[other].clear();
            line.theirs[other].clear();
            line.settled[other] = None;
        }
        if let Some(Receiving {
            payload_type: in_use,
            ..
        }) = self.receiving(from)
            && let Some(index) = self.first_audio()
            && let Some(line) = sdp.media.get_mut(index)
        {
            line.formats.retain(|f| {
                f.payload_type == in_use || matches!(f.name.as_str(), "TELEPHONE-EVENT" | "CN")
            });
        }
        self.anchor_sdp(relay, from, sdp, Role::Offer, transcodable, true)
            .ok()
    }

    /// Anchor a parsed description; `restate` writes every audio line's format list out
    /// as `sdp` holds it (edited, not as the text came).
    fn anchor_sdp(
        &mut self,
        relay: &mut dyn Media,
        from: Side,
        sdp: Sdp,
        role: Role,
        transcodable: &[&'static Codec],
        restate: bool,
    ) -> Result<Vec<u8>, AnchorError> {
        let mut plans: Vec<MediaPlan> = Vec::with_capacity(sdp.media.len());
        let opened_before = self.streams.len();
        for (index, m) in sdp.media.iter().enumerate() {
            if m.port == 0 {
                // A rejected or disabled stream: stays rejected, its relay stream idles.
                if let Some(Some(id)) = self.streams.get(index) {
                    relay.set_remote(*id, media_side(from), None);
                }
                if let Some(d) = self.described.get_mut(&index) {
                    d[index_of(from)] = None;
                }
                plans.push(MediaPlan::default());
                continue;
            }
            let id = match self.streams.get(index).copied().flatten() {
                Some(id) => id,
                None => match relay.open() {
                    Ok(id) => {
                        self.streams.resize(self.streams.len().max(index + 1), None);
                        self.streams[index] = Some(id);
                        id
                    }
                    Err(e) => {
                        // Nothing half-done: close what this description opened.
                        for id in self.streams.drain(opened_before..).flatten() {
                            relay.close(id);
                        }
                        return Err(e.into());
                    }
                },
            };
            let described = self.described.get_or_default(index);
            described[index_of(from)] = Some(m.clone());
            // RTCP shares the RTP port only when both sides' latest descriptions agree to
            // multiplex (RFC 5761); otherwise each side's RTCP goes to its own port.
            let mux = described
                .iter()
                .all(|d| d.as_ref().is_some_and(|d| d.rtcp_mux));
            for side in [Side::A, Side::B] {
                if let Some(line) = &described[index_of(side)] {
                    relay.set_remote(
                        id,
                        media_side(side),
                        Some(remote(line, mux, relay.address())),
                    );
                }
            }
            let formats = self
                .negotiate(relay, id, index, from, m, role, transcodable)
                .or_else(|| (restate && m.kind == "audio").then(|| m.formats.clone()));
            let (security, refused) = self.secure(relay, id, index, from, m, role);
            plans.push(MediaPlan {
                port: if refused {
                    Some(0)
                } else {
                    relay.port(id, media_side(from.other()))
                },
                formats,
                security,
            });
        }
        self.holding[index_of(from)] = !sdp.media.is_empty()
            && sdp.media.iter().filter(|m| m.port != 0).all(|m| {
                matches!(m.direction, Direction::SendOnly | Direction::Inactive)
                    || m.address.is_some_and(|a| a.is_unspecified())
            });
        let out = sdp.rewrite_with(relay.address(), &plans).into_bytes();
        self.sent[index_of(from.other())] = Some(out.clone());
        Ok(out)
    }

    /// The description Warden last sent `to`.
    pub fn sent(&self, to: Side) -> Option<&[u8]> {
        self.sent[index_of(to)].as_deref()
    }

    /// Warden sent `to` this description (one it built without anchoring: the callee's
    /// first offer after its edits).
    pub fn note_sent(&mut self, to: Side, body: &[u8]) {
        self.sent[index_of(to)] = Some(body.to_vec());
    }

    /// The offer/answer step for one m= line: returns the format list to send on, if it
    /// changes, and sets the stream's transcoding when an answer settles it.
    #[allow(clippy::too_many_arguments)]
    fn negotiate(
        &mut self,
        relay: &mut dyn Media,
        id: StreamId,
        index: usize,
        from: Side,
        m: &MediaLine,
        role: Role,
        transcodable: &[&'static Codec],
    ) -> Option<Vec<sdp::Format>> {
        if m.kind != "audio" {
            return None;
        }
        match role {
            Role::Offer => {
                let widened = negotiate::widen_offer(&m.formats, transcodable);
                let sent = widened.clone().unwrap_or_else(|| m.formats.clone());
                self.offers.insert(index, (from, m.formats.clone(), sent));
                widened
            }
            Role::Answer => {
                let (offerer, offer, sent) =
                    self.offers.get(&index).filter(|(s, _, _)| *s != from)?;
                let settled = negotiate::settle(offer, sent, &m.formats);
                // Each leg gets packets of the length its own description asks for.
                let offerer_ptime = self
                    .described
                    .get(&index)
                    .and_then(|d| d[index_of(*offerer)].as_ref())
                    .and_then(|line| line.ptime);
                let pair = settled.transcoding.map(|(mut offered, mut answered)| {
                    offered.ptime = offerer_ptime.unwrap_or(20);
                    answered.ptime = m.ptime.unwrap_or(20);
                    let (a, b) = match offerer {
                        Side::A => (offered, answered),
                        Side::B => (answered, offered),
                    };
                    Transcoding { a, b }
                });
                // Each side's telephone-events as it described them (the offerer's are kept
                // by `settle` even when the answerer has none).
                let mut events = [None; 2];
                events[index_of(*offerer)] = negotiate::event_format(offer);
                events[index_of(from)] = negotiate::event_format(&m.formats);
                if self.events.get(&index) != Some(&events) {
                    self.events.insert(index, events);
                    relay.set_dtmf(id, events);
                }
                let key =
                    |t: &Transcoding| (t.a.payload_type, t.b.payload_type, t.a.ptime, t.b.ptime);
                if self.transcoding.get(&index).map(key) != pair.as_ref().map(key) {
                    match pair {
                        Some(t) => self.transcoding.insert(index, t),
                        None => self.transcoding.remove(&index),
                    };
                    if let Some(t) = &pair {
                        tracing::info!(a = %describe(&t.a), b = %describe(&t.b), "legs share no codec: transcoding");
                    }
                    relay.set_transcoding(id, pair);
                }
                settled.formats_for_offerer
            }
        }
    }

    /// SDES for one m= line crossing Warden: the transport and keys to write for the other
    /// side, and true when the line must be refused (an SRTP offer with no key Warden can
    /// use). Keys settle when an answer comes: each side's own, and Warden's toward it.
    fn secure(
        &mut self,
        relay: &mut dyn Media,
        id: StreamId,
        index: usize,
        from: Side,
        m: &MediaLine,
        role: Role,
    ) -> (Option<Security>, bool) {
        let Some(mode) = Mode::of(&m.proto, m.has_crypto) else {
            return (None, false); // DTLS-SRTP and the like pass untouched
        };
        let to = from.other();
        let policy = self.srtp_policy[index_of(to)];
        let line = self.srtp.get_or_default(index);
        line.theirs[index_of(from)] = m.crypto.clone();
        if role == Role::Offer {
            line.offered = Some((from, mode));
            // The offerer is keyed at once (its first usable key, and the key Warden will
            // answer with), and a party newly offered SRTP is held until its answer: no
            // packet of the call crosses in the clear meanwhile.
            if mode.keyed()
                && let Some(theirs) = m.crypto.first()
            {
                let ours = line.key_for(from, theirs.tag, theirs.suite);
                let keys = SrtpKeys {
                    suite: theirs.suite,
                    inbound: theirs.key,
                    outbound: ours.key,
                };
                relay.set_srtp(id, media_side(from), SrtpSetting::Keys(keys));
                line.ours[index_of(from)] = vec![ours];
            }
            let settled = line.settled[index_of(to)];
            let mode_to = settled.unwrap_or_else(|| policy.mode(mode));
            if mode_to.keyed() && settled.is_none() {
                relay.set_srtp(id, media_side(to), SrtpSetting::Awaiting);
            }
            return (Some(line.offer_to(to, mode_to, &m.proto)), false);
        }
        // The answerer: SRTP when it took one of the keys Warden offered it.
        let answered = mode
            .keyed()
            .then(|| m.crypto.first())
            .flatten()
            .and_then(|theirs| {
                let ours = line.ours[index_of(from)]
                    .iter()
                    .find(|o| o.tag == theirs.tag && o.suite == theirs.suite)?;
                Some(SrtpKeys {
                    suite: ours.suite,
                    inbound: theirs.key,
                    outbound: ours.key,
                })
            });
        if mode == Mode::Secure && answered.is_none() {
            tracing::warn!(side = ?from, "SRTP answer with no key of Warden's offer; its media is dropped");
        }
        line.settled[index_of(from)] = Some(if answered.is_some() {
            mode
        } else {
            Mode::Plain
        });
        let setting = match answered {
            Some(keys) => {
                tracing::info!(side = ?from, suite = keys.suite.name(), "SRTP (SDES) on the leg");
                SrtpSetting::Keys(keys)
            }
            // It asked for SRTP but named none of Warden's keys: silence, never clear text.
            None if mode == Mode::Secure => SrtpSetting::Awaiting,
            None => SrtpSetting::Clear,
        };
        relay.set_srtp(id, media_side(from), setting);
        // The offerer: answered in the mode it offered, with Warden's key for the first of
        // its keys Warden can use.
        let Some((offerer, offered)) = line.offered.filter(|(side, _)| *side == to) else {
            return (None, false);
        };
        let offer_proto = self
            .described
            .get(&index)
            .and_then(|d| d[index_of(offerer)].as_ref())
            .map_or_else(|| m.proto.clone(), |l| l.proto.clone());
        let chosen = offered
            .keyed()
            .then(|| line.theirs[index_of(to)].first().cloned())
            .flatten();
        let Some(theirs) = chosen else {
            relay.set_srtp(id, media_side(to), SrtpSetting::Clear);
            line.settled[index_of(to)] = Some(Mode::Plain);
            line.ours[index_of(to)].clear();
            let plain = Security {
                proto: offer_proto,
                crypto: Vec::new(),
            };
            if offered == Mode::Secure {
                tracing::warn!(side = ?to, "SRTP offer with no crypto suite Warden supports; stream refused");
                return (Some(plain), true);
            }
            return (Some(plain), false);
        };
        let ours = line.key_for(to, theirs.tag, theirs.suite);
        let keys = SrtpKeys {
            suite: theirs.suite,
            inbound: theirs.key,
            outbound: ours.key,
        };
        relay.set_srtp(id, media_side(to), SrtpSetting::Keys(keys));
        tracing::info!(side = ?to, suite = theirs.suite.name(), "SRTP (SDES) on the leg");
        line.settled[index_of(to)] = Some(offered);
        line.ours[index_of(to)] = vec![ours.clone()];
        (
            Some(Security {
                proto: offer_proto,
                crypto: vec![ours.attribute()],
            }),
            false,
        )
    }

    /// Offer SRTP to `side` by `policy` from now on, until that side settles a mode.
    pub fn set_srtp_policy(&mut self, side: Side, policy: SrtpPolicy) {
        self.srtp_policy[index_of(side)] = policy;
    }

    /// Warden's pending offer `body` toward `to`, its transport and keys rewritten for the
    /// policy now in force for `to` (a dialplan's `srtp` after the offer was made).
    pub fn resecure_offer(&mut self, body: &[u8], to: Side, address: IpAddr) -> Option<Vec<u8>> {
        let sdp = Sdp::parse(body).ok()?;
        let policy = self.srtp_policy[index_of(to)];
        let plans: Vec<MediaPlan> = sdp
            .media
            .iter()
            .enumerate()
            .map(|(index, m)| {
                let security = self.srtp.get_mut(&index).and_then(|line| {
                    let (_, relayed) = line.offered.filter(|(from, _)| *from != to)?;
                    let mode = line.settled[index_of(to)].unwrap_or_else(|| policy.mode(relayed));
                    Some(line.offer_to(to, mode, &m.proto))
                });
                MediaPlan {
                    security: security.filter(|_| m.port != 0),
                    ..MediaPlan::default()
                }
            })
            .collect();
        Some(sdp.rewrite_with(address, &plans).into_bytes())
    }

    /// Close every stream (the call is over); their ports return to the pool.
    pub fn close(&mut self, relay: &mut dyn Media) {
        for id in self.streams.drain(..).flatten() {
            relay.close(id);
        }
        self.described.clear();
        self.offers.clear();
        self.transcoding.clear();
        self.events.clear();
        self.caller_offer = None;
    }

    pub fn on_hold(&self) -> bool {
        self.holding.iter().any(|h| *h)
    }

    pub fn stats(&self, relay: &dyn Media) -> Vec<StreamStats> {
        self.streams
            .iter()
            .flatten()
            .filter_map(|id| relay.stats(*id))
            .collect()
    }

    /// Has the call gone `timeout` without RTP from either side? Call this periodically;
    /// time on hold never counts.
    pub fn timed_out(&mut self, relay: &dyn Media, now: Instant, timeout: Duration) -> bool {
        let count: u64 = self
            .stats(relay)
            .iter()
            .map(|s| s.a.rtp_packets + s.b.rtp_packets)
            .sum();
        if count != self.last_count || self.last_change.is_none() || self.on_hold() {
            self.last_count = count;
            self.last_change = Some(now);
            return false;
        }
        self.last_change
            .is_some_and(|t| now.duration_since(t) >= timeout)
    }

    /// Both legs' figures over all streams, for the call record: what Warden received
    /// from each party (packets, bytes, loss) and the worst jitter seen.
    pub fn summary(&self, relay: &dyn Media) -> MediaSummary {
        let mut sum = MediaSummary::default();
        for s in self.stats(relay) {
            for (leg, stats) in [(&mut sum.caller, s.a), (&mut sum.callee, s.b)] {
                leg.rtp_packets += stats.rtp_packets;
                leg.rtp_bytes += stats.rtp_bytes;
                leg.rtcp_packets += stats.rtcp_packets;
                leg.lost += stats.lost;
                leg.dropped += stats.dropped;
                leg.strangers += stats.strangers;
                leg.jitter_us = leg.jitter_us.max(stats.jitter_us);
            }
        }
        sum
    }

    /// Each party's audio codec on the first audio stream, and whether Warden transcodes
    /// between them (for the call record); None until an answer settled them.
    pub fn codecs(&self) -> Option<(String, String, bool)> {
        let index = self.first_audio()?;
        let lines = self.described.get(&index)?;
        let name = |side: usize, pt: Option<u8>| {
            let line = lines[side].as_ref()?;
            line.formats
                .iter()
                .find(|f| match pt {
                    Some(pt) => f.payload_type == pt,
                    None => !matches!(f.name.as_str(), "TELEPHONE-EVENT" | "CN"),
                })
                .map(|f| match f.name.as_str() {
                    "" => f.payload_type.to_string(),
                    name => name.to_owned(),
                })
        };
        if let Some(t) = self.transcoding.get(&index) {
            let (a, b) = (t.a.payload_type, t.b.payload_type);
            return Some((name(0, Some(a))?, name(1, Some(b))?, true));
        }
        // Relayed: the answer's first codec is both parties'.
        let (offerer, _, _) = self.offers.get(&index)?;
        let chosen = name(index_of(offerer.other()), None)?;
        Some((chosen.clone(), chosen, false))
    }

    /// The first m= line either side described as audio.
    fn first_audio(&self) -> Option<usize> {
        self.described
            .iter()
            .filter(|(_, lines)| lines.iter().flatten().any(|m| m.kind == "audio"))
            .map(|(i, _)| *i)
            .min()
    }

    /// Did `side`'s last description put its media on hold?
    pub fn holding(&self, side: Side) -> bool {
        self.holding[index_of(side)]
    }

    /// What `side` receives on the first audio stream, to play it something (music on
    /// hold, a conference): the stream, and the codec and payload format it knows.
    pub fn receiving(&self, side: Side) -> Option<Receiving> {
        let index = self.first_audio()?;
        let stream = self.streams.get(index).copied().flatten()?;
        let lines = self.described.get(&index)?;
        let line = lines[index_of(side)].as_ref()?;
        if let Some(t) = self.transcoding.get(&index) {
            // Transcoded: the leg's own codec, as settled.
            let leg = match side {
                Side::A => t.a,
                Side::B => t.b,
            };
            return Some(Receiving {
                stream,
                codec: leg.codec,
                params: leg.params,
                payload_type: leg.payload_type,
            });
        }
        // Relayed: the answer's first codec, as this side numbers it.
        let (offerer, _, _) = self.offers.get(&index)?;
        let answer = lines[index_of(offerer.other())].as_ref()?;
        let chosen = answer
            .formats
            .iter()
            .find(|f| !matches!(f.name.as_str(), "TELEPHONE-EVENT" | "CN"))?;
        // The offerer's format carries the fmtp (an answer may leave it out).
        let offered = lines[index_of(*offerer)]
            .as_ref()?
            .formats
            .iter()
            .find(|f| f.payload_type == chosen.payload_type)
            .unwrap_or(chosen);
        let format = line
            .formats
            .iter()
            .find(|f| f.payload_type == chosen.payload_type)
            .or_else(|| {
                line.formats
                    .iter()
                    .find(|f| f.name == chosen.name && f.clock == chosen.clock)
            })?;
        Some(Receiving {
            stream,
            codec: negotiate::codec_of(offered)?,
            params: negotiate::params_of(offered),
            payload_type: format.payload_type,
        })
    }

    pub fn has_streams(&self) -> bool {
        self.streams.iter().any(Option::is_some)
    }

    /// What the caller sends when Warden itself answered it (`answer_caller`): its stream
    /// and the codec Warden chose from its offer.
    pub fn caller_as_answered(&self) -> Option<Receiving> {
        let offer = Sdp::parse(self.caller_offer.as_deref()?).ok()?;
        let (index, format, codec) = own_answer_choice(&offer)?;
        Some(Receiving {
            stream: self.streams.get(index).copied().flatten()?,
            codec,
            params: negotiate::params_of(&format),
            payload_type: format.payload_type,
        })
    }

    /// Warden's own answer to the caller's offer, to play it prompts: the first audio
    /// stream in the first offered codec Warden can encode (with the caller's
    /// telephone-event), `sendonly` for an announcement or `sendrecv` when Warden listens
    /// (a menu's keys); every other stream rejected. Returns the stream, the chosen codec
    /// and payload type, and the SDP.
    pub fn answer_caller(
        &mut self,
        relay: &mut dyn Media,
        session_id: u64,
        listen: bool,
    ) -> Option<Announcement> {
        let offer = Sdp::parse(self.caller_offer.as_deref()?).ok()?;
        let (index, format, codec) = own_answer_choice(&offer)?;
        let stream = self.streams.get(index).copied().flatten()?;
        let port = relay.port(stream, MediaSide::A)?;
        let address = relay.address();
        let family = if address.is_ipv4() { "IP4" } else { "IP6" };
        let mut srtp = None;
        let mut sdp = format!(
            "v=0\r\no=warden {session_id} 1 IN {family} {address}\r\ns=warden\r\n\
             c=IN {family} {address}\r\nt=0 0\r\n"
        );
        for i in 0..offer.media.len() {
            if i == index {
                // The caller's telephone-event too, so a menu hears its keys.
                let events = offer.media[index]
                    .formats
                    .iter()
                    .find(|f| f.name == "TELEPHONE-EVENT");
                let mut pts = format.payload_type.to_string();
                if let Some(e) = events {
                    pts.push_str(&format!(" {}", e.payload_type));
                }
                // SRTP when the caller asked for it (in the transport it offered).
                let line = &offer.media[index];
                sdp.push_str(&format!("m=audio {port} {} {pts}\r\n", line.proto));
                if let Some(theirs) = line.crypto.first() {
                    // The key the caller was keyed with when its offer came (same as a
                    // bridge's answer would carry), settled for later offers.
                    let ours = match self.srtp.get_mut(&index) {
                        Some(state) => {
                            let ours = state.key_for(Side::A, theirs.tag, theirs.suite);
                            state.ours[0] = vec![ours.clone()];
                            state.settled[0] = Mode::of(&line.proto, true);
                            ours
                        }
                        None => Crypto::fresh(theirs.tag, theirs.suite),
                    };
                    sdp.push_str(&ours.attribute());
                    sdp.push_str("\r\n");
                    srtp = Some(SrtpKeys {
                        suite: theirs.suite,
                        inbound: theirs.key,
                        outbound: ours.key,
                    });
                }
                for line in [&format.rtpmap, &format.fmtp]
                    .into_iter()
                    .chain(events.map(|e| [&e.rtpmap, &e.fmtp]).into_iter().flatten())
                    .flatten()
                {
                    sdp.push_str(line);
                    sdp.push_str("\r\n");
                }
                sdp.push_str("a=ptime:20\r\n");
                sdp.push_str(if listen {
                    "a=sendrecv\r\n"
                } else {
                    "a=sendonly\r\n"
                });
                let curr = offer.attribute_values(index, "curr");
                let des = offer.attribute_values(index, "des");
                for line in precondition::answer_lines(&curr, &des) {
                    sdp.push_str(&line);
                    sdp.push_str("\r\n");
                }
            } else {
                sdp.push_str(&offer.rejected_media_line(i));
                sdp.push_str("\r\n");
            }
        }
        let events = negotiate::event_format(&offer.media[index].formats);
        // Before any callee answers, the caller's keys are Warden's to hear.
        let formats = [events, None];
        self.events.insert(index, formats);
        relay.set_dtmf(stream, formats);
        relay.set_srtp(
            stream,
            MediaSide::A,
            srtp.map_or(SrtpSetting::Clear, SrtpSetting::Keys),
        );
        self.sent[0] = Some(sdp.clone().into_bytes());
        Some(Announcement {
            stream,
            codec,
            params: negotiate::params_of(&format),
            payload_type: format.payload_type,
            sdp,
        })
    }

    /// Where a key press from `from` goes when the far side takes RFC 4733 events but `from`
    /// does not (it sends SIP INFO): the audio stream to write it into.
    pub fn events_toward(&self, from: Side) -> Option<StreamId> {
        let (index, events) = self.events.iter().min_by_key(|(index, _)| **index)?;
        let (mine, theirs) = (events[index_of(from)], events[index_of(from.other())]);
        (mine.is_none() && theirs.is_some())
            .then(|| self.streams.get(*index).copied().flatten())
            .flatten()
    }

    /// The offer `body` (Warden's, toward the callee) with its audio formats cut down to
    /// `codecs`; the body unchanged when it has none of them or is not SDP.
    pub fn restrict_offer(body: &[u8], codecs: &[String], address: IpAddr) -> Option<Vec<u8>> {
        let sdp = Sdp::parse(body).ok()?;
        let mut any = false;
        let plans: Vec<MediaPlan> = sdp
            .media
            .iter()
            .map(|m| {
                let formats = (m.kind == "audio" && m.port != 0)
                    .then(|| negotiate::restrict(&m.formats, codecs))
                    .flatten();
                any |= formats.is_some();
                MediaPlan {
                    formats,
                    ..MediaPlan::default()
                }
            })
            .collect();
        any.then(|| sdp.rewrite_with(address, &plans).into_bytes())
    }

    /// The first open stream (the call's main audio, m= line order).
    pub fn first_stream(&self) -> Option<StreamId> {
        self.streams.iter().flatten().next().copied()
    }

    pub fn contains(&self, stream: StreamId) -> bool {
        self.streams.contains(&Some(stream))
    }
}

impl LineSrtp {
    /// The transport and keys of an offer to `side` in `mode`: Warden's keys, one per suite
    /// it supports (the same ones as last time, so a re-INVITE does not rekey).
    fn offer_to(&mut self, side: Side, mode: Mode, proto: &str) -> Security {
        let ours: Vec<Crypto> = if mode.keyed() {
            Suite::ALL
                .into_iter()
                .zip(1..)
                .map(|(suite, tag)| self.key_for(side, tag, suite))
                .collect()
        } else {
            Vec::new()
        };
        let crypto = ours.iter().map(Crypto::attribute).collect();
        self.ours[index_of(side)] = ours;
        Security {
            proto: mode.proto(proto),
            crypto,
        }
    }

    /// Warden's key toward `side` for `suite` under `tag`: the one it already has, or new.
    fn key_for(&self, side: Side, tag: u32, suite: Suite) -> Crypto {
        match self.ours[index_of(side)].iter().find(|o| o.suite == suite) {
            Some(known) => Crypto {
                tag,
                ..known.clone()
            },
            None => Crypto::fresh(tag, suite),
        }
    }
}

/// What `answer_caller` settles for playing a prompt to the caller.
#[derive(Debug, Clone)]
pub struct Announcement {
    pub stream: StreamId,
    pub codec: &'static Codec,
    pub params: FormatParams,
    pub payload_type: u8,
    pub sdp: String,
}

/// What a party receives on a stream: the codec in its payload format, and the payload
/// type the party knows it by.
#[derive(Debug, Clone, Copy)]
pub struct Receiving {
    pub stream: StreamId,
    pub codec: &'static Codec,
    pub params: FormatParams,
    pub payload_type: u8,
}

/// What Warden answers a caller's offer with when it answers itself: the first audio
/// stream it can take (SRTP only with keys), in the first offered codec it can encode,
/// in the caller's own payload format (AMR's layout and mode-set: the answer repeats its
/// fmtp, RFC 4867 8.3.1, and prompts are encoded so). The stream's index, the format and
/// the codec.
fn own_answer_choice(offer: &Sdp) -> Option<(usize, sdp::Format, &'static Codec)> {
    offer.media.iter().enumerate().find_map(|(i, m)| {
        let mode = Mode::of(&m.proto, m.has_crypto);
        let keys_usable = mode != Some(Mode::Secure) || !m.crypto.is_empty();
        (m.kind == "audio" && m.port != 0 && mode.is_some() && keys_usable)
            .then(|| {
                m.formats
                    .iter()
                    .find_map(|f| negotiate::codec_of(f).map(|c| (i, f.clone(), c)))
            })
            .flatten()
    })
}

fn describe(leg: &LegCodec) -> String {
    format!(
        "{}/{} pt {}",
        leg.codec.name, leg.codec.rtp_clock, leg.payload_type
    )
}

/// Where a side receives, from its description of one m= line.
fn remote(line: &MediaLine, mux: bool, fallback: IpAddr) -> Remote {
    let address = line.address.unwrap_or(fallback);
    let rtp = SocketAddr::new(address, line.port);
    let rtcp = match (mux, line.rtcp) {
        (true, _) => rtp,
        (false, Some((port, addr))) => SocketAddr::new(addr.unwrap_or(address), port),
        (false, None) => SocketAddr::new(address, line.port.saturating_add(1)),
    };
    Remote {
        rtp,
        rtcp,
        clock_rate: line.clock_rate,
    }
}

fn index_of(side: Side) -> usize {
    match side {
        Side::A => 0,
        Side::B => 1,
    }
}
