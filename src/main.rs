//! The `jetway` command: parses arguments, loads the config, starts
//! telemetry and hands over to the library.

#![forbid(unsafe_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use jetway::config::{Config, EXIT_INVALID};

mod cli;

#[derive(Parser)]
#[command(
    name = "jetway",
    version,
    about = "An event sidecar for NATS JetStream: HTTP in, HTTP out, at least once"
)]
struct Cli {
    /// Config file (same as `jetway run --config FILE`).
    #[arg(long, global = false)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config: print every problem, exit 0 (valid) or 64.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the NATS permissions this config needs (a nats-server user's
    /// `permissions` block): least privilege for the sidecar's NATS user.
    Permissions {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start a throwaway nats-server and the sidecar against it.
    Dev {
        /// Config to use instead of the built-in example.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Add the sidecar to Kubernetes workloads annotated jetway.io/inject: "enabled".
    Inject {
        /// YAML file, or - for stdin.
        #[arg(short = 'f', long = "filename", default_value = "-")]
        file: String,
        /// The same as -f: a file, or - for stdin.
        #[arg(value_name = "FILE", conflicts_with = "file")]
        input: Option<String>,
        /// Sidecar image.
        #[arg(long, default_value = jetway::inject::DEFAULT_IMAGE)]
        image: String,
        /// Add a regular container instead of a native sidecar (Kubernetes < 1.29).
        #[arg(long)]
        legacy: bool,
    },
    /// Operator commands against a running sidecar (docs/cli.md).
    #[command(flatten)]
    Operator(cli::Operator),
    /// Print the messages stored on a subject as they arrive (wildcards allowed).
    Tail {
        /// The sidecar's API.
        #[arg(long, env = "JETWAY_CLI_API", default_value = "http://127.0.0.1:4480")]
        api: String,
        /// The sidecar's api.token, if set.
        #[arg(long, env = "JETWAY_CLI_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Start at this stream sequence (inclusive); without it, new messages only.
        #[arg(long)]
        from: Option<u64>,
        subject: String,
    },
    /// Check or register an event schema through a running sidecar (for CI).
    Schema {
        #[command(subcommand)]
        action: SchemaAction,
    },
}

#[derive(Subcommand)]
enum SchemaAction {
    /// Dry run: print every violation; exit 1 when incompatible.
    Check(SchemaArgs),
    /// Register FILE as the next version of the type; exit 1 when refused.
    Register(SchemaArgs),
}

#[derive(clap::Args)]
struct SchemaArgs {
    /// The event type, e.g. order.created.
    #[arg(long = "type")]
    event_type: String,
    /// The JSON Schema file.
    file: PathBuf,
    /// The sidecar's API.
    #[arg(long, default_value = "http://127.0.0.1:4480")]
    api: String,
    /// The sidecar's api.token, if it has one.
    #[arg(long, env = "JETWAY_CLI_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

fn schema(args: SchemaArgs, dry_run: bool) -> Result<(), ExitCode> {
    let outcome = runtime()?.block_on(jetway::schemas::cli::run(
        &args.api,
        args.token.as_deref(),
        &args.event_type,
        &args.file,
        dry_run,
    ));
    match outcome {
        jetway::schemas::cli::Outcome::Ok => Ok(()),
        jetway::schemas::cli::Outcome::Refused => Err(ExitCode::from(1)),
        jetway::schemas::cli::Outcome::Failed(e) => {
            eprintln!("jetway schema: {e}");
            Err(ExitCode::from(2))
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("jetway: {}: {e}", path.display());
        ExitCode::from(EXIT_INVALID as u8)
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("jetway: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

fn run(path: PathBuf) -> Result<(), ExitCode> {
    let config = load(&path)?;
    jetway::telemetry::init(&config.log);
    runtime()?.block_on(async {
        // The process's memory, not one sidecar's: here, not in `run`.
        tokio::spawn(jetway::memory::give_back_when_quiet());
        let listeners = jetway::Listeners::bind(&config).await.map_err(|e| {
            tracing::error!(error = %e, "cannot bind the listeners");
            ExitCode::FAILURE
        })?;
        jetway::run(config, listeners, jetway::shutdown::signal())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "jetway failed");
                match e {
                    jetway::RunError::Schemas(_) => {
                        eprintln!("jetway: {e}");
                        ExitCode::from(EXIT_INVALID as u8)
                    }
                    _ => ExitCode::FAILURE,
                }
            })
    })
}

fn inject(file: &str, image: String, legacy: bool) -> Result<(), ExitCode> {
    let input = if file == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map(|_| s)
    } else {
        std::fs::read_to_string(file)
    }
    .map_err(|e| {
        eprintln!("jetway inject: cannot read {file}: {e}");
        ExitCode::FAILURE
    })?;
    let opts = jetway::inject::InjectOptions { image, legacy };
    let out = jetway::inject::inject(&input, &opts).map_err(|e| {
        eprintln!("jetway inject: {e}");
        ExitCode::from(EXIT_INVALID as u8)
    })?;
    print!("{out}");
    Ok(())
}

fn main() -> ExitCode {
    // Before any other thread exists (the allocator's arenas).
    jetway::memory::use_one_arena();
    let cli = Cli::parse();
    let result = match (cli.command, cli.config) {
        (Some(Command::Run { config }), _) | (None, Some(config)) => run(config),
        (Some(Command::Check { config }), _) => {
            load(&config).map(|_| println!("{}: valid", config.display()))
        }
        (Some(Command::Permissions { config }), _) => load(&config)
            .map(|c| print!("{}", jetway::permissions::for_config(&c).to_server_config())),
        (Some(Command::Dev { config }), _) => runtime().and_then(|rt| {
            rt.block_on(jetway::dev::dev(config.as_deref()))
                .map_err(|e| {
                    eprintln!("jetway dev: {e}");
                    ExitCode::FAILURE
                })
        }),
        (
            Some(Command::Inject {
                file,
                input,
                image,
                legacy,
            }),
            _,
        ) => inject(input.as_deref().unwrap_or(&file), image, legacy),
        (Some(Command::Operator(command)), _) => return cli::main(command),
        (
            Some(Command::Tail {
                api,
                token,
                from,
                subject,
            }),
            _,
        ) => {
            let options = jetway::tail::TailOptions {
                api,
                token,
                from,
                subject,
            };
            runtime().and_then(|rt| {
                rt.block_on(jetway::tail::tail(
                    &options,
                    &mut std::io::stdout(),
                    jetway::shutdown::signal(),
                ))
                .map_err(|e| {
                    eprintln!("jetway tail: {e}");
                    ExitCode::FAILURE
                })
            })
        }
        (Some(Command::Schema { action }), _) => match action {
            SchemaAction::Check(args) => schema(args, true),
            SchemaAction::Register(args) => schema(args, false),
        },
        (None, None) => {
            eprintln!("jetway: give a command (run, check, dev, inject, tail) or --config FILE; see jetway --help");
            Err(ExitCode::from(EXIT_INVALID as u8))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}
