//! This router as a member of a cluster: joining (lease, membership record,
//! certificate from the cluster CA), the view of the cluster it keeps from
//! etcd's feed (routers and whether they are up, who owns each vDisk under
//! which generation, persistent reservations), and the clients it talks to
//! other routers with.
//!
//! Invariants:
//! - the router acknowledges I/O only while [`Node::fence`] is open, which
//!   closes before its lease can lapse (depot_cluster::lease);
//! - the view only moves forward: every change carries the etcd revision
//!   it was committed at, and [`Node::applied`] is the revision through
//!   which the whole router (catalog mirror, view, live state) has applied
//!   the feed; management operations first wait until it reaches etcd's
//!   current revision ([`Node::sync`]), so they decide on current state;
//! - the data directory is locked for the process's life, so its node id
//!   names exactly one process.

pub mod device;
pub mod dtl;
pub mod feed;
pub mod fencing;
pub mod peer;
pub mod reservations;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use depot_cluster::keys::kind;
use depot_cluster::{
    Committed, Fence, Guard, Lease, Ownership, RouterRecord, Store, Txn, Versioned, members,
};
use depot_peer::{CaRecord, PeerClient, RouterIdentity};
use parking_lot::{Mutex, RwLock};
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::config::ClusterSettings;
use crate::error::{DepotError, DepotResult};

/// Key (under `ca/`) of the cluster's certificate authority.
const CA_KEY: &str = "cluster";

/// What this router knows of the cluster.
#[derive(Debug, Default, Clone)]
pub struct View {
    /// Members by name.
    pub routers: BTreeMap<String, RouterRecord>,
    /// Members whose lease lives.
    pub up: BTreeMap<String, ()>,
    /// Owner of each vDisk.
    pub owners: HashMap<String, Ownership>,
    /// Persistent-reservation state of each vDisk (JSON, with revision).
    pub reservations: HashMap<String, Versioned>,
    /// Each vDisk's mirror (DTL) record.
    pub mirrors: HashMap<String, depot_cluster::Mirrored>,
}

impl View {
    /// Whether `router` is a member and up.
    pub fn is_up(&self, router: &str) -> bool {
        self.up.contains_key(router)
    }
}

/// A router of a cluster.
pub struct Node {
    name: String,
    store: Store,
    fence: Arc<Fence>,
    lease: Mutex<Option<Lease>>,
    record: RwLock<RouterRecord>,
    identity: RouterIdentity,
    view: RwLock<View>,
    peers: Mutex<HashMap<String, Arc<PeerClient>>>,
    applied: watch::Sender<i64>,
    rt: Handle,
    ttl: Duration,
    _lock: std::fs::File,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("name", &self.name).finish()
    }
}

/// What joining produced: the router and the cluster's state at the
/// revision the feed goes on from.
pub struct Joined {
    /// The router.
    pub node: Arc<Node>,
    /// Every key of the cluster at `revision`.
    pub snapshot: Vec<Versioned>,
    /// The snapshot's revision.
    pub revision: i64,
}

/// Locks the data directory for this process (flock), or says which
/// process holds it.
fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns; no memory involved.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        anyhow::bail!(
            "data directory {} is in use by another depot process",
            dir.display()
        );
    }
    Ok(f)
}

/// The node id of a data directory (created on first use).
fn node_id(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() == 32 && s.trim().bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(s.trim().to_string())
        }
        Ok(_) => anyhow::bail!("{} is corrupt", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("{:032x}", rand::random::<u128>());
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &id)
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
            Ok(id)
        }
        Err(e) => anyhow::bail!("reading {}: {e}", path.display()),
    }
}

impl Node {
    /// Joins the cluster: connects to etcd, takes a lease, registers this
    /// router (refused if a router of the same name is up), and gets a
    /// certificate from the cluster CA (creating the CA on the first
    /// router). Runs on the front runtime.
    pub async fn join(
        settings: &ClusterSettings,
        data_dir: &Path,
        portal: SocketAddr,
        api: String,
        peer: SocketAddr,
    ) -> anyhow::Result<Joined> {
        let cfg = &settings.etcd;
        let lock = lock_data_dir(data_dir)?;
        let node_id = node_id(data_dir)?;
        let store = Store::connect(cfg)
            .await
            .map_err(|e| anyhow::anyhow!("router {}: {e}", cfg.router))?;
        let fence = Fence::closed();
        let lease = Lease::grant(&store, cfg.lease_ttl, fence.clone()).await?;
        let record = RouterRecord {
            name: cfg.router.clone(),
            portal: portal.to_string(),
            api,
            peer: peer.to_string(),
            failure_domain: cfg.failure_domain.clone(),
            node_id,
            tpgt: 0,
            joined_unix: 0,
        };
        let record = members::join(
            &store,
            record,
            lease.id(),
            cfg.lease_ttl + Duration::from_secs(2),
        )
        .await?;
        let ca = ensure_ca(&store).await?;
        let identity = ca.issue(&cfg.router)?;
        let (snapshot, revision) = store.list(&store.keys().root()).await?;
        let (applied, _) = watch::channel(0);
        let node = Arc::new(Node {
            name: cfg.router.clone(),
            store,
            fence,
            lease: Mutex::new(Some(lease)),
            record: RwLock::new(record),
            identity,
            view: RwLock::new(View::default()),
            peers: Mutex::new(HashMap::new()),
            applied,
            rt: Handle::current(),
            ttl: cfg.lease_ttl,
            _lock: lock,
        });
        node.reset_view(&snapshot, revision);
        tracing::info!(router = %node.name, tpgt = node.record.read().tpgt, revision, "joined the cluster");
        Ok(Joined {
            node,
            snapshot,
            revision,
        })
    }

    /// This router's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its membership record.
    pub fn record(&self) -> RouterRecord {
        self.record.read().clone()
    }

    /// The etcd connection.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The self-fencing clock.
    pub fn fence(&self) -> &Arc<Fence> {
        &self.fence
    }

    /// The lease's renewal status, if a lease is held.
    pub fn lease_status(&self) -> Option<watch::Receiver<depot_cluster::LeaseStatus>> {
        self.lease.lock().as_ref().map(Lease::status)
    }

    /// The view of the cluster.
    pub fn view(&self) -> parking_lot::RwLockReadGuard<'_, View> {
        self.view.read()
    }

    /// Runs an etcd call from a blocking thread.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Replaces the view with a snapshot of every key.
    pub fn reset_view(&self, kvs: &[Versioned], revision: i64) {
        let mut v = View::default();
        for kv in kvs {
            apply_to_view(&self.store, &mut v, Some(kv), &kv.key);
        }
        *self.view.write() = v;
        let _ = revision;
    }

    /// Applies one change to the view (keys the catalog does not hold).
    pub fn apply_view(&self, put: Option<&Versioned>, key: &str) -> bool {
        apply_to_view(&self.store, &mut self.view.write(), put, key)
    }

    /// Records an ownership this router just committed (the feed's echo of
    /// it then changes nothing).
    pub fn apply_owner(&self, vdisk: &str, o: Option<Ownership>) {
        let mut v = self.view.write();
        match o {
            Some(o) => {
                let newer = v
                    .owners
                    .get(vdisk)
                    .is_none_or(|cur| cur.generation < o.generation);
                if newer {
                    v.owners.insert(vdisk.to_string(), o);
                }
            }
            None => {
                v.owners.remove(vdisk);
            }
        }
    }

    /// Notes that the whole router has applied the feed through `revision`.
    pub fn set_applied(&self, revision: i64) {
        self.applied.send_if_modified(|r| {
            if revision > *r {
                *r = revision;
                true
            } else {
                false
            }
        });
    }

    /// Waits until the router has applied everything etcd had committed
    /// when this call began (a linearizable read of the revision, then
    /// waiting for the feed), so a management operation decides on current
    /// state.
    pub async fn sync(&self) -> DepotResult<()> {
        let rev = self.store.revision().await?;
        let mut rx = self.applied.subscribe();
        let wait = async {
            while *rx.borrow_and_update() < rev {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .map_err(|_| {
                DepotError::ClusterDown(format!(
                    "this router has not caught up with the cluster state (revision {rev}) within 5 s"
                ))
            })
    }

    /// The client of router `name` (from the view's membership record).
    pub fn peer(&self, name: &str) -> DepotResult<Arc<PeerClient>> {
        let addr = self
            .view()
            .routers
            .get(name)
            .map(|r| r.peer.clone())
            .ok_or_else(|| DepotError::BadRequest(format!("router {name:?} is not a member")))?;
        let mut peers = self.peers.lock();
        if let Some(p) = peers.get(name) {
            return Ok(p.clone());
        }
        let p = Arc::new(PeerClient::new(self.identity.clone(), name, &addr));
        peers.insert(name.to_string(), p.clone());
        Ok(p)
    }

    /// The router's TLS identity (for the peer server).
    pub fn identity(&self) -> &RouterIdentity {
        &self.identity
    }

    /// Leaves the cluster cleanly: revokes the lease (the router shows as
    /// down at once rather than after its time to live).
    pub async fn leave(&self) {
        let lease = self.lease.lock().take();
        if let Some(l) = lease {
            l.revoke(&self.store).await;
        }
    }

    /// Joins again after the lease was lost (etcd said it expired): a new
    /// lease and liveness key. Ownerships are re-validated by the caller.
    pub async fn rejoin(&self) -> DepotResult<()> {
        let lease = Lease::grant(&self.store, self.ttl, self.fence.clone()).await?;
        let rec = self.record();
        let rec = members::join(
            &self.store,
            rec,
            lease.id(),
            self.ttl + Duration::from_secs(2),
        )
        .await?;
        *self.record.write() = rec;
        *self.lease.lock() = Some(lease);
        Ok(())
    }
}

/// Updates `v` with one key's new value (`None`: deleted); whether it was
/// a key of the view.
fn apply_to_view(store: &Store, v: &mut View, put: Option<&Versioned>, key: &str) -> bool {
    let Some((k, name)) = store.keys().parse(key) else {
        return false;
    };
    let name = name.to_string();
    match (k, put) {
        (kind::ROUTERS, Some(kv)) => match kv.json::<RouterRecord>() {
            Ok(r) => {
                v.routers.insert(name, r);
            }
            Err(e) => tracing::warn!(%key, error = %e, "ignoring a bad router record"),
        },
        (kind::ROUTERS, None) => {
            v.routers.remove(&name);
        }
        (kind::ALIVE, Some(_)) => {
            v.up.insert(name, ());
        }
        (kind::ALIVE, None) => {
            v.up.remove(&name);
        }
        (kind::OWNERS, Some(kv)) => match Ownership::from_versioned(kv) {
            Ok(o) => {
                if v.owners
                    .get(&name)
                    .is_none_or(|c| c.generation <= o.generation)
                {
                    v.owners.insert(name, o);
                }
            }
            Err(e) => tracing::warn!(%key, error = %e, "ignoring a bad owner record"),
        },
        (kind::OWNERS, None) => {
            v.owners.remove(&name);
        }
        (kind::PR, Some(kv)) => {
            v.reservations.insert(name, kv.clone());
        }
        (kind::PR, None) => {
            v.reservations.remove(&name);
        }
        (kind::DTL, Some(kv)) => match depot_cluster::Mirrored::from_versioned(kv) {
            Ok(m) => {
                v.mirrors.insert(name, m);
            }
            Err(e) => tracing::warn!(%key, error = %e, "ignoring a bad mirror record"),
        },
        (kind::DTL, None) => {
            v.mirrors.remove(&name);
        }
        _ => return false,
    }
    true
}

/// Reads the cluster CA, creating it if this is the first router.
async fn ensure_ca(store: &Store) -> DepotResult<CaRecord> {
    let key = store.keys().key(kind::CA, CA_KEY);
    loop {
        if let Some(v) = store.get(&key).await? {
            return v.json::<CaRecord>().map_err(DepotError::from);
        }
        let ca = CaRecord::generate(&format!("Depot cluster {:016x}", rand::random::<u64>()))?;
        let txn = Txn::new()
            .guard(Guard::Absent(key.clone()))
            .put_json(key.clone(), &ca)?;
        if let Committed::Applied(_) = store.commit(txn).await? {
            tracing::info!("created the cluster certificate authority");
            return Ok(ca);
        }
    }
}
