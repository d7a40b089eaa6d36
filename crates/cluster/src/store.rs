//! The etcd connection: reads, all-or-nothing guarded writes
//! (compare-and-swap transactions), prefix watches and leases, each bounded
//! by the request timeout. Values are bounded in size on the way in and on
//! the way out; what etcd returns is parsed as untrusted input.
//!
//! Invariant: a [`Txn`] either applies every one of its operations or none,
//! and it applies them only if every guard held at the moment it committed
//! (etcd's serializable transaction). That is what turns "read, decide,
//! write" into a change that cannot lose a concurrent update.

use std::error::Error as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn as EtcdTxn, TxnOp,
};

use parking_lot::RwLock;

use crate::config::ClusterConfig;
use crate::error::{ClusterError, ClusterResult};
use crate::keys::Keys;

/// Largest value the cluster stores or accepts from etcd (etcd's own
/// default request limit is 1.5 MiB).
pub const MAX_VALUE: usize = 1 << 20;

/// A value read from etcd with the revisions that guard changes to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// Full key.
    pub key: String,
    /// Value bytes (at most [`MAX_VALUE`]).
    pub value: Vec<u8>,
    /// Revision of the last change to the key.
    pub mod_revision: i64,
    /// Revision that created the key.
    pub create_revision: i64,
    /// Lease the key is attached to (0: none).
    pub lease: i64,
}

impl Versioned {
    /// Parses the value as JSON of `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> ClusterResult<T> {
        serde_json::from_slice(&self.value).map_err(|e| ClusterError::Corrupt {
            key: self.key.clone(),
            reason: e.to_string(),
        })
    }
}

/// What must hold for a [`Txn`] to apply.
#[derive(Debug, Clone)]
pub enum Guard {
    /// The key does not exist.
    Absent(String),
    /// The key exists and was last changed at exactly this revision.
    Revision(String, i64),
    /// No key under the prefix was created or changed after this revision
    /// (deletions are not seen: guard a decision that only more deletions
    /// could not make wrong, such as "no vDisk uses this vPool").
    PrefixUnchangedSince(String, i64),
}

/// One change of a [`Txn`].
#[derive(Debug, Clone)]
pub enum Op {
    /// Sets the key to the value (no lease).
    Put(String, Vec<u8>),
    /// Sets the key to the value, attached to a lease: it disappears when
    /// the lease expires.
    PutLeased(String, Vec<u8>, i64),
    /// Removes the key.
    Delete(String),
}

/// An all-or-nothing change guarded by compare-and-swap conditions.
#[derive(Debug, Clone, Default)]
pub struct Txn {
    guards: Vec<Guard>,
    ops: Vec<Op>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Txn::default()
    }

    /// Adds a guard.
    pub fn guard(mut self, g: Guard) -> Self {
        self.guards.push(g);
        self
    }

    /// Adds an operation.
    pub fn op(mut self, o: Op) -> Self {
        self.ops.push(o);
        self
    }

    /// Adds a JSON put of `value` at `key`.
    pub fn put_json<T: serde::Serialize>(self, key: String, value: &T) -> ClusterResult<Self> {
        let bytes = serde_json::to_vec(value).map_err(|e| ClusterError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        Ok(self.op(Op::Put(key, bytes)))
    }

    /// Guards on `v`'s current revision, or on absence when `v` is `None`.
    pub fn guard_unchanged(self, key: String, v: Option<&Versioned>) -> Self {
        match v {
            Some(v) => self.guard(Guard::Revision(key, v.mod_revision)),
            None => self.guard(Guard::Absent(key)),
        }
    }
}

/// The outcome of [`Store::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Every guard held; the changes are applied at this revision.
    Applied(i64),
    /// A guard failed; nothing was written.
    Refused,
}

/// A connection to the cluster's etcd.
#[derive(Clone)]
pub struct Store {
    client: Client,
    keys: Keys,
    timeout: Duration,
    endpoints: Vec<String>,
    members: Arc<RwLock<Vec<String>>>,
    options: ConnectOptions,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// Builds the client options (TLS, user, timeouts) of a configuration.
pub(crate) fn connect_options(cfg: &ClusterConfig) -> ClusterResult<ConnectOptions> {
    // No per-request timeout here: tonic applies it to streams too, and
    // cut the watch and lease keep-alive streams every `request_timeout`.
    // Unary calls are bounded one by one (`bounded`).
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(cfg.request_timeout)
        // etcd's server sends GOAWAY to a client that pings more often
        // than `--grpc-keepalive-min-time` (5 s by default).
        .with_keep_alive(Duration::from_secs(6), cfg.request_timeout)
        .with_require_leader(true);
    if let Some((user, password)) = &cfg.user {
        // etcd forgets the tokens it handed out when it restarts: without
        // the refresh, every call after an etcd restart is refused with
        // "invalid auth token" for good.
        opts = opts
            .with_user(user.clone(), password.clone())
            .with_auto_token_refresh(true);
    }
    if let Some(tls) = &cfg.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| ClusterError::Config(format!("reading {}: {e}", p.display())))
        };
        let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        opts = opts.with_tls(t);
    }
    Ok(opts)
}

impl Store {
    /// Connects and checks that etcd answers a linearizable read (so a
    /// router does not start on an unreachable or quorum-less etcd).
    pub async fn connect(cfg: &ClusterConfig) -> ClusterResult<Store> {
        if cfg.endpoints.is_empty() {
            return Err(ClusterError::Config("no etcd endpoints given".into()));
        }
        let options = connect_options(cfg)?;
        let at = cfg.endpoints.join(",");
        // Connecting authenticates (when a user is set); the first read
        // shows whether TLS, the user and its permissions on the prefix are
        // good. Either failure is told in the terms of the configuration.
        let client = match tokio::time::timeout(
            cfg.request_timeout,
            Client::connect(&cfg.endpoints, Some(options.clone())),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(refused(cfg, &e, "cannot reach etcd")),
            Err(_) => {
                return Err(ClusterError::Unavailable(format!(
                    "cannot reach etcd at {at}: no answer within {} ms",
                    cfg.request_timeout.as_millis()
                )));
            }
        };
        let store = Store {
            client,
            keys: Keys::new(&cfg.prefix),
            timeout: cfg.request_timeout,
            endpoints: cfg.endpoints.clone(),
            members: Arc::new(RwLock::new(cfg.endpoints.clone())),
            options,
        };
        match tokio::time::timeout(cfg.request_timeout, store.read_revision()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(refused(cfg, &e, "etcd does not answer")),
            Err(_) => {
                return Err(ClusterError::Unavailable(format!(
                    "etcd at {at} does not answer: no answer within {} ms",
                    cfg.request_timeout.as_millis()
                )));
            }
        }
        store.refresh_members().await?;
        Ok(store)
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The configured endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The client options (for per-endpoint probes).
    pub(crate) fn options(&self) -> &ConnectOptions {
        &self.options
    }

    /// The underlying client (leases and watches).
    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    /// The current revision of the cluster (a linearizable read).
    pub async fn revision(&self) -> ClusterResult<i64> {
        bounded(self.timeout, self.read_revision()).await
    }

    /// [`Store::revision`] without a deadline, with etcd's own error.
    async fn read_revision(&self) -> Result<i64, etcd_client::Error> {
        let mut c = self.client.clone();
        let root = self.keys.root();
        let r = c
            .get(
                root,
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_limit(1),
                ),
            )
            .await?;
        Ok(r.header().map_or(0, |h| h.revision()))
    }

    /// Reads one key.
    pub async fn get(&self, key: &str) -> ClusterResult<Option<Versioned>> {
        let mut c = self.client.clone();
        let r = bounded(self.timeout, c.get(key, None)).await?;
        r.kvs().first().map(versioned).transpose()
    }

    /// Reads every key under `prefix`, with the revision the read saw.
    pub async fn list(&self, prefix: &str) -> ClusterResult<(Vec<Versioned>, i64)> {
        let mut c = self.client.clone();
        let r = bounded(
            self.timeout,
            c.get(prefix, Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let rev = r.header().map_or(0, |h| h.revision());
        let kvs = r
            .kvs()
            .iter()
            .map(versioned)
            .collect::<ClusterResult<_>>()?;
        Ok((kvs, rev))
    }

    /// Revokes a lease: its keys vanish at once.
    pub async fn revoke_lease(&self, id: i64) -> ClusterResult<()> {
        let mut c = self.client.clone();
        bounded(self.timeout, c.lease_revoke(id)).await?;
        Ok(())
    }

    /// The client URLs of every etcd member, as the cluster last reported
    /// them (the configured endpoints until then). Probes for a lost
    /// quorum ask all of them, not only the configured ones.
    pub fn members(&self) -> Vec<String> {
        self.members.read().clone()
    }

    /// Asks etcd for its member list and remembers it.
    pub async fn refresh_members(&self) -> ClusterResult<()> {
        let mut c = self.client.clone();
        let r = bounded(self.timeout, c.member_list()).await?;
        let urls: Vec<String> = r
            .members()
            .iter()
            .filter_map(|m| m.client_urls().first().cloned())
            .collect();
        if !urls.is_empty() {
            *self.members.write() = urls;
        }
        Ok(())
    }

    /// Applies `txn` if every guard holds.
    pub async fn commit(&self, txn: Txn) -> ClusterResult<Committed> {
        let compares: Vec<Compare> = txn
            .guards
            .iter()
            .map(|g| match g {
                Guard::Absent(k) => Compare::create_revision(k.as_str(), CompareOp::Equal, 0),
                Guard::Revision(k, rev) => {
                    Compare::mod_revision(k.as_str(), CompareOp::Equal, *rev)
                }
                Guard::PrefixUnchangedSince(p, rev) => {
                    Compare::mod_revision(p.as_str(), CompareOp::Less, rev.saturating_add(1))
                        .with_prefix()
                }
            })
            .collect();
        let mut ops = Vec::with_capacity(txn.ops.len());
        for o in &txn.ops {
            ops.push(match o {
                Op::Put(k, v) => {
                    check_len(k, v)?;
                    TxnOp::put(k.as_str(), v.clone(), None)
                }
                Op::PutLeased(k, v, lease) => {
                    check_len(k, v)?;
                    TxnOp::put(
                        k.as_str(),
                        v.clone(),
                        Some(PutOptions::new().with_lease(*lease)),
                    )
                }
                Op::Delete(k) => TxnOp::delete(k.as_str(), None),
            });
        }
        let mut c = self.client.clone();
        let r = bounded(
            self.timeout,
            c.txn(EtcdTxn::new().when(compares).and_then(ops)),
        )
        .await?;
        let rev = r.header().map_or(0, |h| h.revision());
        Ok(if r.succeeded() {
            Committed::Applied(rev)
        } else {
            Committed::Refused
        })
    }
}

fn check_len(key: &str, v: &[u8]) -> ClusterResult<()> {
    if v.len() > MAX_VALUE {
        return Err(ClusterError::Corrupt {
            key: key.to_string(),
            reason: format!("value of {} bytes exceeds {MAX_VALUE}", v.len()),
        });
    }
    Ok(())
}

/// Converts an etcd key-value, refusing oversized values and non-UTF-8 keys.
pub(crate) fn versioned(kv: &etcd_client::KeyValue) -> ClusterResult<Versioned> {
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    if std::str::from_utf8(kv.key()).is_err() {
        return Err(ClusterError::Corrupt {
            key,
            reason: "key is not UTF-8".into(),
        });
    }
    check_len(&key, kv.value())?;
    Ok(Versioned {
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
        create_revision: kv.create_revision(),
        lease: kv.lease(),
        key,
    })
}

/// Why etcd would not let a router in, in the terms of its `[cluster]`
/// settings: refused credentials, a missing user, a user without rights on
/// the prefix are configuration errors; anything else (TLS, transport) is
/// etcd being unreachable, with the whole chain of causes and a hint at the
/// TLS settings a transport failure may come from.
fn refused(cfg: &ClusterConfig, e: &etcd_client::Error, what: &str) -> ClusterError {
    let at = cfg.endpoints.join(",");
    let user = cfg.user.as_ref().map(|(u, _)| u.as_str());
    if let etcd_client::Error::GRpcStatus(s) = e {
        // etcd's own messages (api/v3rpc/rpctypes), stable across 3.x.
        let m = s.message();
        let config = |msg: String| ClusterError::Config(format!("etcd at {at}: {msg} ({m})"));
        if m.contains("authentication failed") {
            return config(format!(
                "etcd refused the credentials of user {}: wrong user or password \
                 (etcd authentication)",
                user.unwrap_or("(none)")
            ));
        }
        if m.contains("user name is empty") {
            return config(
                "etcd requires authentication: set etcd_user and etcd_password_file".into(),
            );
        }
        if m.contains("authentication is not enabled") {
            return config(format!(
                "etcd_user {} is set but etcd's authentication is not enabled",
                user.unwrap_or("(none)")
            ));
        }
        if m.contains("permission denied") {
            return config(format!(
                "etcd user {} may not read and write the key prefix {} \
                 (etcd authentication: grant its role readwrite on the prefix)",
                user.unwrap_or("(none)"),
                cfg.prefix
            ));
        }
    }
    // The causes, without tonic's debug dump: "transport error: ...".
    let (mut why, mut source) = match e {
        etcd_client::Error::GRpcStatus(s) => (s.message().to_string(), s.source()),
        other => (other.to_string(), other.source()),
    };
    while let Some(s) = source {
        let text = s.to_string();
        if !why.contains(&text) {
            why.push_str(": ");
            why.push_str(&text);
        }
        source = s.source();
    }
    let plain = cfg.endpoints.iter().any(|e| e.starts_with("http://"));
    let hint = if why.contains("UnknownIssuer") && cfg.tls.is_some() {
        " (etcd's certificate is not signed by the CA in etcd_ca)"
    } else if why.contains("NotValidForName") {
        " (etcd's certificate does not name the endpoint's host)"
    } else if why.to_lowercase().contains("connection refused") {
        ""
    } else {
        match &cfg.tls {
            None if plain => " (if etcd serves TLS, give https:// endpoints and etcd_ca)",
            None => {
                " (etcd_ca is not set: https:// endpoints need the CA that signed etcd's certificate)"
            }
            Some(t) if t.identity.is_none() => {
                " (if etcd requires client certificates, set etcd_cert and etcd_key)"
            }
            Some(_) => "",
        }
    };
    ClusterError::Unavailable(format!("{what} at {at}: {why}{hint}"))
}

/// Runs an etcd call with a deadline, mapping its error.
pub(crate) async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> ClusterResult<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(ClusterError::from),
        Err(_) => Err(ClusterError::Unavailable(format!(
            "no answer from etcd within {} ms",
            limit.as_millis()
        ))),
    }
}
