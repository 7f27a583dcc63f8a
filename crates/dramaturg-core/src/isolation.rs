//! Hard limits by process isolation: `#[actor(isolated)]` handlers run in
//! child processes that the worker can kill.
//!
//! Rust cannot stop a thread from outside; it can stop a process. An
//! isolated actor's messages are handed, one at a time, to a child process
//! — the same binary, started again — which runs the same typed handler and
//! sends back its result over a Unix socket. The worker kills the child
//! (SIGTERM, then SIGKILL after [`Isolation::kill_grace`]) when the attempt
//! is dropped: at its time limit, on abort, at the end of the grace period
//! of a shutdown. A runaway loop, a hang in C code, a crash or a leak then
//! costs the child, never the worker:
//!
//! - a child whose resident memory passes [`Isolation::max_child_rss`] is
//!   killed and its attempt fails ([`IsolationError::MaxRss`]);
//! - a child that has run [`Isolation::max_jobs_per_child`] messages is
//!   replaced by a fresh one;
//! - a child that dies while it runs a message fails that attempt
//!   ([`IsolationError::ChildExited`]), which is retried like any failure;
//! - what a child prints to stdout and stderr is printed by the worker on
//!   its own stdout and stderr, each line tagged with the id of the message
//!   the child was running (`[01J…] line`).
//!
//! # Setting it up
//!
//! Call [`enter`] first thing in `main`: in a child it runs messages until
//! the worker closes the connection and then exits the process; elsewhere it
//! returns at once. Children start the same executable with the same
//! arguments, so nothing before `enter` should have effects.
//!
//! ```no_run
//! # use dramaturg_core::isolation;
//! fn main() {
//!     isolation::enter();
//!     // … build the runtime, the app, and run the worker.
//! }
//! ```
//!
//! # Limits
//!
//! An isolated handler runs in another process: `ctx.app()` there knows no
//! actor and cannot send messages, metadata it writes is not seen by the
//! worker's middleware, and heartbeats and deadline extensions it makes do
//! not reach the time limit. The arguments cross the socket in MessagePack
//! and the output as JSON. Each message costs a round trip over a Unix
//! socket (and a process start every `max_jobs_per_child` messages).

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::DropGuard;

use crate::encoder::{CodecError, Encoder};
use crate::error_record::{ErrorRecord, FailureKind, RecordLimits};
use crate::failure::Failure;
use crate::output::Output;
use crate::{Actor, App, AppBuilder, BoxError, Context, Job, Json, MemoryBroker, MessageId, MessagePack, Retry};

/// The environment variable that makes a process an isolated child: the
/// path of the socket to its worker.
const CHILD_ENV: &str = "DRAMATURG_ISOLATION_SOCKET";
/// Largest frame accepted over the socket.
const MAX_FRAME: usize = 64 * 1024 * 1024;
/// How long a new child has to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// What a child prints on stdout and stderr after each message, so that the
/// worker tags everything before it with that message's id.
const END_OF_MESSAGE: &str = "\u{1}dramaturg-isolation-end-of-message\u{1}";
/// How long the worker waits for a child's output of a message to drain.
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// Runs this process as an isolated child if the worker started it so, and
/// exits when the worker is done with it; returns at once otherwise. Call
/// it first thing in `main` when any actor is `isolated` (inside
/// `#[tokio::main]` works too). Isolated handlers then find no app state
/// (`ctx.state` is `Err(MissingState)`); [`enter_with`] builds some.
pub fn enter() {
    enter_with(|builder| async move { Ok(builder) });
}

/// As [`enter`], with `setup` to build the child's app: it receives the
/// builder of the child's app (an in-memory broker, no actors, no
/// middleware) and returns it with the state the isolated handlers read
/// through `ctx.state::<T>()` — a database pool, an HTTP client. It runs
/// once per child, on the child's runtime, before the first message; it
/// does not run in the worker, so register the same values on the
/// worker's app too if its other actors need them.
///
/// ```no_run
/// # use dramaturg_core::isolation;
/// # #[derive(Debug)] struct Settings { bucket: String }
/// fn main() {
///     isolation::enter_with(|builder| async move {
///         Ok(builder.state(Settings { bucket: std::env::var("BUCKET")? }))
///     });
///     // … build the runtime, the app, and run the worker.
/// }
/// ```
///
/// A `setup` that fails ends the child with the error on its stderr; the
/// worker's attempt then fails with [`IsolationError::ChildExited`] and is
/// retried like any failure.
pub fn enter_with<F, Fut>(setup: F)
where
    F: FnOnce(AppBuilder) -> Fut + Send + 'static,
    Fut: Future<Output = Result<AppBuilder, BoxError>>,
{
    static ENTERED: AtomicBool = AtomicBool::new(false);
    let Some(path) = std::env::var_os(CHILD_ENV) else { return };
    if ENTERED.swap(true, Ordering::SeqCst) {
        // Another thread serves the worker and will exit the process.
        loop {
            std::thread::park();
        }
    }
    // A thread of its own, so that `enter` works inside `#[tokio::main]`
    // too: the child's runtime cannot be started on a runtime thread.
    let served = std::thread::Builder::new()
        .name("dramaturg-isolated-child".into())
        .spawn(move || serve(&path, setup))
        .and_then(|thread| thread.join().unwrap_or_else(|_| Err(std::io::Error::other("the child panicked"))));
    let code = match served {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("dramaturg isolated child: {error}");
            1
        }
    };
    // The child process is ours: it exists only to serve its worker, and
    // ends when the worker is done with it (the one place the library
    // ends a process).
    std::process::exit(code);
}

/// An isolated actor, as the child finds it. Written by
/// `#[derive(Actor)]`; not a public API.
#[doc(hidden)]
#[derive(Debug)]
pub struct IsolatedActor {
    name: &'static str,
    make_job: fn(&dyn Encoder, &[u8], Context) -> Result<Job, CodecError>,
}

impl IsolatedActor {
    /// The entry of actor `A`.
    pub const fn of<A: Actor>() -> Self {
        Self { name: A::NAME, make_job: crate::actor::make_job::<A> }
    }
}

inventory::collect!(IsolatedActor);

/// Why an isolated attempt failed, apart from the handler's own errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IsolationError {
    /// No child process could be started or reached.
    #[error("cannot start an isolated child process: {0}")]
    Spawn(String),
    /// The child died while it ran the message (a crash, an abort, a kill
    /// from outside).
    #[error("the isolated child process exited while running the message ({status})")]
    ChildExited {
        /// How it exited.
        status: String,
    },
    /// The child's resident memory passed the limit; it was killed.
    #[error("the isolated child process used {rss} bytes, more than max_child_rss ({max} bytes); killed")]
    MaxRss {
        /// What it used when it was measured.
        rss: u64,
        /// The limit.
        max: u64,
    },
    /// The child does not know the actor: `#[actor(isolated)]` is missing,
    /// or the child is another build.
    #[error("the isolated child process knows no isolated actor named {0:?}")]
    UnknownActor(String),
}

/// How a worker runs isolated actors. Give it to
/// [`Worker::isolation`](crate::Worker::isolation).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dramaturg_core::isolation::Isolation;
///
/// let isolation = Isolation::new()
///     .max_child_rss(512 * 1024 * 1024)
///     .max_jobs_per_child(100)
///     .kill_grace(Duration::from_secs(1));
/// # let _ = isolation;
/// ```
#[derive(Debug, Clone)]
pub struct Isolation {
    max_child_rss: Option<u64>,
    max_jobs_per_child: u32,
    kill_grace: Duration,
}

impl Default for Isolation {
    fn default() -> Self {
        Self::new()
    }
}

impl Isolation {
    /// No memory limit, 1,000 messages per child, 2 s between SIGTERM and
    /// SIGKILL.
    pub fn new() -> Self {
        Self { max_child_rss: None, max_jobs_per_child: 1000, kill_grace: Duration::from_secs(2) }
    }

    /// Kills a child whose resident memory passes `bytes` while it runs a
    /// message (checked every 100 ms); the attempt fails.
    #[must_use]
    pub fn max_child_rss(mut self, bytes: u64) -> Self {
        self.max_child_rss = Some(bytes);
        self
    }

    /// Replaces a child after it ran `n` messages (at least 1).
    #[must_use]
    pub fn max_jobs_per_child(mut self, n: u32) -> Self {
        self.max_jobs_per_child = n.max(1);
        self
    }

    /// How long a child has between SIGTERM and SIGKILL.
    #[must_use]
    pub fn kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Request {
    /// The message, encoded with MessagePack, its arguments too.
    message: Vec<u8>,
    redelivered: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Response {
    /// The output as JSON, on success.
    output: Option<Vec<u8>>,
    error: Option<ErrorRecord>,
    /// `None`: no wish; `Some(None)`: never; `Some(Some(ms))`: after.
    retry: Option<Option<u64>>,
}

// ---------------------------------------------------------------- child --

fn serve<F, Fut>(path: &std::ffi::OsStr, setup: F) -> std::io::Result<()>
where
    F: FnOnce(AppBuilder) -> Fut,
    Fut: Future<Output = Result<AppBuilder, BoxError>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let stream = UnixStream::connect(Path::new(path)).await?;
        let (mut reader, mut writer) = stream.into_split();
        let builder = setup(App::builder(MemoryBroker::new()))
            .await
            .map_err(|e| std::io::Error::other(format!("the setup of the child's app failed: {e}")))?;
        let app = builder.build().map_err(|e| std::io::Error::other(format!("cannot build the child's app: {e}")))?;
        while let Some(frame) = read_frame(&mut reader).await? {
            let request: Request = rmp_serde::from_slice(&frame).map_err(std::io::Error::other)?;
            let response = run_request(&app, request).await;
            println!("{END_OF_MESSAGE}");
            eprintln!("{END_OF_MESSAGE}");
            let bytes = rmp_serde::to_vec_named(&response).map_err(std::io::Error::other)?;
            write_frame(&mut writer, &bytes).await?;
        }
        Ok(())
    })
}

async fn run_request(app: &App, request: Request) -> Response {
    let failed = |failure: Failure| {
        let retry = match failure.retry() {
            Retry::Never => Some(None),
            Retry::After(delay) => Some(Some(crate::time::millis(delay))),
            _ => None,
        };
        let mut failure = failure;
        failure.capture(&RecordLimits::default());
        Response { output: None, error: Some(failure.record().clone()), retry }
    };
    let message = match MessagePack.decode_message(&request.message) {
        Ok(message) => message,
        Err(error) => return failed(Failure::from_error(error)),
    };
    let Some(actor) = inventory::iter::<IsolatedActor>.into_iter().find(|a| a.name == message.actor) else {
        return failed(Failure::from_error(IsolationError::UnknownActor(message.actor.clone())));
    };
    // The worker resolved them (message over actor) before sending.
    let options = message.options.clone();
    let ctx = Context::in_child(message, options, app.clone(), request.redelivered);
    let job = match (actor.make_job)(&MessagePack, &ctx.message().args, ctx.clone()) {
        Ok(job) => job,
        Err(error) => return failed(Failure::from_error(error)),
    };
    let result = AssertUnwindSafe(job)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(Failure::from_panic(panic.as_ref(), None, &RecordLimits::default())));
    match result {
        Ok(output) => match output.encode(&Json) {
            Ok(bytes) => Response { output: Some(bytes), error: None, retry: None },
            Err(error) => failed(Failure::from_error(error)),
        },
        Err(failure) => failed(failure),
    }
}

// --------------------------------------------------------------- worker --

/// The children of one worker.
#[derive(Debug)]
pub(crate) struct Pool {
    config: Isolation,
    idle: Mutex<Vec<Child>>,
}

struct Child {
    process: tokio::process::Child,
    pid: u32,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    jobs: u32,
    /// The message the child runs, for the tags of its output.
    current: Arc<Mutex<Option<MessageId>>>,
    /// How many messages' output each of stdout and stderr has drained.
    drained: [tokio::sync::watch::Receiver<u32>; 2],
}

impl fmt::Debug for Child {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Child").field("pid", &self.pid).field("jobs", &self.jobs).finish_non_exhaustive()
    }
}

impl Pool {
    pub(crate) fn new(config: Isolation) -> Arc<Self> {
        Arc::new(Self { config, idle: Mutex::new(Vec::new()) })
    }

    /// Ends the idle children (they exit when their connection closes).
    pub(crate) fn close(&self) {
        crate::sync::lock(&self.idle).clear();
    }

    async fn checkout(&self) -> Result<Child, IsolationError> {
        if let Some(child) = crate::sync::lock(&self.idle).pop() {
            return Ok(child);
        }
        spawn_child().await.map_err(|e| IsolationError::Spawn(e.to_string()))
    }

    async fn give_back(&self, mut child: Child) {
        child.jobs += 1;
        let jobs = child.jobs;
        for drained in &mut child.drained {
            let _ = tokio::time::timeout(OUTPUT_DRAIN, drained.wait_for(|n| *n >= jobs)).await;
        }
        *crate::sync::lock(&child.current) = None;
        if child.jobs >= self.config.max_jobs_per_child {
            // Dropping the connection ends it; reap it in the background.
            let Child { mut process, reader, writer, .. } = child;
            drop((reader, writer));
            tokio::spawn(async move {
                let _ = process.wait().await;
            });
        } else {
            crate::sync::lock(&self.idle).push(child);
        }
    }

    /// The job of an isolated attempt: the message goes to a child, whose
    /// answer is the attempt's result. Dropping the job kills the child.
    pub(crate) fn job(self: &Arc<Self>, ctx: Context, args: Vec<u8>) -> Job {
        let pool = Arc::clone(self);
        Box::pin(async move {
            // The worker holds the message until the child is gone.
            let ended = ctx.child_started();
            let mut message = ctx.message().clone();
            message.args = args.into();
            message.options = ctx.options().clone();
            let request = Request {
                message: MessagePack.encode_message(&message).map_err(Failure::from_error)?,
                redelivered: ctx.redelivered(),
            };
            let request = rmp_serde::to_vec_named(&request).map_err(|e| Failure::from_error(e.to_string()))?;
            let child = pool.checkout().await.map_err(Failure::from_error)?;
            *crate::sync::lock(&child.current) = Some(ctx.id());
            let mut running = Running { child: Some(child), grace: pool.config.kill_grace, ended: Some(ended) };
            let result = running.exchange(&request, pool.config.max_child_rss).await;
            match result {
                Ok(response) => {
                    if let Some(child) = running.child.take() {
                        pool.give_back(child).await;
                    }
                    drop(running);
                    from_response(response)
                }
                // `running` kills the child and marks it ended when dropped.
                Err(error) => Err(Failure::from_error(error)),
            }
        })
    }
}

/// A child running a message; killed if dropped before it answered.
struct Running {
    child: Option<Child>,
    grace: Duration,
    ended: Option<DropGuard>,
}

impl Running {
    async fn exchange(&mut self, request: &[u8], max_rss: Option<u64>) -> Result<Response, IsolationError> {
        let child = self.child.as_mut().expect("a running child until it is given back");
        let pid = child.pid;
        let talk = async {
            write_frame(&mut child.writer, request).await?;
            read_frame(&mut child.reader).await
        };
        let answer = tokio::select! {
            answer = talk => answer,
            rss = over_rss(pid, max_rss) => return Err(IsolationError::MaxRss { rss, max: max_rss.unwrap_or(0) }),
        };
        match answer {
            Ok(Some(frame)) => rmp_serde::from_slice(&frame)
                .map_err(|e| IsolationError::ChildExited { status: format!("it sent an unreadable answer: {e}") }),
            Ok(None) | Err(_) => {
                let child = self.child.as_mut().expect("a running child until it is given back");
                let status = tokio::time::timeout(Duration::from_secs(1), child.process.wait()).await;
                let status = match status {
                    Ok(Ok(status)) => {
                        // Reaped: its pid may be reused, so it must not be
                        // signalled when this is dropped.
                        self.child = None;
                        status.to_string()
                    }
                    _ => "it closed its connection".to_owned(),
                };
                Err(IsolationError::ChildExited { status })
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(child) = self.child.take() else { return };
        let ended = self.ended.take();
        let grace = self.grace;
        let Child { mut process, pid, reader, writer, .. } = child;
        drop((reader, writer));
        terminate(pid);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if tokio::time::timeout(grace, process.wait()).await.is_err() {
                        let _ = process.start_kill();
                        let _ = process.wait().await;
                    }
                    drop(ended);
                });
            }
            Err(_) => {
                let _ = process.start_kill();
                drop(ended);
            }
        }
    }
}

fn terminate(pid: u32) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

/// Resolves once the resident memory of `pid` passes `max`, with what it
/// was; never without a limit.
async fn over_rss(pid: u32, max: Option<u64>) -> u64 {
    let Some(max) = max else { return std::future::pending().await };
    let page = rustix::param::page_size() as u64;
    let path = format!("/proc/{pid}/statm");
    loop {
        if let Ok(text) = tokio::fs::read_to_string(&path).await {
            let pages: u64 = text.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
            if pages * page > max {
                return pages * page;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn from_response(response: Response) -> Result<Output, Failure> {
    match (response.output, response.error) {
        (Some(bytes), None) => {
            let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
            Ok(Output::new(value))
        }
        (_, Some(record)) => {
            let retry = match response.retry {
                None => Retry::Default,
                Some(None) => Retry::Never,
                Some(Some(ms)) => Retry::After(Duration::from_millis(ms)),
            };
            Err(Failure::from_record(record).with_retry(retry))
        }
        (None, None) => Err(Failure::from_record(ErrorRecord::new(
            FailureKind::Error,
            "dramaturg::isolation::IsolationError",
            "the isolated child answered neither a result nor an error",
            Vec::new(),
            None,
            &RecordLimits::default(),
        ))),
    }
}

async fn spawn_child() -> std::io::Result<Child> {
    let path = std::env::temp_dir().join(format!("dramaturg-isolation-{}.sock", MessageId::new()));
    let listener = UnixListener::bind(&path)?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let spawned = tokio::process::Command::new(std::env::current_exe()?)
        .args(args)
        .env(CHILD_ENV, &path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut process = match spawned {
        Ok(process) => process,
        Err(error) => {
            let _ = std::fs::remove_file(&path);
            return Err(error);
        }
    };
    let accepted = tokio::select! {
        accepted = tokio::time::timeout(CONNECT_TIMEOUT, listener.accept()) => accepted,
        status = process.wait() => {
            let _ = std::fs::remove_file(&path);
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            return Err(std::io::Error::other(format!(
                "the child exited before it connected ({status}): does main call dramaturg::isolation::enter() first?"
            )));
        }
    };
    let _ = std::fs::remove_file(&path);
    let (stream, _) = accepted.map_err(|_| {
        std::io::Error::other("the child did not connect: does main call dramaturg::isolation::enter()?")
    })??;
    let pid = process.id().unwrap_or(0);
    let current = Arc::new(Mutex::new(None));
    let (stdout_drained, stdout_rx) = tokio::sync::watch::channel(0);
    let (stderr_drained, stderr_rx) = tokio::sync::watch::channel(0);
    if let Some(stdout) = process.stdout.take() {
        tokio::spawn(tag_lines(stdout, Arc::clone(&current), false, stdout_drained));
    }
    if let Some(stderr) = process.stderr.take() {
        tokio::spawn(tag_lines(stderr, Arc::clone(&current), true, stderr_drained));
    }
    let (reader, writer) = stream.into_split();
    Ok(Child { process, pid, reader, writer, jobs: 0, current, drained: [stdout_rx, stderr_rx] })
}

/// Prints the child's lines on the worker's own stdout or stderr, tagged
/// with the message the child runs; counts the ends of messages.
async fn tag_lines(
    stream: impl AsyncRead + Unpin,
    current: Arc<Mutex<Option<MessageId>>>,
    stderr: bool,
    drained: tokio::sync::watch::Sender<u32>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(mut line)) = lines.next_line().await {
        let end = line.ends_with(END_OF_MESSAGE);
        if end {
            line.truncate(line.len() - END_OF_MESSAGE.len());
        }
        let tag = crate::sync::lock(&current).map_or_else(|| "-".to_owned(), |id| id.to_string());
        if end {
            drained.send_modify(|n| *n += 1);
            if line.is_empty() {
                continue;
            }
        }
        if stderr {
            eprintln!("[{tag}] {line}");
        } else {
            println!("[{tag}] {line}");
        }
    }
}

async fn read_frame(reader: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("a frame of {len} bytes is over the limit")));
    }
    let mut frame = vec![0u8; len];
    reader.read_exact(&mut frame).await?;
    Ok(Some(frame))
}

async fn write_frame(writer: &mut (impl AsyncWrite + Unpin), frame: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(frame.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(frame).await?;
    writer.flush().await
}
