//! Python Dramatiq as a foreign client: the venv `scripts/services` makes
//! (`.venv`, with `dramatiq[redis,rabbitmq]==2.*` from PyPI).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::os::unix::process::CommandExt;
use std::process::Child;

/// How many messages the interoperability tests send
/// (`DRAMATURG_INTEROP_MESSAGES`, 200 by default).
pub(crate) fn messages() -> u64 {
    std::env::var("DRAMATURG_INTEROP_MESSAGES").ok().and_then(|n| n.parse().ok()).unwrap_or(200)
}

/// How often each number stands on a line of the file at `path` (which a
/// Python actor appends to); empty while there is no file.
pub(crate) fn lines(path: &Path) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines().filter(|l| !l.is_empty()) {
        *counts.entry(line.parse().unwrap()).or_insert(0) += 1;
    }
    counts
}

/// The venv's Python; panics with what to run when it is missing, so that
/// an interoperability test never passes without Python.
pub(crate) fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/services, which installs Python Dramatiq", python.display());
    python
}

/// Runs `script` with the venv's Python, `args` as `sys.argv[1:]`; panics
/// with its stderr if it fails. Returns its stdout.
pub(crate) fn run(script: &str, args: &[&str]) -> String {
    let output =
        Command::new(python()).arg("-c").arg(script).args(args).stdin(Stdio::null()).output().expect("python runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python failed ({}):\n{stderr}", output.status);
    String::from_utf8(output.stdout).expect("python prints UTF-8")
}

/// Starts Dramatiq's worker CLI (`dramatiq <module>`) on a module written
/// to a temporary directory from `source`, with `args` (such as
/// `--processes 1 --threads 4 --queues q`), in a process group of its
/// own. It and its worker processes are killed when the guard is dropped.
pub(crate) fn spawn_worker(source: &str, args: &[&str]) -> PythonWorker {
    let dir = std::env::temp_dir().join(format!("dramatiq-{}", dramaturg::MessageId::new()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("actors.py"), source).unwrap();
    let child = Command::new(python())
        .args(["-m", "dramatiq", "actors"])
        .args(args)
        .current_dir(&dir)
        .env("PYTHONPATH", &dir)
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("the dramatiq worker starts");
    PythonWorker(child)
}

/// A running `dramatiq` CLI and its worker processes (one process group).
pub(crate) struct PythonWorker(pub(crate) Child);

impl PythonWorker {
    /// Stops the whole group at once (SIGKILL).
    pub(crate) fn kill(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0.id())]).status();
            let _ = self.0.wait();
        }
    }
}

impl Drop for PythonWorker {
    fn drop(&mut self) {
        self.kill();
    }
}
