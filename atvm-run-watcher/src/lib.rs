//! atvm-run-watcher: follows one run of a build, decides its final state and posts
//! COMPLETED/FAILED results to Mattermost exactly once (docs/watcher-service.md). The ExecStart of
//! `atvm-run-watcher@.service`.

pub mod clock;
pub mod ctx;
pub mod decide;
pub mod deliver;
pub mod message;
pub mod observe;
pub mod persist;
pub mod record;
pub mod resend;
pub mod resume;
pub mod shutdown;
pub mod wake;
pub mod watch;

use atvm_common::config::MattermostConfig;
use atvm_common::error::{Error, Result};
use atvm_common::fsutil::Lock;
use atvm_common::mattermost::{self, Attempt, Client, Payload, Poster};
use atvm_common::systemctl::Systemctl;
use atvm_common::{BuildName, Paths, logging};
use clap::Parser;
use decide::Timing;
use std::sync::Arc;
use std::time::Duration;
use watch::{Sink, Watcher};

const EXAMPLE: &str = "\
Examples:
  # What systemd runs for atvm-run-watcher@<build>.service:
  atvm-run-watcher --build-name e2e-redhat9.6-ubuntu24.04-w2k25-fc

  # Preview once, changing nothing; the message goes to <state-dir>/post.json:
  atvm-run-watcher --build-name e2e-redhat9.6-ubuntu24.04-w2k25-fc --once --dry-run

  # Check the Mattermost configuration with one labelled test message:
  atvm-run-watcher --test-post

  # After Mattermost was down longer than the retry window: send the failed posts again:
  atvm-run-watcher --build-name e2e-redhat9.6-ubuntu24.04-w2k25-fc --resend

Exit status: 0 final state reached and handled (or stopped by SIGTERM; --resend: every
failed post delivered, or none to send), 1 a post failed for good (again; --resend: one not
delivered, stopped included), 2 bad arguments, 4 another watcher or resend holds the lock,
78 no webhook configured or an invalid setting.

Environment:
  ATVM_STATE_ROOT              state directories [default: /var/lib/atvm-run-watcher]
  ATVM_PACKAGE_ROOT            where the tools are installed [default: /opt/atvm-watcher-service]
  ATVM_LOG_DIR                 where a fallback runner's log is [default: /tmp]
  ATVM_REPORTER_DIR            mochawesome reports [default: $ATVM_AUTOMATION_ROOT/cypress/cmcReporter]
  ATVM_AUTOMATION_ROOT         [default: /root/cdc-e2e-cyp-12.17.4]
  ATVM_INVENTORY               the VM inventory [default: $ATVM_PACKAGE_ROOT/vm-inventory.md]
  ATVM_ENV_FILE                the env file: its MATTERMOST_ATVM_* and ATVM_* lines apply where the environment sets none [default: /etc/atvm-run-watcher.env]
  MATTERMOST_ATVM_WEBHOOK      the webhook (a secret: only its host is ever shown)
  MATTERMOST_ATVM_CHANNEL      a channel to post to instead of the webhook's own
  MATTERMOST_ATVM_FORMAT       `text` for a plain Markdown message (old servers) [default: attachment]
  MATTERMOST_ATVM_NOTIFY       `failed` to post FAILED results only [default: all]
  MATTERMOST_ATVM_MENTION      @name tokens put in FAILED posts, e.g. @qa-oncall; at most 120 characters [default: none]
  ATVM_POLL_SECONDS, ATVM_GRACE_SECONDS, ATVM_HANG_MINUTES, ATVM_START_TIMEOUT_SECONDS,
  ATVM_POST_RETRY_SECONDS      the timing flags above (the flag wins)
  ATVM_WATCH_EVENTS            `off`: look every --poll-seconds instead of waiting on file and process events [default: on]
  ATVM_SYSTEMCTL               the program --resume-all uses for systemctl [default: systemctl]
  ATVM_BOOT_ID                 set by the unit (%b): the current boot [default: the kernel's]
  JOURNAL_STREAM               set by systemd: lines carry journal priorities";

/// A positive number of seconds. The value is not repeated in the error: from a broken
/// env file it may hold the next line, the webhook's.
fn seconds(text: &str) -> std::result::Result<f64, String> {
    match text.trim().parse::<f64>() {
        // Up to about 30 years: more does not fit a timer.
        Ok(v) if v.is_finite() && v > 0.0 && v <= 1e9 => Ok(v),
        _ => Err("not a positive number up to 1e9".to_string()),
    }
}

#[derive(Debug, Parser)]
#[command(name = "atvm-run-watcher", version, about = "Follow one Cypress run, decide its final state and post it to Mattermost once", after_help = EXAMPLE)]
pub struct Cli {
    /// Build name to watch (the unit instance).
    #[arg(
        long,
        value_name = "BUILD",
        required_unless_present_any = ["test_post", "resume_all"],
        allow_hyphen_values = true
    )]
    pub build_name: Option<String>,
    /// Seconds between safety-net looks (the watcher wakes on events in between).
    #[arg(long, env = "ATVM_POLL_SECONDS", hide_env_values = true, default_value = "5", value_name = "SECONDS", value_parser = seconds)]
    pub poll_seconds: f64,
    /// Categorized runs: how long the runner must stay inactive before the run ends.
    #[arg(long, env = "ATVM_GRACE_SECONDS", hide_env_values = true, default_value = "120", value_name = "SECONDS", value_parser = seconds)]
    pub grace_seconds: f64,
    /// HUNG when the runner is alive but neither log nor reporter changed for this long.
    #[arg(long, env = "ATVM_HANG_MINUTES", hide_env_values = true, default_value = "90", value_name = "MINUTES", value_parser = seconds)]
    pub hang_minutes: f64,
    /// UNKNOWN when no runner for this run appeared within this long of the request.
    #[arg(long, env = "ATVM_START_TIMEOUT_SECONDS", hide_env_values = true, default_value = "900", value_name = "SECONDS", value_parser = seconds)]
    pub start_timeout_seconds: f64,
    /// Total window for retrying a post while Mattermost is unreachable.
    #[arg(long, env = "ATVM_POST_RETRY_SECONDS", hide_env_values = true, default_value = "1800", value_name = "SECONDS", value_parser = seconds)]
    pub post_retry_seconds: f64,
    /// Deliver what is owed, evaluate once, save the state and exit.
    #[arg(long)]
    pub once: bool,
    /// Preview: write the would-be payload to post.json and nothing else (no state, no lock, no webhook needed).
    #[arg(long)]
    pub dry_run: bool,
    /// Send one labelled test message to the configured webhook and exit.
    #[arg(long, conflicts_with_all = ["once", "dry_run", "resume_all"])]
    pub test_post: bool,
    /// Start the watcher unit of every run that is not final or still owes a post (what
    /// the boot-time unit atvm-run-watcher-resume.service runs after a reboot).
    #[arg(long, conflicts_with_all = ["once", "dry_run", "build_name"])]
    pub resume_all: bool,
    /// Send again each post of the build that failed for good (after an outage longer
    /// than the retry window), with its stored payload; exit 4 while its watcher runs.
    #[arg(long, requires = "build_name", conflicts_with_all = ["once", "dry_run", "test_post", "resume_all"])]
    pub resend: bool,
    /// With --resend: only this group's post (its key, e.g. `01-linux`, or group name).
    #[arg(long, value_name = "KEY", requires = "resend")]
    pub group: Option<String>,
}

impl Cli {
    pub fn timing(&self) -> Timing {
        Timing {
            poll: Duration::from_secs_f64(self.poll_seconds),
            grace: Duration::from_secs_f64(self.grace_seconds),
            hang: Duration::from_secs_f64(self.hang_minutes * 60.0),
            start_timeout: Duration::from_secs_f64(self.start_timeout_seconds),
            post_retry: Duration::from_secs_f64(self.post_retry_seconds),
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    let paths = Paths::from_env()?;
    let timing = cli.timing();
    if cli.test_post {
        return test_post(&paths, timing.post_retry);
    }
    if cli.resume_all {
        return resume::resume_all(&paths, &Systemctl::from_env()?);
    }
    let build = BuildName::parse(cli.build_name.as_deref().unwrap_or_default())?;
    if cli.resend {
        return resend::run(&paths, &build, cli.group.as_deref(), timing.post_retry);
    }
    let sink = sink(cli.dry_run, &paths, timing)?;
    let sd = paths.state_dir(&build);
    sd.check()?;
    let request = sd.read_request()?.ok_or_else(|| {
        Error::file(
            "no request for this build: start the watcher with start-atvm-run-watcher",
            sd.request(),
        )
    })?;
    // A dry run writes nothing (but post.json), so it takes no lock and can preview a run
    // while its watcher works. A real watcher holds watcher.lock; a start helper's probe of
    // it may hold it for an instant, so it tries for a moment before it exits 4.
    let _lock = match cli.dry_run {
        true => None,
        false => Some(
            Lock::try_exclusive_within(&sd.watcher_lock(), Duration::from_secs(1)).map_err(
                |e| match e {
                    Error::LockHeld { path } => Error::AlreadyRunning {
                        what: format!(
                            "another watcher of {build} is running; see it with atvm-run-status --build-name {build}, or preview with --once --dry-run"
                        ),
                        unit: path.display().to_string(),
                    },
                    other => other,
                },
            )?,
        ),
    };
    let shutdown = shutdown::Shutdown::install()?;
    let dry_run = sink.is_dry_run();
    let run_id = request.run_id.clone();
    let watched = Watcher::resume(paths, build, request, timing, sink, &shutdown)
        .and_then(|mut watcher| watcher.run(cli.once));
    if let Err(e) = &watched
        && !dry_run
    {
        note_fatal(&sd, &run_id, e);
    }
    watched
}

/// A watcher ending with an error that waiting does not cure (an unreadable file, say)
/// leaves the unit failed and its run not final: put why in the run's `state.json`
/// (`details.watcher_error`), where `atvm-run-status` shows it. Best effort: the state
/// itself may be what cannot be read or written. A post that failed for good is already
/// in the post's own record.
fn note_fatal(sd: &atvm_common::StateDir, run_id: &str, e: &Error) {
    // Only a file the watcher could not use: not another watcher's lock, a usage or
    // configuration error, or a full disk (waited out, not fatal).
    if !matches!(e, Error::File { .. } | Error::Io { .. }) || e.is_transient() {
        return;
    }
    let _ = sd.update_state(|current| {
        Ok((
            current
                .filter(|s| s.run_id == run_id && !s.is_final)
                .map(|mut s| {
                    s.details
                        .insert("watcher_error".into(), serde_json::json!(e.to_string()));
                    s
                }),
            (),
        ))
    });
}

/// Where results go: Mattermost (the webhook must be configured), or with `--dry-run`
/// `post.json` files (no webhook needed).
fn sink(dry_run: bool, paths: &Paths, timing: Timing) -> Result<Sink> {
    if dry_run {
        // No webhook needed for a preview, but what is set must be valid (exit 78, as a
        // start): who is named, what is posted, the channel. A preview of a configuration
        // the real watcher refuses would mislead.
        let config = MattermostConfig::load(&paths.env_file)?;
        return Ok(Sink::DryRun {
            channel: config.channel,
            format: config.format,
            posting: config.posting,
        });
    }
    let config = MattermostConfig::load(&paths.env_file)?;
    let webhook = config.require_webhook(&paths.env_file)?.clone();
    let poster: Arc<dyn Poster> = Arc::new(Client::new(webhook, timing.post_retry));
    Ok(Sink::Mattermost {
        poster,
        channel: config.channel,
        format: config.format,
        posting: config.posting,
    })
}

fn test_post(paths: &Paths, window: Duration) -> Result<()> {
    let config = MattermostConfig::load(&paths.env_file)?;
    let webhook = config.require_webhook(&paths.env_file)?.clone();
    let payload = Payload::test(
        &mattermost::host_name(),
        config.channel.as_deref(),
        config.format,
    );
    let client = Client::new(webhook.clone(), window);
    match client.attempt(&payload.to_json()) {
        Attempt::Delivered => {
            logging::info(format!("test message delivered ({})", webhook.host()));
            Ok(())
        }
        Attempt::Retry { error, .. } | Attempt::Permanent { error } => Err(Error::failed(format!(
            "test message not delivered: {error}"
        ))),
    }
}
