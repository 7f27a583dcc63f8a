//! CPU time of this process and of the broker's server, from `/proc`
//! (Linux): user plus system time, in clock ticks of 10 ms (`CLK_TCK`,
//! 100 on Linux), so runs of a second or more read to about 1%.

use dramaturg::BoxError;

/// User plus system CPU time of process `pid` so far (its threads that
/// ended included), in microseconds; `None` if it cannot be read.
pub(crate) fn process_cpu_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count the fields after its closing one. utime and stime are fields
    // 14 and 15 of the line, so the 12th and 13th after it.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) * 10_000)
}

/// The process id of the server behind `broker` (a URL), when it runs on
/// this machine: Redis's from its `INFO server` (if a `redis-server` of
/// this machine has it); for RabbitMQ the oldest
/// `beam.smp` (the node started with the machine, not a test's private
/// one). `None` for the in-memory broker or a server elsewhere.
pub(crate) async fn server_pid(broker: &str) -> Result<Option<u32>, BoxError> {
    if broker.starts_with("redis") {
        let client = redis::Client::open(broker.split('?').next().unwrap_or(broker))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await?;
        let pid: Option<u32> = info.lines().find_map(|line| line.strip_prefix("process_id:")?.trim().parse().ok());
        // A server elsewhere: its pid names no redis-server here.
        let here = |pid: &u32| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.starts_with("redis-server"))
        };
        return Ok(pid.filter(here));
    }
    if broker.starts_with("amqp") {
        return Ok(oldest_process("beam.smp"));
    }
    Ok(None)
}

/// The process named `name` (its `comm`) that started first.
fn oldest_process(name: &str) -> Option<u32> {
    let mut found: Option<(u64, u32)> = None;
    for entry in std::fs::read_dir("/proc").ok()? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else { continue };
        if comm.trim() != name {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // Field 22, start time: the 20th after the command name.
        let Some(started) = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(19)?.parse().ok())
        else {
            continue;
        };
        if found.is_none_or(|(first, _)| started < first) {
            found = Some((started, pid));
        }
    }
    found.map(|(_, pid)| pid)
}

/// CPU time spent by this process and the server from [`CpuMeter::start`]
/// on.
pub(crate) struct CpuMeter {
    server: Option<u32>,
    worker_at_start: u64,
    server_at_start: Option<u64>,
}

/// CPU time per message, in microseconds: of this process (the worker)
/// and of the broker's server (`None` when it is not on this machine).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuPerMessage {
    pub(crate) worker_us: f64,
    pub(crate) server_us: Option<f64>,
}

impl CpuMeter {
    /// Starts counting, for the server of process `server` (if any).
    pub(crate) fn start(server: Option<u32>) -> Self {
        Self {
            server,
            worker_at_start: process_cpu_us(std::process::id()).unwrap_or(0),
            server_at_start: server.and_then(process_cpu_us),
        }
    }

    /// The CPU time since the start, per message of `messages`.
    pub(crate) fn per_message(&self, messages: u64) -> CpuPerMessage {
        let n = messages.max(1) as f64;
        let worker = process_cpu_us(std::process::id()).unwrap_or(0).saturating_sub(self.worker_at_start);
        let server = match (self.server.and_then(process_cpu_us), self.server_at_start) {
            (Some(now), Some(start)) => Some(now.saturating_sub(start) as f64 / n),
            _ => None,
        };
        CpuPerMessage { worker_us: worker as f64 / n, server_us: server }
    }
}

impl CpuPerMessage {
    /// The figures as JSON members with `prefix`: `"<prefix>worker_cpu_us":…,"<prefix>server_cpu_us":…`
    /// (`null` for a server not measured).
    pub(crate) fn json(&self, prefix: &str) -> String {
        let server = self.server_us.map_or("null".to_owned(), |us| format!("{us:.2}"));
        format!("\"{prefix}worker_cpu_us\":{:.2},\"{prefix}server_cpu_us\":{server}", self.worker_us)
    }

    /// The figures for a person.
    pub(crate) fn text(&self) -> String {
        let server = self.server_us.map_or("not measured".to_owned(), |us| format!("{us:.1} µs"));
        format!("worker {:.1} µs, server {server} per message", self.worker_us)
    }
}
