//! The announcements Warden ships, built into the binary (so `cargo run` works from any
//! folder), plus an operator's own folder of prompts that may replace or add to them.

use warden_media::prompt::Prompts;

use crate::config::Config;

/// (name, file) of every prompt in `prompts/`; see prompts/README.md for how each was made.
const BUILT_IN: [(&str, &[u8]); 20] = [
    (
        "call_blocked",
        include_bytes!("../prompts/call_blocked.wav"),
    ),
    (
        "number_not_allowed",
        include_bytes!("../prompts/number_not_allowed.wav"),
    ),
    (
        "suspected_fraud",
        include_bytes!("../prompts/suspected_fraud.wav"),
    ),
    (
        "user_unavailable",
        include_bytes!("../prompts/user_unavailable.wav"),
    ),
    ("busy", include_bytes!("../prompts/busy.wav")),
    ("ivr_menu", include_bytes!("../prompts/ivr_menu.wav")),
    (
        "challenge_intro",
        include_bytes!("../prompts/challenge_intro.wav"),
    ),
    ("digit_0", include_bytes!("../prompts/digit_0.wav")),
    ("digit_1", include_bytes!("../prompts/digit_1.wav")),
    ("digit_2", include_bytes!("../prompts/digit_2.wav")),
    ("digit_3", include_bytes!("../prompts/digit_3.wav")),
    ("digit_4", include_bytes!("../prompts/digit_4.wav")),
    ("digit_5", include_bytes!("../prompts/digit_5.wav")),
    ("digit_6", include_bytes!("../prompts/digit_6.wav")),
    ("digit_7", include_bytes!("../prompts/digit_7.wav")),
    ("digit_8", include_bytes!("../prompts/digit_8.wav")),
    ("digit_9", include_bytes!("../prompts/digit_9.wav")),
    ("hold_music", include_bytes!("../prompts/hold_music.wav")),
    (
        "conference_join",
        include_bytes!("../prompts/conference_join.wav"),
    ),
    (
        "conference_leave",
        include_bytes!("../prompts/conference_leave.wav"),
    ),
];

/// The built-in prompts, then `media.prompts_dir`'s; a file that cannot be decoded refuses
/// the start with its path and cause.
pub fn load(config: &Config) -> anyhow::Result<Prompts> {
    let mut prompts = Prompts::default();
    for (name, bytes) in BUILT_IN {
        prompts.add(name, bytes.to_vec())?;
    }
    if let Some(dir) = &config.media.prompts_dir {
        let added = prompts.add_dir(dir)?;
        tracing::info!(dir = %dir.display(), count = added, "prompts loaded");
    }
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_prompt_decodes_to_sound_of_its_length() {
        let mut prompts = load(&Config::default()).expect("built-in prompts decode");
        let pcmu = warden_media::codec::by_name("PCMU", 8000).expect("codec");
        for (name, _) in BUILT_IN {
            let encoded = prompts
                .encoded(name, pcmu, &Default::default())
                .expect("encodes");
            let seconds = encoded.frames.len() as f64 / 50.0;
            // Announcements last seconds; the challenge's digits are read back to back, and
            // the conference chimes are short.
            let expected = if name.starts_with("digit_") {
                0.4..1.0
            } else if name.starts_with("conference_") {
                0.3..0.6
            } else {
                3.0..10.0
            };
            assert!(expected.contains(&seconds), "{name}: {seconds} s");
        }
    }
}
