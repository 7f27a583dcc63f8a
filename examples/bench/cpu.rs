//! CPU time of this process and of the broker's server, from `/proc`
//! (Linux): user plus system time, in clock ticks of 10 ms (`CLK_TCK`,
//! 100 on Linux), so runs of a second or more read to about 1%.

use std::collections::HashMap;

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

/// The processes of a broker's server on this machine.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Server {
    /// One process: Redis, or RabbitMQ's Erlang node.
    Process(u32),
    /// Every process of this name (its `comm`): PostgreSQL's postmaster,
    /// its background processes and a backend per connection. A process
    /// that starts while a meter runs is counted from zero; one that ends
    /// before the meter is read (an autovacuum worker, a connection
    /// closed) is not counted at all.
    Named(&'static str),
}

impl Server {
    /// The CPU time of each of the server's processes now, in
    /// microseconds, by pid.
    fn cpu_us(self) -> HashMap<u32, u64> {
        match self {
            Self::Process(pid) => process_cpu_us(pid).map(|us| (pid, us)).into_iter().collect(),
            Self::Named(name) => {
                processes(name).into_iter().filter_map(|(pid, _)| Some((pid, process_cpu_us(pid)?))).collect()
            }
        }
    }
}

/// The server behind `broker` (a URL), when it runs on this machine:
/// Redis's process from its `INFO server` (if a `redis-server` of this
/// machine has it); for RabbitMQ the oldest `beam.smp` (the node started
/// with the machine, not a test's private one); for PostgreSQL on a
/// loopback address every `postgres` process. `None` for the in-memory
/// and SQLite brokers (no server) or a server elsewhere.
pub(crate) async fn server(broker: &str) -> Result<Option<Server>, BoxError> {
    if broker.starts_with("redis") {
        let client = redis::Client::open(broker.split('?').next().unwrap_or(broker))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await?;
        let pid: Option<u32> = info.lines().find_map(|line| line.strip_prefix("process_id:")?.trim().parse().ok());
        // A server elsewhere: its pid names no redis-server here.
        let here = |pid: &u32| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.starts_with("redis-server"))
        };
        return Ok(pid.filter(here).map(Server::Process));
    }
    if broker.starts_with("amqp") {
        let oldest = processes("beam.smp").into_iter().min_by_key(|&(_, started)| started);
        return Ok(oldest.map(|(pid, _)| Server::Process(pid)));
    }
    if broker.starts_with("postgres") {
        let host = broker.split_once("://").map_or("", |(_, rest)| rest);
        let host = host.rsplit_once('@').map_or(host, |(_, host)| host);
        let local = ["127.0.0.1", "localhost", "[::1]", "/"].iter().any(|local| host.starts_with(local));
        return Ok((local && !processes("postgres").is_empty()).then_some(Server::Named("postgres")));
    }
    Ok(None)
}

/// The processes named `name` (their `comm`), each with its start time
/// (clock ticks after boot).
fn processes(name: &str) -> Vec<(u32, u64)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries {
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
        found.push((pid, started));
    }
    found
}

/// CPU time spent by this process and the server from [`CpuMeter::start`]
/// on.
pub(crate) struct CpuMeter {
    server: Option<Server>,
    worker_at_start: u64,
    server_at_start: HashMap<u32, u64>,
}

/// CPU time per message, in microseconds: of this process (the worker)
/// and of the broker's server (`None` when it is not on this machine).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuPerMessage {
    pub(crate) worker_us: f64,
    pub(crate) server_us: Option<f64>,
}

impl CpuMeter {
    /// Starts counting, for `server` (if any).
    pub(crate) fn start(server: Option<Server>) -> Self {
        Self {
            server,
            worker_at_start: process_cpu_us(std::process::id()).unwrap_or(0),
            server_at_start: server.map(Server::cpu_us).unwrap_or_default(),
        }
    }

    /// The CPU time since the start, per message of `messages`.
    pub(crate) fn per_message(&self, messages: u64) -> CpuPerMessage {
        let n = messages.max(1) as f64;
        let worker = process_cpu_us(std::process::id()).unwrap_or(0).saturating_sub(self.worker_at_start);
        let server = self.server.map(|server| {
            let spent: u64 = server
                .cpu_us()
                .into_iter()
                .map(|(pid, now)| now.saturating_sub(self.server_at_start.get(&pid).copied().unwrap_or(0)))
                .sum();
            spent as f64 / n
        });
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
