//! The object backend as the engine sees it: a narrow, blocking facade over
//! `object_store` (local directory or S3), with retry + exponential backoff
//! and a built-in fault injector.
//!
//! Ownership and threading: one [`Backend`] per vPool, shared by its volumes
//! and workers. Calls block the calling thread on the vPool's tokio runtime
//! (`Handle::block_on`), so they must be made from non-async threads (the
//! blocking pool, the engine's own worker threads) — never from async code.
//!
//! Keys are relative to the vPool name, which this facade prefixes; their
//! layout is [`keys`]'s alone. Data objects are write-once; only manifests
//! and catalog entries are overwritten.
//!
//! Conditional PUTs (`conditional`): [`Backend::put_mode`] writes an object
//! only if it does not exist or still has a given e-tag, and
//! [`Backend::probe_conditional`] finds out whether the store enforces
//! that (AWS S3 and moto do, Garage ignores it; docs/engine-formats.md,
//! *Grid*). Volumes of a grid fence their manifest with it.
//!
//! Local-directory shortcut: [`Backend::put_link`] stores a sealed flash
//! file as an object by hard-linking it into the backend directory (plus a
//! directory fsync) instead of copying it through `object_store`. This is
//! only sound because the engine never writes a container file again once it
//! is sealed (see the volume module); the object and the flash copy are then one
//! immutable inode, and unlinking either name leaves the other intact.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::runtime::Handle;

use crate::config::{BackendConfig, RetryPolicy};
use crate::error::{EngineError, EngineResult};

mod conditional;
pub mod keys;

pub use conditional::{ETag, PutMode, PutOutcome};

// The key functions under the names they had before `keys` existed.
pub use keys::{catalog as catalog_key, manifest as manifest_key, volume_prefix};

/// Key of a container written standalone (owner generation 0).
pub fn container_key(vol: u64, seq: u64) -> String {
    keys::container(vol, seq, 0)
}

/// Key of a tlog written standalone (owner generation 0).
pub fn tlog_key(vol: u64, seq: u64) -> String {
    keys::tlog(vol, seq, 0)
}

/// Key of a checkpoint written standalone (owner generation 0).
pub fn checkpoint_key(vol: u64, seq: u64) -> String {
    keys::checkpoint(vol, seq, 0)
}

/// Injectable backend faults, for tests and drills. All knobs are atomics;
/// production code pays one relaxed load per call when nothing is set.
#[derive(Debug, Default)]
pub struct FaultInjector {
    unavailable: AtomicBool,
    fail_next: AtomicU32,
    fail_per_mille: AtomicU32,
    latency_ms: AtomicU64,
    corrupt_next_gets: AtomicU32,
    counter: AtomicU64,
}

impl FaultInjector {
    /// Every call fails (as a network outage would) until cleared.
    pub fn set_unavailable(&self, on: bool) {
        self.unavailable.store(on, Ordering::SeqCst);
    }
    /// The next `n` calls fail with a retryable error.
    pub fn fail_next(&self, n: u32) {
        self.fail_next.store(n, Ordering::SeqCst);
    }
    /// Each call fails with probability `per_mille`/1000.
    pub fn set_fail_rate(&self, per_mille: u32) {
        self.fail_per_mille.store(per_mille, Ordering::SeqCst);
    }
    /// Adds `ms` of latency to every call.
    pub fn set_latency_ms(&self, ms: u64) {
        self.latency_ms.store(ms, Ordering::SeqCst);
    }
    /// The next `n` successful GETs return data with one byte flipped.
    pub fn corrupt_next_gets(&self, n: u32) {
        self.corrupt_next_gets.store(n, Ordering::SeqCst);
    }
    /// Clears every fault.
    pub fn clear(&self) {
        self.set_unavailable(false);
        self.fail_next(0);
        self.set_fail_rate(0);
        self.set_latency_ms(0);
        self.corrupt_next_gets(0);
    }

    fn before_call(&self, op: &str) -> EngineResult<()> {
        let lat = self.latency_ms.load(Ordering::Relaxed);
        if lat > 0 {
            std::thread::sleep(Duration::from_millis(lat));
        }
        if self.unavailable.load(Ordering::Relaxed) {
            return Err(EngineError::BackendUnavailable(format!(
                "injected outage ({op})"
            )));
        }
        if self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(EngineError::BackendUnavailable(format!(
                "injected failure ({op})"
            )));
        }
        let rate = self.fail_per_mille.load(Ordering::Relaxed);
        if rate > 0 {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            // A cheap deterministic mix is enough to spread failures.
            let x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) % 1000;
            if x < u64::from(rate) {
                return Err(EngineError::BackendUnavailable(format!(
                    "injected random failure ({op})"
                )));
            }
        }
        Ok(())
    }

    fn maybe_corrupt(&self, data: Bytes) -> Bytes {
        if data.is_empty()
            || self
                .corrupt_next_gets
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
        {
            return data;
        }
        let mut v = data.to_vec();
        let mid = v.len() / 2;
        v[mid] ^= 0x40;
        Bytes::from(v)
    }
}

/// Counters the pool exports.
#[derive(Debug, Default)]
pub struct BackendCounters {
    /// Successful PUTs.
    pub puts: AtomicU64,
    /// Bytes PUT.
    pub put_bytes: AtomicU64,
    /// Successful GETs (whole and ranged).
    pub gets: AtomicU64,
    /// Bytes fetched.
    pub get_bytes: AtomicU64,
    /// Deletes.
    pub deletes: AtomicU64,
    /// Failed attempts (each retry counts).
    pub errors: AtomicU64,
}

/// Whether `key` is made only of characters object_store's local file
/// system stores verbatim (so the object's file name is predictable): path
/// segments of letters, digits, `_`, `-` and `.`, none starting with `.`
/// (generation keys are `<seq>.<gen>`).
fn plain_key(key: &str) -> bool {
    !key.is_empty()
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && !seg.starts_with('.')
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        })
}

/// Hard-links `src` to `dest` and makes the new directory entry durable.
/// An existing `dest` that already is the same inode (a re-ship after a
/// crash) counts as linked. False on any failure.
fn link_durably(src: &Path, dest: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = dest.parent() else {
        return false;
    };
    if std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    match std::fs::hard_link(src, dest) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let same = match (std::fs::metadata(src), std::fs::metadata(dest)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
            if !same {
                return false;
            }
        }
        Err(_) => return false,
    }
    // The object's directory, and its parent in case it was just created.
    let fsync = |d: &Path| std::fs::File::open(d).and_then(|f| f.sync_all()).is_ok();
    fsync(dir) && dir.parent().is_none_or(fsync)
}

/// Blocking, retrying facade over the vPool's object store.
pub struct Backend {
    /// A local-directory backend (one router; no conditional PUTs).
    local: bool,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// `<backend dir>/<prefix>` for a local-directory backend whose keys
    /// map one-to-one onto file names there (hard-link shipping).
    local_root: Option<PathBuf>,
    rt: Handle,
    retry: RetryPolicy,
    /// Fault injection knobs.
    pub faults: Arc<FaultInjector>,
    /// Counters.
    pub counters: BackendCounters,
    shutdown: AtomicBool,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The error and its whole source chain, for operators.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn map_err(e: object_store::Error, key: &str) -> EngineError {
    match e {
        object_store::Error::NotFound { .. } => EngineError::ObjectNotFound(key.to_string()),
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. } => {
            EngineError::BackendUnavailable(chain(&e))
        }
        other => EngineError::Backend(chain(&other)),
    }
}

impl Backend {
    /// Connects to the configured backend (no network I/O yet).
    pub fn open(
        cfg: &BackendConfig,
        pool: &str,
        rt: Handle,
        retry: RetryPolicy,
    ) -> EngineResult<Self> {
        let store: Arc<dyn ObjectStore> = match cfg {
            BackendConfig::Local { path } => {
                std::fs::create_dir_all(path)
                    .map_err(|e| EngineError::io(format!("creating {}", path.display()), e))?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(path)
                        .map_err(|e| EngineError::Backend(e.to_string()))?,
                )
            }
            BackendConfig::S3 {
                endpoint,
                bucket,
                region,
                access_key_id,
                secret_access_key,
                allow_http,
            } => {
                let mut b = object_store::aws::AmazonS3Builder::new()
                    // If-Match / If-None-Match on conditional PUTs (grid
                    // manifests); stores that ignore them are found out by
                    // `probe_conditional`.
                    .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_access_key_id(access_key_id)
                    .with_secret_access_key(secret_access_key)
                    .with_virtual_hosted_style_request(false)
                    // The engine does its own retries with backoff; keep the
                    // client's short so a dead endpoint is noticed quickly.
                    .with_retry(object_store::RetryConfig {
                        max_retries: 1,
                        retry_timeout: Duration::from_secs(10),
                        ..Default::default()
                    })
                    .with_client_options(
                        // allow_http lives in the client options: set it
                        // here, or these options would reset it.
                        object_store::ClientOptions::new()
                            .with_allow_http(*allow_http)
                            .with_timeout(Duration::from_secs(30))
                            .with_connect_timeout(Duration::from_secs(5)),
                    );
                if let Some(ep) = endpoint {
                    b = b.with_endpoint(ep);
                }
                Arc::new(b.build().map_err(|e| EngineError::Backend(e.to_string()))?)
            }
        };
        // object_store's local file system maps a key's path segments to
        // directories and file names, escaping unusual characters; only
        // link when the prefix needs no escaping (keys never do).
        let local_root = match cfg {
            BackendConfig::Local { path } if plain_key(pool) => Some(path.join(pool)),
            _ => None,
        };
        Ok(Backend {
            local: matches!(cfg, BackendConfig::Local { .. }),
            store,
            prefix: pool.to_string(),
            local_root,
            rt,
            retry,
            faults: Arc::new(FaultInjector::default()),
            counters: BackendCounters::default(),
            shutdown: AtomicBool::new(false),
        })
    }

    /// Makes retry-forever loops give up (pool shutdown).
    pub fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
    }

    fn path(&self, key: &str) -> ObjPath {
        ObjPath::from(format!("{}/{}", self.prefix, key))
    }

    fn with_retry<T>(
        &self,
        op: &str,
        key: &str,
        forever: bool,
        mut f: impl FnMut() -> EngineResult<T>,
    ) -> EngineResult<T> {
        let mut attempt: u32 = 0;
        let mut delay = self.retry.base_delay;
        loop {
            let r = self.faults.before_call(op).and_then(|()| f());
            match r {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    attempt += 1;
                    let give_up = if forever {
                        self.shutdown.load(Ordering::SeqCst)
                    } else {
                        attempt >= self.retry.max_attempts.max(1)
                    };
                    if give_up {
                        return Err(e);
                    }
                    tracing::debug!(op, key, attempt, error = %e, "backend call failed; retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(self.retry.max_delay);
                }
                Err(e) => {
                    if !matches!(e, EngineError::ObjectNotFound(_)) {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Stores an object. `forever` retries until success or shutdown.
    pub fn put(&self, key: &str, data: Bytes, forever: bool) -> EngineResult<()> {
        let path = self.path(key);
        let len = data.len() as u64;
        self.with_retry("put", key, forever, || {
            self.rt
                .block_on(self.store.put(&path, PutPayload::from_bytes(data.clone())))
                .map(|_| ())
                .map_err(|e| map_err(e, key))
        })?;
        self.counters.puts.fetch_add(1, Ordering::Relaxed);
        self.counters.put_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Stores the file at `src` as object `key` by hard-linking it into a
    /// local-directory backend, then fsyncs the directory entry. The caller
    /// guarantees `src` is durable and never modified again. Returns
    /// `Ok(false)` (nothing stored; copy with [`Backend::put`] instead) for
    /// other backends and when the link cannot be made (another file
    /// system, no permission, an existing different file). Fault injection
    /// and `forever` apply as for `put`.
    pub fn put_link(&self, key: &str, src: &Path, forever: bool) -> EngineResult<bool> {
        let Some(root) = &self.local_root else {
            return Ok(false);
        };
        if !plain_key(key) {
            return Ok(false);
        }
        let dest = root.join(key);
        let linked = self.with_retry("put", key, forever, || Ok(link_durably(src, &dest)))?;
        if linked {
            let len = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
            self.counters.puts.fetch_add(1, Ordering::Relaxed);
            self.counters.put_bytes.fetch_add(len, Ordering::Relaxed);
        }
        Ok(linked)
    }

    /// The file holding object `key` when the backend is a local directory
    /// (its bytes are the object's bytes), for positioned reads that skip
    /// `object_store`. `None` for other backends.
    pub fn local_path(&self, key: &str) -> Option<PathBuf> {
        let root = self.local_root.as_ref()?;
        plain_key(key).then(|| root.join(key))
    }

    /// Fetches a whole object.
    pub fn get(&self, key: &str) -> EngineResult<Bytes> {
        let path = self.path(key);
        let data = self.with_retry("get", key, false, || {
            self.rt
                .block_on(async {
                    let r = self.store.get(&path).await?;
                    r.bytes().await
                })
                .map_err(|e| map_err(e, key))
        })?;
        self.counters.gets.fetch_add(1, Ordering::Relaxed);
        self.counters
            .get_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(self.faults.maybe_corrupt(data))
    }

    /// Fetches `range` of an object (ranged GET).
    pub fn get_range(&self, key: &str, range: Range<u64>) -> EngineResult<Bytes> {
        let path = self.path(key);
        let want = range.end - range.start;
        let data = self.with_retry("get_range", key, false, || {
            self.rt
                .block_on(self.store.get_range(&path, range.clone()))
                .map_err(|e| map_err(e, key))
        })?;
        if data.len() as u64 != want {
            return Err(EngineError::corrupt(
                key.to_string(),
                format!("ranged GET returned {} bytes, wanted {want}", data.len()),
            ));
        }
        self.counters.gets.fetch_add(1, Ordering::Relaxed);
        self.counters.get_bytes.fetch_add(want, Ordering::Relaxed);
        Ok(self.faults.maybe_corrupt(data))
    }

    /// Deletes an object; a missing object is not an error.
    pub fn delete(&self, key: &str, forever: bool) -> EngineResult<()> {
        let path = self.path(key);
        let r = self.with_retry("delete", key, forever, || {
            self.rt
                .block_on(self.store.delete(&path))
                .map_err(|e| map_err(e, key))
        });
        match r {
            Ok(()) | Err(EngineError::ObjectNotFound(_)) => {
                self.counters.deletes.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Lists objects under `prefix` (relative keys and sizes).
    pub fn list(&self, prefix: &str) -> EngineResult<Vec<(String, u64)>> {
        let p = self.path(prefix.trim_end_matches('/'));
        let strip = format!("{}/", self.prefix);
        self.with_retry("list", prefix, false, || {
            self.rt.block_on(async {
                let mut out = Vec::new();
                let mut s = self.store.list(Some(&p));
                while let Some(item) = s.next().await {
                    let m = item.map_err(|e| map_err(e, prefix))?;
                    let full = m.location.to_string();
                    if let Some(rel) = full.strip_prefix(&strip) {
                        out.push((rel.to_string(), m.size));
                    }
                }
                Ok(out)
            })
        })
    }
}
