//! Why a command failed, and the exit code that says so.

use std::fmt;
use std::process::ExitCode;

use dramaturg::{BrokerError, BrokerErrorKind};

/// The exit codes, as `--help` documents them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// The broker failed: unreachable, refused, an error of its own.
    Broker = 1,
    /// Bad usage or input: the command line, the URL, JSON, an id.
    Usage = 2,
    /// What was asked for does not exist.
    NotFound = 3,
    /// The broker cannot do this.
    Unsupported = 4,
}

/// A failed command: what to print, and how to exit.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) exit: Exit,
    message: String,
}

impl Failure {
    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self { exit, message: message.into() }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.exit as u8)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<BrokerError> for Failure {
    fn from(error: BrokerError) -> Self {
        let exit = match error.kind() {
            BrokerErrorKind::Unsupported => Exit::Unsupported,
            BrokerErrorKind::InvalidInput => Exit::Usage,
            _ => Exit::Broker,
        };
        Self::new(exit, error.to_string())
    }
}

impl From<dramaturg::ConnectError> for Failure {
    fn from(error: dramaturg::ConnectError) -> Self {
        match error {
            dramaturg::ConnectError::Broker(error) => {
                let mut failure = Failure::from(error);
                failure.message = format!("cannot use the broker: {}", failure.message);
                failure
            }
            other => Self::usage(other.to_string()),
        }
    }
}
