//! The operator commands (`jetway subscriptions`, `jetway dlq ...`,
//! `jetway pause|resume`): a thin client of a running sidecar's `/v1` API
//! (SPEC sections 5 and 6), printing tables for people and the API's JSON
//! for scripts (`--json`). docs/cli.md describes them and their exit codes.
//!
//! `subscriptions` holds `jetway subscriptions|pause|resume`, `dlq` the
//! dead-letter commands, `client` the HTTP client of the sidecar and
//! `output` the tables and JSON lines they print.

mod client;
mod dlq;
mod output;
mod subscriptions;

use std::process::ExitCode;

use clap::{Args, Subcommand};

pub use dlq::Dlq;

/// Where the sidecar's API is when neither `--api` nor `JETWAY_CLI_API` says.
pub const DEFAULT_API: &str = "http://127.0.0.1:4480";

/// Exit codes (docs/cli.md); 0 is success.
pub mod exit {
    /// The sidecar answered with an error (bad request, NATS unavailable, ...).
    pub const API_ERROR: u8 = 1;
    /// Wrong arguments (clap's own code).
    pub const USAGE: u8 = 2;
    /// `dlq replay` ran, but some dead letters failed again and stay.
    pub const REPLAY_FAILED: u8 = 3;
    /// No such subscription or dead letter.
    pub const NOT_FOUND: u8 = 4;
    /// The sidecar could not be reached (sysexits EX_UNAVAILABLE).
    pub const UNREACHABLE: u8 = 69;
    /// Token missing or wrong (sysexits EX_NOPERM).
    pub const UNAUTHORIZED: u8 = 77;
}

/// How to reach the sidecar, and how to print.
#[derive(Args, Debug, Clone)]
pub struct Remote {
    /// The sidecar's API (`api.listen`).
    #[arg(long, env = "JETWAY_CLI_API", default_value = DEFAULT_API)]
    pub api: String,
    /// The sidecar's `api.token`, when it has one.
    #[arg(long, env = "JETWAY_CLI_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The operator commands, flattened into `jetway`'s own.
#[derive(Subcommand, Debug)]
pub enum Operator {
    /// List the subscriptions: state, pending, in flight, dead letters.
    Subscriptions {
        #[command(flatten)]
        remote: Remote,
    },
    /// Read, replay and discard dead letters.
    Dlq {
        #[command(subcommand)]
        command: Dlq,
    },
    /// Stop fetching for a subscription (deliveries in flight finish).
    Pause {
        subscription: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Fetch and deliver again for a paused subscription.
    Resume {
        subscription: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Why a command failed; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach the sidecar at {api}: {reason}. Is jetway running there? Set --api or JETWAY_CLI_API")]
    Unreachable { api: String, reason: String },
    #[error(
        "the sidecar at {api} needs a token: give its api.token with --token or JETWAY_CLI_TOKEN"
    )]
    TokenMissing { api: String },
    #[error("the sidecar at {api} refused the token (401): check --token or JETWAY_CLI_TOKEN against its api.token")]
    TokenWrong { api: String },
    #[error("{0}")]
    NotFound(String),
    #[error("the sidecar answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{failed} dead letters failed again and stay in the DLQ")]
    ReplayFailed { failed: u64 },
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Unreachable { .. } => exit::UNREACHABLE,
            CliError::TokenMissing { .. } | CliError::TokenWrong { .. } => exit::UNAUTHORIZED,
            CliError::NotFound(_) => exit::NOT_FOUND,
            CliError::Api { .. } => exit::API_ERROR,
            CliError::Invalid(_) => exit::USAGE,
            CliError::ReplayFailed { .. } => exit::REPLAY_FAILED,
        }
    }
}

/// Runs one operator command; prints its output or its error.
pub fn main(command: Operator) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jetway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(command)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err((out, e)) => {
            print!("{out}");
            eprintln!("jetway: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The output of a command, or (what it printed before failing, why).
async fn run(command: Operator) -> Result<String, (String, CliError)> {
    match command {
        Operator::Subscriptions { remote } => subscriptions::list(&remote).await,
        Operator::Pause {
            subscription,
            remote,
        } => subscriptions::pause_or_resume(&remote, &subscription, "pause").await,
        Operator::Resume {
            subscription,
            remote,
        } => subscriptions::pause_or_resume(&remote, &subscription, "resume").await,
        Operator::Dlq { command } => dlq::run(command).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_kind_has_its_exit_code() {
        let api = "http://127.0.0.1:1".to_string();
        for (e, code) in [
            (
                CliError::Unreachable {
                    api: api.clone(),
                    reason: "refused".into(),
                },
                69,
            ),
            (CliError::TokenMissing { api: api.clone() }, 77),
            (CliError::TokenWrong { api }, 77),
            (CliError::NotFound("x".into()), 4),
            (
                CliError::Api {
                    status: 503,
                    message: "x".into(),
                },
                1,
            ),
            (CliError::ReplayFailed { failed: 1 }, 3),
            (CliError::Invalid("x".into()), 2),
        ] {
            assert_eq!(e.exit_code(), code, "{e}");
        }
    }
}
