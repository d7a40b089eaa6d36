//! How a router joins the cluster: its name, the etcd endpoints, the key
//! prefix, TLS and authentication for etcd, and the lease timing that
//! bounds how fast a dead router is noticed (and how long a partitioned one
//! keeps serving before it fences itself).

use std::path::PathBuf;
use std::time::Duration;

/// Settings for one router's membership in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This router's name (the rule of `depot_engine::name`; checked by the
    /// daemon).
    pub router: String,
    /// etcd client URLs (`http://host:port` or `https://host:port`).
    pub endpoints: Vec<String>,
    /// Prefix of every key (default `/depot`); several clusters may share
    /// one etcd with different prefixes.
    pub prefix: String,
    /// Lease time to live. A router that stops renewing is considered down
    /// after this long; it stops acknowledging I/O before then.
    pub lease_ttl: Duration,
    /// Timeout of one etcd request.
    pub request_timeout: Duration,
    /// etcd TLS: CA bundle to verify the servers, and an optional client
    /// certificate and key for etcd's client-certificate authentication.
    pub tls: Option<EtcdTls>,
    /// etcd user and password (etcd's own authentication).
    pub user: Option<(String, String)>,
    /// Failure domain (rack, room) this router is in; the cluster prefers
    /// another domain for anything that must survive this router.
    pub failure_domain: Option<String>,
}

/// TLS for the etcd connection.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// PEM CA certificate(s) that signed the etcd servers' certificates.
    pub ca: PathBuf,
    /// PEM client certificate and key, when etcd requires client certs.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl ClusterConfig {
    /// A configuration with defaults for everything but the name and the
    /// endpoints.
    pub fn new(router: impl Into<String>, endpoints: Vec<String>) -> Self {
        ClusterConfig {
            router: router.into(),
            endpoints,
            prefix: "/depot".into(),
            lease_ttl: Duration::from_secs(5),
            request_timeout: Duration::from_secs(3),
            tls: None,
            user: None,
            failure_domain: None,
        }
    }
}
