//! `dramaturg`: see and operate dramaturg's queues on Redis, RabbitMQ, PostgreSQL and SQLite.
//!
//! `dramaturg --help` explains the commands and the exit codes; the
//! operations guide (`docs/operations.md`) is the reference.

mod cli;
mod commands;
mod failure;
mod table;
mod web;

use std::process::ExitCode;

use clap::Parser;
use dramaturg::{App, Json, MessagePack};

use crate::cli::{Cli, Command, EncoderName};
use crate::failure::Failure;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(output) => {
            if json {
                println!("{}", output.json);
            } else {
                print!("{}", output.text);
            }
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("error: {failure}");
            failure.exit_code()
        }
    }
}

async fn run(cli: Cli) -> Result<commands::Output, Failure> {
    let Some(url) = cli.broker else {
        return Err(Failure::usage("no broker: give --broker URL or set DRAMATURG_BROKER (see --help)"));
    };
    // The library keeps passwords out of its errors.
    let broker = dramaturg::connect(&url).await?;
    let builder = dramaturg::app_shared(broker);
    let builder = match cli.encoder {
        Some(EncoderName::Msgpack) => builder.encoder(MessagePack),
        Some(EncoderName::Json) => builder.encoder(Json),
        None => builder,
    };
    // The dashboard's abort requests go where the workers' are.
    let builder = match &cli.command {
        Command::Web { store: Some(url), .. } => commands::with_abort_store(builder, url).await?,
        _ => builder,
    };
    let app: App = builder.build().map_err(|e| Failure::usage(e.to_string()))?;
    commands::run(&app, cli.command).await
}
