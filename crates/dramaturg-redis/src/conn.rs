//! What the broker talks to: one Redis server, or a Redis Cluster.
//!
//! [`Endpoint`] opens connections; [`Conn`] is the connection every part
//! of the broker uses: the single server's reconnecting
//! `ConnectionManager`, or the cluster client's connection, which keeps a
//! connection to every node, routes each command by the slot of its key,
//! follows `MOVED` and `ASK`, and refreshes the slot map after a failover.
//!
//! What a cluster does not do as one server would is handled here:
//!
//! - A pipeline must stay within one slot. Writes of many slots go as
//!   [`Conn::query_groups`]: one pipeline on a single server, one per group
//!   (each within a slot) on a cluster, concurrently.
//! - `SCAN`, `INFO` and `CONFIG` are per node: [`Conn::masters`] gives a
//!   connection routed to each master.
//! - Pub/sub: a classic `PUBLISH` reaches the subscribers of every node
//!   of the cluster, so one subscription to any node hears every wake-up.
//!   [`Endpoint::pubsub`] subscribes on the masters of the current slot
//!   map in turn, so that a subscription lost with its node comes back on
//!   another (and a seed of the URL that is down or belongs to no cluster
//!   is never subscribed to).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// How long a connection waits: to connect, for an answer, and at most
/// between two reconnection attempts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) response: Duration,
    pub(crate) max_delay: Duration,
}

/// Where the broker's connections go.
#[derive(Clone)]
pub(crate) enum Endpoint {
    /// One server (which may be a replica, or behind a proxy).
    Server(Arc<redis::Client>),
    /// A Redis Cluster: its client, and the client of the URL's first
    /// seed node, whose settings (user, password, TLS) subscriptions use
    /// with the address of a current master.
    Cluster { client: Arc<ClusterClient>, seed: Arc<redis::Client> },
}

impl Endpoint {
    /// A new multiplexed, reconnecting connection.
    pub(crate) async fn connect(&self, timeouts: Timeouts) -> RedisResult<Conn> {
        match self {
            Self::Server(client) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_response_timeout(Some(timeouts.response))
                    .set_connection_timeout(Some(timeouts.connect))
                    .set_max_delay(timeouts.max_delay);
                Ok(Conn::Server(client.get_connection_manager_with_config(config).await?))
            }
            Self::Cluster { client, .. } => {
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(timeouts.connect)
                    .set_response_timeout(timeouts.response);
                Ok(Conn::Cluster(client.get_async_connection_with_config(config).await?))
            }
        }
    }

    /// A pub/sub connection. On a cluster, to master `attempt` (modulo
    /// their number) of the cluster's current slot map, so that a
    /// subscription opened again after its node failed moves on to the
    /// next one, and a seed of the URL that is down, or is no node of this
    /// cluster, is never subscribed to. Each step waits at most
    /// [`SUBSCRIBE_TIMEOUT`].
    pub(crate) async fn pubsub(&self, attempt: usize) -> RedisResult<redis::aio::PubSub> {
        let connect = SUBSCRIBE_TIMEOUT;
        let (client, seed) = match self {
            Self::Server(client) => return within(connect, client.get_async_pubsub()).await,
            Self::Cluster { client, seed } => (client, seed),
        };
        let config = redis::cluster::ClusterConfig::new().set_connection_timeout(connect).set_response_timeout(connect);
        let cluster = Conn::Cluster(within(connect, client.get_async_connection_with_config(config)).await?);
        let masters = cluster.masters().await?;
        let Some(Conn::Node { host, port, .. }) = masters.get(attempt % masters.len().max(1)) else {
            return Err((redis::ErrorKind::Client, "the cluster has no master serving slots").into());
        };
        let (host, port) = (host.to_string(), *port);
        let address = match seed.get_connection_info().addr() {
            redis::ConnectionAddr::TcpTls { insecure, tls_params, .. } => {
                redis::ConnectionAddr::TcpTls { host, port, insecure: *insecure, tls_params: tls_params.clone() }
            }
            _ => redis::ConnectionAddr::Tcp(host, port),
        };
        let node = redis::Client::open(seed.get_connection_info().clone().set_addr(address))?;
        within(connect, node.get_async_pubsub()).await
    }
}

/// `future`'s result, or a timeout error after `limit`.
async fn within<T>(limit: Duration, future: impl std::future::Future<Output = RedisResult<T>>) -> RedisResult<T> {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()))
}

/// How long opening a subscription waits for each step (connecting,
/// listing a cluster's masters, subscribing's handshake) before it fails
/// and is tried again.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to the server, or to the cluster, or to one master of it.
/// Cheap to clone: clones share the multiplexed connection(s).
#[derive(Clone)]
pub(crate) enum Conn {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
    /// The cluster's connection, every command routed to one node.
    Node {
        conn: ClusterConnection,
        host: Arc<str>,
        port: u16,
    },
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Server(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
            Self::Node { conn, host, port } => {
                let routing = node_routing(host, *port);
                Box::pin(conn.route_command(cmd.clone(), routing))
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Server(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Node { conn, host, port } => {
                let route = SingleNodeRoutingInfo::ByAddress { host: host.to_string(), port: *port };
                Box::pin(conn.route_pipeline(pipeline.clone(), offset, count, route))
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Server(conn) => conn.get_db(),
            Self::Cluster(conn) | Self::Node { conn, .. } => conn.get_db(),
        }
    }
}

fn node_routing(host: &str, port: u16) -> RoutingInfo {
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: host.to_owned(), port })
}

impl Conn {
    /// Whether this talks to a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        !matches!(self, Self::Server(_))
    }

    /// A connection to each master: this one for a single server; for a
    /// cluster, one routed to each master that serves slots (as the
    /// client's slot map has them now, learned with a `PING` to each),
    /// for per-node commands such as `SCAN`.
    pub(crate) async fn masters(&self) -> RedisResult<Vec<Conn>> {
        let conn = match self {
            Self::Server(_) => return Ok(vec![self.clone()]),
            Self::Cluster(conn) | Self::Node { conn, .. } => conn,
        };
        // Without a response policy the answers come back by node address.
        let every_master = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let Value::Map(answers) = conn.clone().route_command(redis::cmd("PING"), every_master).await? else {
            return Err((redis::ErrorKind::Client, "no answer by node to a PING of every master").into());
        };
        let mut masters = Vec::with_capacity(answers.len());
        for (address, _) in answers {
            let address: String = redis::from_redis_value(address)?;
            let parsed = address.rsplit_once(':').and_then(|(host, port)| Some((host, port.parse().ok()?)));
            let Some((host, port)) = parsed else {
                return Err((redis::ErrorKind::Client, "a node address without a port", address).into());
            };
            masters.push(Self::Node { conn: conn.clone(), host: host.into(), port });
        }
        Ok(masters)
    }

    /// Runs `groups` and returns the replies of all their commands in
    /// order: as one pipeline on a single server (one round trip); on a
    /// cluster, each group as a pipeline of its own, concurrently, since a
    /// pipeline cannot span slots (so each group must stay in one slot).
    pub(crate) async fn query_groups(&self, groups: Vec<Pipeline>) -> RedisResult<Vec<Value>> {
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        if !self.is_cluster() {
            let mut whole = redis::pipe();
            for command in groups.iter().flat_map(Pipeline::cmd_iter) {
                whole.add_command(command.clone());
            }
            return whole.ignore_errors().query_async(&mut self.clone()).await;
        }
        let replies = try_join_all(groups.into_iter().map(|mut group| {
            let mut conn = self.clone();
            async move { group.ignore_errors().query_async::<Vec<Value>>(&mut conn).await }
        }))
        .await?;
        Ok(replies.into_iter().flatten().collect())
    }
}

/// The node URLs of a `redis+cluster://[user[:password]@]host:port,host:port[/][?query]`
/// URL (`rediss+cluster://` for TLS): `redis://[user[:password]@]host:port/[?query]`
/// each, or `None` if `url` is not a cluster URL. A node without a port
/// gets 6379.
pub(crate) fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.strip_suffix("+cluster")?;
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let query = tail.split_once('?').map(|(_, query)| format!("?{query}")).unwrap_or_default();
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
        None => (String::new(), authority),
    };
    let nodes = hosts
        .split(',')
        .filter(|host| !host.is_empty())
        .map(|host| {
            let host =
                if host.contains(':') && !host.ends_with(']') { host.to_owned() } else { format!("{host}:6379") };
            format!("{scheme}://{userinfo}{host}/{query}")
        })
        .collect();
    Some(nodes)
}

/// The database number in the path of cluster URL `url`, if it names one
/// other than 0 (`redis+cluster://h:7000/3` gives `Some("3")`); `None`
/// for other URLs.
pub(crate) fn cluster_database(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    scheme.strip_suffix("+cluster")?;
    let path = rest.split(['?', '#']).next()?;
    let database = path.split_once('/')?.1.trim_matches('/');
    (!database.is_empty() && database != "0").then_some(database)
}

/// The `redis+cluster://` URL of the node URLs `nodes` (`redis://…`, or
/// `rediss://…` for TLS): their addresses joined, with the first node's
/// scheme, user, password and query, and the first database number other
/// than 0 that a node names (which connecting then refuses: a cluster has
/// database 0 only).
pub(crate) fn cluster_url<S: AsRef<str>>(nodes: &[S]) -> String {
    let mut scheme = "redis";
    let mut userinfo = "";
    let mut query = "";
    let mut database = "";
    let mut hosts = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let node = node.as_ref();
        let (node_scheme, rest) = node.split_once("://").unwrap_or(("redis", node));
        let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let (user, host) = authority.rsplit_once('@').map_or(("", authority), |(u, h)| (u, h));
        if i == 0 {
            scheme = node_scheme;
            userinfo = user;
            query = tail.split_once('?').map_or("", |(_, q)| q);
        }
        let path = tail.split(['?', '#']).next().unwrap_or_default().trim_matches('/');
        if database.is_empty() && !path.is_empty() && path != "0" {
            database = path;
        }
        hosts.push(host);
    }
    let at = if userinfo.is_empty() { "" } else { "@" };
    let query = if query.is_empty() { String::new() } else { format!("?{query}") };
    format!("{scheme}+cluster://{userinfo}{at}{}/{database}{query}", hosts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_every_node() {
        assert_eq!(cluster_nodes("redis://127.0.0.1:6379/"), None);
        assert_eq!(
            cluster_nodes("redis+cluster://:pw@a:7000,b:7001/?protocol=resp3").unwrap(),
            ["redis://:pw@a:7000/?protocol=resp3", "redis://:pw@b:7001/?protocol=resp3"]
        );
        assert_eq!(cluster_nodes("rediss+cluster://h").unwrap(), ["rediss://h:6379/"]);
        let url = cluster_url(&["redis://u:pw@a:7000/?protocol=resp3", "redis://b:7001"]);
        assert_eq!(url, "redis+cluster://u:pw@a:7000,b:7001/?protocol=resp3");
        assert_eq!(cluster_nodes(&url).unwrap().len(), 2);
        let url = cluster_url(&["redis://a:7000/0", "redis://b:7001/3?x=1"]);
        assert_eq!(url, "redis+cluster://a:7000,b:7001/3");
        assert_eq!(cluster_database(&url), Some("3"));
    }

    #[test]
    fn a_database_in_a_cluster_url_is_found() {
        assert_eq!(cluster_database("redis+cluster://a:7000,b:7001/3"), Some("3"));
        assert_eq!(cluster_database("redis+cluster://a:7000/3/?namespace=x"), Some("3"));
        assert_eq!(cluster_database("redis+cluster://a:7000/0"), None);
        assert_eq!(cluster_database("redis+cluster://a:7000/?namespace=x/1"), None);
        assert_eq!(cluster_database("redis+cluster://a:7000"), None);
        assert_eq!(cluster_database("redis://a:7000/3"), None);
    }
}
