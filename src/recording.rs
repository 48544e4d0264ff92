//! Recordings after the call: the spool directory they wait in, and their upload over HTTP
//! (POST as a form, or PUT), retried with backoff until the receiver takes them, across
//! restarts and crashes. The relay writes the files (`warden_media::record`).
//!
//! A recording in the spool is `NAME.wav` (or `NAME.opus`) with its `NAME.wav.json` (what
//! names it: record id, call, caller, callee). `NAME.wav.part` is one still being written;
//! found at start, it is what a crash left, completed from what reached the disk and
//! uploaded like the rest.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use warden_media::record::{Finished, FinishedSink, Format, Layout, repair, with_suffix};

/// `[recording]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordingConfig {
    /// Where recordings are written and wait for their upload (default: `recordings`
    /// beside `database.path`).
    pub dir: Option<PathBuf>,
    /// "stereo" (caller left, callee right) or "mono" (both mixed), when the dialplan or
    /// the API does not say.
    #[serde(deserialize_with = "layout")]
    pub layout: Layout,
    /// "wav" (16-bit PCM at the call's rate) or "opus" (Ogg Opus, RFC 7845: about a tenth
    /// of the size; needs a build with the native codecs).
    #[serde(deserialize_with = "format")]
    pub format: Format,
    /// Where finished recordings go; none: they stay in `dir`. `{record}` and `{call}` in
    /// it are replaced by the record id and the call's number.
    pub upload_url: Option<String>,
    /// "post" (a multipart form: fields record, call, call_id, caller, callee and the file
    /// as `file`) or "put" (the file as the body, the names in X-Warden-* headers).
    pub upload_method: UploadMethod,
    /// Sent as `Authorization: Bearer ...` with each upload.
    pub upload_token: Option<String>,
    /// Keep the file after its upload (moved to `dir/uploaded/`).
    pub keep_local: bool,
    /// The longest wait between two tries of a failing upload (they double from 1 s).
    pub retry_max_s: u64,
    /// How long one upload may take.
    pub upload_timeout_s: u64,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            dir: None,
            layout: Layout::Stereo,
            format: Format::Wav,
            upload_url: None,
            upload_method: UploadMethod::Post,
            upload_token: None,
            keep_local: false,
            retry_max_s: 300,
            upload_timeout_s: 300,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadMethod {
    Post,
    Put,
}

fn layout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Layout, D::Error> {
    match String::deserialize(d)?.as_str() {
        "stereo" => Ok(Layout::Stereo),
        "mono" => Ok(Layout::Mono),
        other => Err(serde::de::Error::custom(format!(
            "layout {other:?}: stereo (caller left, callee right) or mono"
        ))),
    }
}

fn format<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Format, D::Error> {
    let format = match String::deserialize(d)?.as_str() {
        "wav" => Format::Wav,
        "opus" => Format::OggOpus,
        other => {
            return Err(serde::de::Error::custom(format!(
                "format {other:?}: wav or opus (Ogg Opus)"
            )));
        }
    };
    if !format.available() {
        return Err(serde::de::Error::custom(
            "format \"opus\": this build has no Opus encoder (build with --features native-codecs)",
        ));
    }
    Ok(format)
}

/// The spool's file names: a recording as it is written, and once complete.
const EXTENSIONS: [&str; 2] = [".wav", ".opus"];

/// The media type of a recording's file.
fn media_type(path: &std::path::Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("opus") => "audio/ogg",
        _ => "audio/wav",
    }
}

/// What /metrics shows of recordings.
#[derive(Debug, Default)]
pub struct RecordingStats {
    pub uploaded: AtomicU64,
    pub upload_failures: AtomicU64,
    /// Recordings complete and not yet uploaded.
    pub pending: AtomicU64,
    /// Recordings whose file could not be written.
    pub failed: AtomicU64,
}

/// Start the spool: complete what a crash left, queue what waits for its upload, and
/// upload from now on. Returns where the relay announces finished recordings.
pub fn start(
    config: &crate::config::Config,
    stats: Arc<RecordingStats>,
) -> anyhow::Result<FinishedSink> {
    let dir = config.recording_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("recording.dir {}: {e}", dir.display()))?;
    let mut waiting = Vec::new();
    for entry in std::fs::read_dir(&dir)?.flatten() {
        let path = entry.path();
        let name = path.to_string_lossy().into_owned();
        if EXTENSIONS
            .iter()
            .any(|e| name.ends_with(&format!("{e}.part")))
        {
            match repair(&path) {
                Ok(done) => {
                    tracing::warn!(file = %done.display(), "recording: completed a file a crash cut short");
                    waiting.push(done);
                }
                Err(e) => {
                    tracing::error!(file = %name, error = %e, "recording: cannot complete a file a crash cut short")
                }
            }
        } else if EXTENSIONS.iter().any(|e| name.ends_with(e))
            && with_suffix(&path, ".json").exists()
        {
            waiting.push(path);
        }
    }
    waiting.sort();
    if !waiting.is_empty() {
        tracing::info!(recordings = waiting.len(), dir = %dir.display(), "recordings waiting for their upload");
    }
    stats.pending.store(waiting.len() as u64, Ordering::Relaxed);
    let (tx, rx) = mpsc::unbounded_channel();
    for path in waiting {
        let _ = tx.send(path);
    }
    let spool = Spool {
        config: config.recording.clone(),
        dir,
        stats: stats.clone(),
    };
    tokio::spawn(spool.run(rx));
    Ok(Arc::new(move |finished: Finished| match finished.error {
        None => {
            tracing::info!(file = %finished.path.display(), seconds = finished.seconds, "recording complete");
            stats.pending.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(finished.path);
        }
        Some(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(file = %finished.path.display(), error = %e, "recording failed");
        }
    }))
}

struct Spool {
    config: RecordingConfig,
    dir: PathBuf,
    stats: Arc<RecordingStats>,
}

/// A recording waiting for its upload, and when to try next.
struct Waiting {
    path: PathBuf,
    tries: u32,
    due: Instant,
}

impl Spool {
    async fn run(self, mut finished: mpsc::UnboundedReceiver<PathBuf>) {
        let Some(url) = self.config.upload_url.clone() else {
            // Nothing to upload to: the files stay where they are.
            while finished.recv().await.is_some() {}
            return;
        };
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(self.config.upload_timeout_s.max(1)))
            .build()
        {
            Ok(c) => c,
            Err(e) => return tracing::error!(error = %e, "recording: no HTTP client; uploads off"),
        };
        let mut queue: VecDeque<Waiting> = VecDeque::new();
        loop {
            let next = queue.iter().map(|w| w.due).min();
            tokio::select! {
                path = finished.recv() => match path {
                    Some(path) => queue.push_back(Waiting { path, tries: 0, due: Instant::now() }),
                    None => return,
                },
                _ = sleep_until(next) => {}
            }
            let now = Instant::now();
            let Some(at) = queue.iter().position(|w| w.due <= now) else {
                continue;
            };
            let Some(mut w) = queue.remove(at) else {
                continue;
            };
            match self.upload(&client, &url, &w.path).await {
                Ok(()) => {
                    self.stats.uploaded.fetch_add(1, Ordering::Relaxed);
                    self.stats.pending.fetch_sub(1, Ordering::Relaxed);
                    tracing::info!(file = %w.path.display(), "recording uploaded");
                    self.done_with(&w.path);
                }
                Err(e) => {
                    self.stats.upload_failures.fetch_add(1, Ordering::Relaxed);
                    w.tries += 1;
                    let wait = Duration::from_secs(
                        (1u64 << w.tries.min(20)).min(self.config.retry_max_s.max(1)),
                    );
                    tracing::warn!(file = %w.path.display(), tries = w.tries, retry_in_s = wait.as_secs(), error = %e, "recording upload failed; kept in the spool");
                    w.due = now + wait;
                    queue.push_back(w);
                }
            }
        }
    }

    async fn upload(&self, client: &reqwest::Client, url: &str, path: &Path) -> anyhow::Result<()> {
        let meta: serde_json::Value = match tokio::fs::read(with_suffix(path, ".json")).await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        let field = |name: &str| meta[name].as_str().unwrap_or_default().to_owned();
        let record = match field("record") {
            r if r.is_empty() => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            r => r,
        };
        let url = url
            .replace("{record}", &record)
            .replace("{call}", &field("call"));
        let file = tokio::fs::File::open(path).await?;
        let length = file.metadata().await?.len();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let request = match self.config.upload_method {
            UploadMethod::Put => client
                .put(&url)
                .header("Content-Type", media_type(path))
                .header("Content-Length", length)
                .header("X-Warden-Record", &record)
                .header("X-Warden-Call", field("call"))
                .header("X-Warden-Call-Id", field("call_id"))
                .body(reqwest::Body::from(file)),
            UploadMethod::Post => {
                let part = reqwest::multipart::Part::stream_with_length(file, length)
                    .file_name(name)
                    .mime_str(media_type(path))?;
                let mut form = reqwest::multipart::Form::new().text("record", record.clone());
                for key in ["call", "call_id", "caller", "callee"] {
                    form = form.text(key, field(key));
                }
                client.post(&url).multipart(form.part("file", part))
            }
        };
        let request = match &self.config.upload_token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await?;
        if !response.status().is_success() {
            anyhow::bail!("{url} answered {}", response.status());
        }
        Ok(())
    }

    /// Uploaded: the file leaves the spool (kept in `uploaded/` with `keep_local`).
    fn done_with(&self, path: &Path) {
        let meta = with_suffix(path, ".json");
        let kept = if self.config.keep_local {
            let into = self.dir.join("uploaded");
            let moved = std::fs::create_dir_all(&into).and_then(|_| {
                let name = path.file_name().unwrap_or_default();
                std::fs::rename(path, into.join(name))
            });
            if let Err(e) = &moved {
                tracing::warn!(file = %path.display(), error = %e, "recording: cannot keep the uploaded file");
            }
            moved.is_ok()
        } else {
            false
        };
        if !kept && let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(file = %path.display(), error = %e, "recording: cannot remove the uploaded file");
        }
        let _ = std::fs::remove_file(meta);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
