//! Codec negotiation across the two legs: widen an offer with the codecs Warden can
//! transcode to, and when the answer picks one of those, choose the offerer's codec and
//! the transcoding pair. Pure functions over SDP formats.

use warden_media::LegCodec;
use warden_media::codec::{self, Codec, FormatParams};

use super::sdp::Format;

/// What an SDP body is in the offer/answer exchange (RFC 3264).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Offer,
    Answer,
}

fn is_dtmf(f: &Format) -> bool {
    f.name == "TELEPHONE-EVENT"
}

fn is_codec(f: &Format) -> bool {
    !matches!(f.name.as_str(), "TELEPHONE-EVENT" | "CN" | "RED" | "")
}

/// The codec Warden can decode and encode `f` with: known by name and clock, in a payload
/// format Warden implements.
pub fn codec_of(f: &Format) -> Option<&'static Codec> {
    codec::by_name(&f.name, f.clock).filter(|_| !params_of(f).crc_or_interleaving)
}

/// Do two formats put the same bits on the wire (same codec, same payload layout)?
fn same(a: &Format, b: &Format) -> bool {
    a.name == b.name && a.clock == b.clock && params_of(a).same_layout(&params_of(b))
}

/// Does an answer's format take up one the offerer made? Its payload type says which of
/// the formats Warden sent it is (RFC 3264 6.1: the answer keeps the offer's numbers; many
/// answers leave the fmtp out): one of the offerer's, or one Warden added. A number Warden
/// never sent is matched by codec and layout.
fn taken_up(offer: &[Format], sent: &[Format], f: &Format) -> bool {
    let numbered =
        |o: &&Format| o.payload_type == f.payload_type && o.name == f.name && o.clock == f.clock;
    if sent.iter().any(|o| numbered(&o)) {
        offer.iter().any(|o| numbered(&o))
    } else {
        offer.iter().any(|o| same(o, f))
    }
}

/// The offer toward the answerer: the offered formats plus every `transcodable` codec (in
/// each payload format Warden offers it in: AMR in both layouts) it lacks, appended (so
/// an answerer that shares a codec with the offerer picks that one), and telephone-event
/// when the offer has none (Warden turns the answerer's events into
/// the offerer's SIP INFO and back). Additions without a static payload type get a free
/// dynamic one (96-127). None when nothing is added.
pub fn widen_offer(offer: &[Format], transcodable: &[&'static Codec]) -> Option<Vec<Format>> {
    let mut widened = offer.to_vec();
    let has_audio = offer.iter().any(is_codec);
    if has_audio
        && !offer.iter().any(is_dtmf)
        && let Some(pt) = free_dynamic_payload_type(&widened)
    {
        widened.push(Format {
            payload_type: pt,
            name: "TELEPHONE-EVENT".into(),
            clock: 8000,
            rtpmap: Some(format!("a=rtpmap:{pt} telephone-event/8000")),
            fmtp: Some(format!("a=fmtp:{pt} 0-16")),
        });
    }
    let transcodable = if offer.iter().any(|f| codec_of(f).is_some()) {
        transcodable
    } else {
        &[] // Warden cannot decode any offered codec: nothing to transcode from
    };
    for c in transcodable {
        for &fmtp in c.offered_formats {
            let params = FormatParams::parse(fmtp);
            let present = offer.iter().any(|f| {
                f.name.eq_ignore_ascii_case(c.name)
                    && f.clock == c.rtp_clock
                    && params_of(f).same_layout(&params)
            });
            if present {
                continue;
            }
            let taken = widened
                .iter()
                .any(|f| Some(f.payload_type) == c.static_payload_type);
            let pt = match c.static_payload_type {
                Some(pt) if !taken => pt,
                Some(_) => continue, // its number means something else in this offer
                None => match free_dynamic_payload_type(&widened) {
                    Some(pt) => pt,
                    None => continue,
                },
            };
            widened.push(Format {
                payload_type: pt,
                name: c.name.to_ascii_uppercase(),
                clock: c.rtp_clock,
                rtpmap: Some(format!("a=rtpmap:{}", c.rtpmap(pt))),
                fmtp: (!fmtp.is_empty()).then(|| format!("a=fmtp:{pt} {fmtp}")),
            });
        }
    }
    (widened.len() > offer.len()).then_some(widened)
}

pub fn params_of(f: &Format) -> FormatParams {
    f.fmtp
        .as_deref()
        .map(FormatParams::parse)
        .unwrap_or_default()
}

/// The payload format of an answer's chosen format: the layout Warden's offer gave its
/// payload type (the answer may leave the fmtp out), with the answer's mode-set and mode
/// change rules, which say what Warden may send the answerer (RFC 4867 8.3.1).
fn answered_params(sent: &[Format], chosen: &Format) -> FormatParams {
    let answered = params_of(chosen);
    match sent.iter().find(|o| {
        o.payload_type == chosen.payload_type && o.name == chosen.name && o.clock == chosen.clock
    }) {
        Some(offered) => {
            let layout = params_of(offered);
            FormatParams {
                octet_aligned: layout.octet_aligned,
                crc_or_interleaving: layout.crc_or_interleaving,
                ..answered
            }
        }
        None => answered,
    }
}

fn comfort_noise(formats: &[Format]) -> Option<u8> {
    formats
        .iter()
        .find(|f| f.name == "CN")
        .map(|f| f.payload_type)
}

fn free_dynamic_payload_type(formats: &[Format]) -> Option<u8> {
    (96..=127).find(|&pt| !formats.iter().any(|f| f.payload_type == pt))
}

/// An offer's formats cut down to `codecs` (by name, in that order), keeping
/// telephone-event and comfort noise; None when none of them is there.
pub fn restrict(formats: &[Format], codecs: &[String]) -> Option<Vec<Format>> {
    let mut kept: Vec<Format> = codecs
        .iter()
        .flat_map(|name| formats.iter().filter(|f| f.name.eq_ignore_ascii_case(name)))
        .cloned()
        .collect();
    if kept.is_empty() {
        return None;
    }
    kept.extend(formats.iter().filter(|f| !is_codec(f)).cloned());
    Some(kept)
}

/// The telephone-event format of a format list, as the relay wants it.
pub fn event_format(formats: &[Format]) -> Option<(u8, u32)> {
    formats
        .iter()
        .find(|f| is_dtmf(f))
        .map(|f| (f.payload_type, f.clock))
}

/// What an answer settles for one m= line.
#[derive(Debug, Clone)]
pub struct Settlement {
    /// The formats the offerer is answered with, when they differ from the answer's.
    pub formats_for_offerer: Option<Vec<Format>>,
    /// (offerer's codec, answerer's codec) when the legs share none.
    pub transcoding: Option<(LegCodec, LegCodec)>,
}

/// Settle one m= line's answer: `offer` as the offerer made it, `sent` as Warden passed it
/// on (widened), `answer` as the answerer made it.
pub fn settle(offer: &[Format], sent: &[Format], answer: &[Format]) -> Settlement {
    // An offerer with telephone-events keeps them when the answerer has none: Warden
    // turns them into the answerer's SIP INFO.
    let offer_dtmf = offer.iter().find(|f| is_dtmf(f));
    let answer_dtmf = answer.iter().find(|f| is_dtmf(f));
    let events_kept_by_warden = offer_dtmf.filter(|_| answer_dtmf.is_none());
    let passthrough = |answer: &[Format]| {
        // Never show the offerer a codec it did not offer (one Warden added).
        let mut kept: Vec<Format> = answer
            .iter()
            .filter(|f| taken_up(offer, sent, f))
            .cloned()
            .collect();
        let changed = kept.len() < answer.len();
        if kept.is_empty() {
            return Settlement {
                formats_for_offerer: None,
                transcoding: None,
            };
        }
        kept.extend(events_kept_by_warden.cloned());
        Settlement {
            formats_for_offerer: (changed || events_kept_by_warden.is_some()).then_some(kept),
            transcoding: None,
        }
    };
    let Some(chosen) = answer.iter().find(|f| is_codec(f)) else {
        return passthrough(answer);
    };
    if taken_up(offer, sent, chosen) {
        return passthrough(answer);
    }
    let (Some(answer_codec), Some((offer_format, offer_codec))) = (
        codec_of(chosen),
        offer.iter().find_map(|f| codec_of(f).map(|c| (f, c))),
    ) else {
        return passthrough(answer);
    };
    let mut formats = vec![offer_format.clone()];
    formats.extend(offer_dtmf.cloned());
    Settlement {
        formats_for_offerer: Some(formats),
        transcoding: Some((
            LegCodec {
                codec: offer_codec,
                payload_type: offer_format.payload_type,
                params: params_of(offer_format),
                ptime: 20, // the caller of `settle` knows the m= line's ptime
                dtmf_payload_type: offer_dtmf
                    .filter(|_| answer_dtmf.is_some())
                    .map(|f| f.payload_type),
                cn_payload_type: comfort_noise(offer),
            },
            LegCodec {
                codec: answer_codec,
                payload_type: chosen.payload_type,
                params: answered_params(sent, chosen),
                ptime: 20,
                dtmf_payload_type: answer_dtmf.map(|f| f.payload_type),
                cn_payload_type: comfort_noise(answer),
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(pt: u8, name: &str, clock: u32) -> Format {
        Format {
            payload_type: pt,
            name: name.to_owned(),
            clock,
            rtpmap: Some(format!("a=rtpmap:{pt} {name}/{clock}")),
            fmtp: None,
        }
    }

    fn list() -> Vec<&'static Codec> {
        ["PCMA", "PCMU", "G722"]
            .iter()
            .filter_map(|n| codec::by_name(n, 8000))
            .collect()
    }

    #[test]
    fn offers_are_widened_with_what_is_missing_at_the_end() {
        let offer = vec![fmt(9, "G722", 8000), fmt(101, "TELEPHONE-EVENT", 8000)];
        let widened = widen_offer(&offer, &list()).expect("widened");
        let pts: Vec<u8> = widened.iter().map(|f| f.payload_type).collect();
        assert_eq!(pts, vec![9, 101, 8, 0]);
        assert_eq!(widened[2].rtpmap.as_deref(), Some("a=rtpmap:8 PCMA/8000"));
        // Nothing Warden can decode: no codec added, but telephone-event is (Warden can
        // still carry key presses between events and SIP INFO).
        let widened = widen_offer(&[fmt(96, "ILBC", 8000)], &list()).expect("widened");
        let added: Vec<(u8, &str)> = widened[1..]
            .iter()
            .map(|f| (f.payload_type, f.name.as_str()))
            .collect();
        assert_eq!(added, vec![(97, "TELEPHONE-EVENT")]);
        assert_eq!(
            widened[1].fmtp.as_deref(),
            Some("a=fmtp:97 0-16"),
            "the keys 0-9, *, #, A-D"
        );
        // Everything there already: unchanged.
        let full = vec![
            fmt(8, "PCMA", 8000),
            fmt(0, "PCMU", 8000),
            fmt(9, "G722", 8000),
            fmt(101, "TELEPHONE-EVENT", 8000),
        ];
        assert!(widen_offer(&full, &list()).is_none());
    }

    #[cfg(feature = "opus")]
    #[test]
    fn opus_gets_a_free_dynamic_payload_type() {
        let opus = codec::by_name("opus", 48000).expect("opus");
        let offer = vec![
            fmt(8, "PCMA", 8000),
            fmt(96, "TELEPHONE-EVENT", 8000),
            fmt(97, "ILBC", 8000),
        ];
        let widened = widen_offer(&offer, &[opus]).expect("widened");
        let added = &widened[3];
        assert_eq!((added.payload_type, added.name.as_str()), (98, "OPUS"));
        assert_eq!(added.rtpmap.as_deref(), Some("a=rtpmap:98 opus/48000/2"));
        assert_eq!(
            added.fmtp.as_deref(),
            Some("a=fmtp:98 minptime=10;useinbandfec=1")
        );
        // An Opus-only offer answered with PCMA: transcoding between the two.
        let offer = vec![fmt(111, "OPUS", 48000)];
        let s = settle(&offer, &offer, &[fmt(8, "PCMA", 8000)]);
        let (from, to) = s.transcoding.expect("transcoding");
        assert_eq!((from.codec.name, from.payload_type), ("opus", 111));
        assert_eq!((to.codec.name, to.payload_type), ("PCMA", 8));
    }

    #[test]
    fn an_offerer_keeps_its_telephone_events_when_the_answerer_has_none() {
        let offer = vec![fmt(8, "PCMA", 8000), fmt(101, "TELEPHONE-EVENT", 8000)];
        let s = settle(&offer, &offer, &[fmt(8, "PCMA", 8000)]);
        let formats = s.formats_for_offerer.expect("answer changed");
        assert_eq!(
            formats.iter().map(|f| f.payload_type).collect::<Vec<_>>(),
            vec![8, 101]
        );
        assert!(s.transcoding.is_none());
        assert_eq!(event_format(&offer), Some((101, 8000)));
        // An answerer with events of its own: nothing to change.
        let s = settle(&offer, &offer, &offer);
        assert!(s.formats_for_offerer.is_none());
    }

    #[test]
    fn an_offer_restricted_to_a_routes_codecs_keeps_events_and_noise() {
        let offer = vec![
            fmt(9, "G722", 8000),
            fmt(0, "PCMU", 8000),
            fmt(8, "PCMA", 8000),
            fmt(101, "TELEPHONE-EVENT", 8000),
            fmt(13, "CN", 8000),
        ];
        let cut = restrict(&offer, &["pcma".into(), "PCMU".into()]).expect("some left");
        let pts: Vec<u8> = cut.iter().map(|f| f.payload_type).collect();
        assert_eq!(
            pts,
            vec![8, 0, 101, 13],
            "the route's order, then events and noise"
        );
        assert!(restrict(&offer, &["OPUS".into()]).is_none());
    }

    #[test]
    fn a_shared_codec_is_relayed_untouched() {
        let offer = vec![fmt(0, "PCMU", 8000), fmt(8, "PCMA", 8000)];
        let answer = vec![fmt(8, "PCMA", 8000)];
        let s = settle(&offer, &offer, &answer);
        assert!(s.formats_for_offerer.is_none() && s.transcoding.is_none());
    }

    #[test]
    fn an_added_codec_in_the_answer_means_transcoding() {
        let offer = vec![fmt(9, "G722", 8000), fmt(101, "TELEPHONE-EVENT", 8000)];
        let answer = vec![fmt(8, "PCMA", 8000), fmt(96, "TELEPHONE-EVENT", 8000)];
        let s = settle(&offer, &offer, &answer);
        let formats = s.formats_for_offerer.expect("offerer gets its own codec");
        assert_eq!(
            formats.iter().map(|f| f.payload_type).collect::<Vec<_>>(),
            vec![9, 101]
        );
        let (from, to) = s.transcoding.expect("transcoding");
        assert_eq!(
            (from.codec.name, from.payload_type, from.dtmf_payload_type),
            ("G722", 9, Some(101))
        );
        assert_eq!(
            (to.codec.name, to.payload_type, to.dtmf_payload_type),
            ("PCMA", 8, Some(96))
        );
    }

    #[cfg(feature = "amr")]
    fn with_fmtp(mut f: Format, fmtp: &str) -> Format {
        f.fmtp = Some(format!("a=fmtp:{} {fmtp}", f.payload_type));
        f
    }

    #[cfg(feature = "amr")]
    #[test]
    fn amr_is_offered_in_both_layouts_and_a_missing_layout_is_added() {
        let amr: Vec<&'static Codec> = [("AMR-WB", 16000), ("AMR", 8000)]
            .iter()
            .filter_map(|(n, c)| codec::by_name(n, *c))
            .collect();
        let widened = widen_offer(&[fmt(0, "PCMU", 8000)], &amr).expect("widened");
        let added: Vec<(u8, &str, Option<&str>)> = widened[2..]
            .iter()
            .map(|f| (f.payload_type, f.name.as_str(), f.fmtp.as_deref()))
            .collect();
        assert_eq!(
            added,
            vec![
                (
                    97,
                    "AMR-WB",
                    Some("a=fmtp:97 mode-change-capability=2;max-red=0")
                ),
                (
                    98,
                    "AMR-WB",
                    Some("a=fmtp:98 octet-align=1;mode-change-capability=2;max-red=0")
                ),
                (
                    99,
                    "AMR",
                    Some("a=fmtp:99 mode-change-capability=2;max-red=0")
                ),
                (
                    100,
                    "AMR",
                    Some("a=fmtp:100 octet-align=1;mode-change-capability=2;max-red=0")
                ),
            ],
            "telephone-event took 96"
        );
        // A VoLTE offer of AMR-WB bandwidth-efficient only: the octet-aligned layout is
        // added (and all of AMR-NB), not a second bandwidth-efficient one.
        let volte = vec![with_fmtp(fmt(104, "AMR-WB", 16000), "mode-set=0,1,2")];
        let widened = widen_offer(&volte, &amr).expect("widened");
        let wb: Vec<FormatParams> = widened
            .iter()
            .filter(|f| f.name == "AMR-WB")
            .map(params_of)
            .collect();
        assert_eq!(wb.len(), 2);
        assert!(!wb[0].octet_aligned && wb[1].octet_aligned);
        // AMR with frame CRCs is relayed, never decoded: nothing to transcode from.
        let crc = vec![with_fmtp(fmt(96, "AMR", 8000), "octet-align=1; crc=1")];
        assert!(codec_of(&crc[0]).is_none());
        let widened = widen_offer(&crc, &amr).expect("telephone-event");
        assert_eq!(widened.len(), 2);
    }

    #[cfg(feature = "amr")]
    #[test]
    fn an_answer_in_the_other_amr_layout_is_transcoded_and_an_answer_without_fmtp_is_not() {
        let offer = vec![with_fmtp(fmt(104, "AMR-WB", 16000), "mode-set=0,1,2")];
        let sent = {
            let mut s = offer.clone();
            s.push(with_fmtp(fmt(97, "AMR-WB", 16000), "octet-align=1"));
            s
        };
        // The answerer takes Warden's octet-aligned payload type: the two layouts differ,
        // so Warden transcodes, and the offerer is answered in its own format.
        let answer = vec![with_fmtp(
            fmt(97, "AMR-WB", 16000),
            "octet-align=1; mode-set=2",
        )];
        let s = settle(&offer, &sent, &answer);
        let (from, to) = s.transcoding.expect("transcoding between layouts");
        assert_eq!(
            (
                from.payload_type,
                from.params.octet_aligned,
                from.params.highest_mode()
            ),
            (104, false, Some(2))
        );
        assert_eq!(
            (
                to.payload_type,
                to.params.octet_aligned,
                to.params.highest_mode()
            ),
            (97, true, Some(2))
        );
        assert_eq!(
            s.formats_for_offerer.expect("own format")[0].payload_type,
            104
        );
        // The same payload type answered without its fmtp keeps the offered layout.
        let bare = vec![fmt(97, "AMR-WB", 16000)];
        let (_, to) = settle(&offer, &sent, &bare)
            .transcoding
            .expect("transcoding");
        assert!(to.params.octet_aligned, "the offer gave 97 its layout");
        let bare = vec![fmt(104, "AMR-WB", 16000)];
        let s = settle(&offer, &sent, &bare);
        assert!(
            s.transcoding.is_none(),
            "the offerer's own payload type: relayed"
        );
    }
}
