//! The command line: what `dramaturg --help` shows.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// See and operate dramaturg's queues on Redis, RabbitMQ, PostgreSQL and SQLite.
///
/// Every command talks to the broker at --broker (or DRAMATURG_BROKER):
/// redis://[:password@]host[:port][/db][?namespace=ns],
/// redis+cluster://[:password@]host:port,host:port/[?namespace=ns] (a Redis
/// Cluster), amqp://user:password@host[:port]/vhost,
/// postgres://user[:password]@host[:port]/database[?schema=s] or
/// sqlite://path/to/jobs.db (the file the workers use). Passwords are never
/// printed.
///
/// Output is a table for people; --json prints JSON for scripts (one
/// document on stdout; errors go to stderr as text).
///
/// Exit codes: 0 done; 1 the broker failed (unreachable, refused);
/// 2 bad usage or input (unknown flag, bad URL, bad JSON, bad id);
/// 3 not found (no dead letter with that id); 4 the broker cannot do this
/// (RabbitMQ cannot list queues or workers).
#[derive(Debug, Parser)]
#[command(name = "dramaturg", version, max_term_width = 100)]
pub(crate) struct Cli {
    /// The broker's URL.
    #[arg(long, env = "DRAMATURG_BROKER", global = true, hide_env_values = true, value_name = "URL")]
    pub(crate) broker: Option<String>,

    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// How the apps of this broker encode messages (the default follows
    /// the broker: Dramatiq's JSON for `?protocol=dramatiq`, MessagePack
    /// otherwise).
    #[arg(long, global = true, value_enum)]
    pub(crate) encoder: Option<EncoderName>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// An app's encoder.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum EncoderName {
    /// MessagePack, dramaturg's default.
    Msgpack,
    /// JSON (`App::builder(..).encoder(Json)`).
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Messages per queue: ready, delayed, in flight, dead.
    ///
    /// Without names, every queue the broker holds messages for (Redis);
    /// RabbitMQ cannot list its queues, so name them there.
    Queues {
        /// The queues to show (with their app's queue prefix).
        queues: Vec<String>,
    },
    /// Dead letters of a queue: list, show, replay, delete.
    #[command(subcommand)]
    Dead(Dead),
    /// Asks the workers to abort a message (needs the abort middleware).
    ///
    /// A message not started yet is skipped when it comes up; one that is
    /// running is interrupted (--cancel), or told through
    /// `ctx.abort_requested()` and given --grace to stop first. The request
    /// lasts --ttl; an id that no message has is not an error (the message
    /// may not have been sent yet).
    Abort {
        /// The message's id (26 characters, or a UUID).
        id: String,
        /// Cancel mode: skip the message if it has not started, leave it
        /// alone if it has.
        #[arg(long)]
        cancel: bool,
        /// How long a running actor may take to stop by itself.
        #[arg(long, value_parser = duration, default_value = "0s", value_name = "DURATION")]
        grace: Duration,
        /// How long the request is kept.
        #[arg(long, value_parser = duration, default_value = "90s", value_name = "DURATION")]
        ttl: Duration,
        /// Where abort requests are kept when the broker has no store of its
        /// own (RabbitMQ: the Redis or PostgreSQL store your workers' abort
        /// middleware uses).
        #[arg(long, env = "DRAMATURG_ABORT_STORE", hide_env_values = true, value_name = "STORE_URL")]
        store: Option<String>,
    },
    /// Pauses a queue for every worker: within a second no worker claims
    /// its messages (work already started finishes); sends still enqueue.
    /// The pause is kept on the broker until `resume`, across worker
    /// restarts. Not in Python Dramatiq's layout.
    Pause {
        /// The queue (with its app's queue prefix).
        queue: String,
    },
    /// Resumes a paused queue: within a second its workers claim again.
    Resume {
        /// The queue (with its app's queue prefix).
        queue: String,
    },
    /// Removes every ready and delayed message of a queue (not the dead
    /// letters, not the messages in flight).
    Purge {
        /// The queue.
        queue: String,
    },
    /// The workers the broker knows: last heartbeat, queues, messages held.
    ///
    /// Redis only: RabbitMQ tells no client which workers are connected.
    Workers,
    /// Serves the web dashboard: queues, messages, dead letters, workers,
    /// lookup by id, and (unless --read-only) replay, delete, abort, pause,
    /// resume and purge.
    ///
    /// It listens on 127.0.0.1 unless --bind says otherwise; actions are
    /// POSTs checked against CSRF. Give --token (or DRAMATURG_WEB_TOKEN) to
    /// ask every request for it: as a bearer token, or as the password of
    /// the browser's login prompt (any user name). Runs until Ctrl-C.
    Web {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
        bind: std::net::SocketAddr,
        /// Show, and refuse every action.
        #[arg(long)]
        read_only: bool,
        /// Ask every request for this token.
        #[arg(long, env = "DRAMATURG_WEB_TOKEN", hide_env_values = true, value_name = "TOKEN")]
        token: Option<String>,
        /// Queues to show besides those the broker lists (RabbitMQ lists
        /// none: name them here).
        #[arg(long = "queue", short, value_name = "QUEUE")]
        queues: Vec<String>,
        /// Where abort requests are kept when the broker has no store of its
        /// own (RabbitMQ: the Redis or PostgreSQL store your workers' abort
        /// middleware uses).
        #[arg(long, env = "DRAMATURG_ABORT_STORE", hide_env_values = true, value_name = "STORE_URL")]
        store: Option<String>,
    },
    /// Sends a message to an actor, with its arguments as JSON.
    ///
    /// The arguments are encoded as the app encodes them (see --encoder);
    /// a worker dead-letters a message whose actor it does not know or
    /// whose arguments do not fit the actor.
    Send {
        /// The actor's name.
        actor: String,
        /// Its queue (with the app's queue prefix).
        #[arg(long, short)]
        queue: String,
        /// Its arguments, as JSON: an object of the actor's fields.
        #[arg(long, default_value = "null", value_name = "JSON")]
        args: String,
        /// Deliver it after this delay (e.g. 30s, 5m).
        #[arg(long, value_parser = duration, value_name = "DURATION")]
        delay: Option<Duration>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum Dead {
    /// Lists a queue's dead letters, oldest first.
    List {
        #[command(flatten)]
        queue: QueueArg,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Shows one dead letter, decoded: id, actor, arguments, retries,
    /// reason, time.
    Show {
        #[command(flatten)]
        queue: QueueArg,
        /// The message's id, or the dead letter's key.
        id: String,
    },
    /// Puts dead letters back in their queue.
    Replay {
        #[command(flatten)]
        queue: QueueArg,
        #[command(flatten)]
        which: Which,
        /// Give the messages their retries back (retry count 0); without,
        /// a message that used up its retries fails for good at its next
        /// failure.
        #[arg(long)]
        reset_retries: bool,
    },
    /// Deletes dead letters for good.
    Delete {
        #[command(flatten)]
        queue: QueueArg,
        #[command(flatten)]
        which: Which,
    },
}

/// The queue of a dead-letter command.
#[derive(Debug, Args)]
pub(crate) struct QueueArg {
    /// The queue whose dead letters these are.
    #[arg(long, short)]
    pub(crate) queue: String,
}

/// One dead letter or all of them.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct Which {
    /// The message's id, or the dead letter's key.
    pub(crate) id: Option<String>,
    /// Every dead letter of the queue.
    #[arg(long)]
    pub(crate) all: bool,
}

/// A duration such as `5s`, `1m30s`, `250ms`.
fn duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}
