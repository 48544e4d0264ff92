//! The `warden` command: `warden [run]` starts the server, `warden check` validates the config,
//! `warden codecs` lists the codecs this build has, `warden reload` has the running
//! server reload its dialplan, `warden ctl` operates it through the admin API.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use warden::config::Config;

/// mimalloc rather than glibc's malloc: see README "Benchmarks" for the figures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Warden: a SIP B2BUA application server (registrar + bridged calls).
///
/// With no config file Warden listens on 127.0.0.1:5060 (UDP and TCP), keeps registrations in
/// data/warden.sqlite and bridges calls between registered users.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// TOML configuration file overriding the embedded defaults.
    #[arg(short, long, global = true, env = "WARDEN_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server (the default).
    Run,
    /// Validate the configuration and the dialplan it names, and exit (0 when valid).
    Check,
    /// List the codecs this build can transcode (Opus needs `--features opus`).
    Codecs,
    /// Check the dialplan, then have the running server reload it (SIGHUP to the process
    /// in `server.pid_file`).
    Reload,
    /// Operate the running server through its admin API (`admin.listen`, `admin.token`).
    #[command(subcommand)]
    Ctl(warden::ctl::Ctl),
    /// Users who may authenticate, kept in the database (`database.path`) as HA1 values.
    #[command(subcommand)]
    User(warden::registrar::users::UserCommand),
}

fn load(path: &Option<PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::default()),
    }
}

fn print_codecs() {
    println!("{:<8} {:>6} {:>5}  pcm rates (Hz)", "codec", "clock", "pt");
    for c in warden_media::codec::all() {
        let pt = c
            .static_payload_type
            .map_or("dyn".to_owned(), |pt| pt.to_string());
        let rates: Vec<String> = c.pcm_rates.iter().map(u32::to_string).collect();
        println!(
            "{:<8} {:>6} {:>5}  {}",
            c.name,
            c.rtp_clock,
            pt,
            rates.join(" ")
        );
    }
}

/// `warden reload`: refuse a broken dialplan here, with its file and line, before the
/// server ever sees it; else signal the server.
fn reload(config: &Config) -> std::process::ExitCode {
    let plan = match warden::server::load_dialplan(config) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("warden: dialplan {e}; the server keeps its current plan");
            return std::process::ExitCode::from(2);
        }
    };
    let path = &config.server.pid_file;
    let pid = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse::<libc::pid_t>().ok())
        .filter(|pid| *pid > 0);
    let Some(pid) = pid else {
        eprintln!(
            "warden: no running server: {} is missing or unreadable",
            path.display()
        );
        return std::process::ExitCode::FAILURE;
    };
    // SAFETY: kill with a positive pid read from our pid file and a valid signal number.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        eprintln!(
            "warden: cannot signal process {pid}: {}",
            std::io::Error::last_os_error()
        );
        return std::process::ExitCode::FAILURE;
    }
    println!(
        "dialplan {} ({} rules) checked; reload sent to process {pid}",
        plan.origin,
        plan.rules.len()
    );
    std::process::ExitCode::SUCCESS
}

/// `warden user`: one command against the database, no server needed.
fn user(config: &Config, command: warden::registrar::users::UserCommand) -> std::process::ExitCode {
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(warden::registrar::users::run(config, command)));
    match outcome {
        Ok(text) => {
            print!("{text}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("warden: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::Codecs)) {
        print_codecs();
        return std::process::ExitCode::SUCCESS;
    }
    let config = match load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warden: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if matches!(cli.command, Some(Command::Reload)) {
        return reload(&config);
    }
    let command = match cli.command {
        Some(Command::Ctl(command)) => return warden::ctl::run(&config, command),
        Some(Command::User(command)) => return user(&config, command),
        other => other,
    };
    if matches!(command, Some(Command::Check)) {
        return match warden::server::load_dialplan(&config) {
            Ok(plan) => {
                println!(
                    "configuration ok; dialplan {}: {} rules",
                    plan.origin,
                    plan.rules.len()
                );
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("warden: dialplan {e}");
                std::process::ExitCode::from(2)
            }
        };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    if config.log.format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        // Colour only on a terminal: logs redirected to a file stay plain text.
        let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(colour)
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warden: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(warden::server::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("warden: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
