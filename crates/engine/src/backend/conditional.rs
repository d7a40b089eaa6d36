//! Conditional PUTs (create-if-absent, replace-if-unchanged) and the probe
//! that finds out whether the store enforces them.
//!
//! AWS S3 and moto enforce `If-None-Match: *` and `If-Match: <e-tag>` on
//! PUT; Garage and s3rver accept the headers and ignore them, and
//! object_store's local file system cannot replace conditionally at all. So
//! a vPool probes its store once ([`Backend::probe_conditional`]) before a
//! grid volume relies on a refusal.
//!
//! Invariants:
//! - A refused PUT ([`PutOutcome::Refused`]) stored nothing; it is an
//!   answer, not an error, and is never retried.
//! - The probe leaves nothing behind when it completes (its object is
//!   deleted whatever the answer) and writes only under
//!   [`keys::PROBE_PREFIX`](super::keys::PROBE_PREFIX), which no volume or
//!   scrub reads.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt, PutOptions, PutPayload, UpdateVersion};

use super::{Backend, keys, map_err};
use crate::error::{EngineError, EngineResult};

/// An object's e-tag, as the store reports it.
pub type ETag = String;

/// How [`Backend::put_mode`] treats an existing object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutMode {
    /// Replace it (what [`Backend::put`] does).
    Overwrite,
    /// Store only if no object has the key.
    Create,
    /// Store only if the object's e-tag is still this one.
    Update(ETag),
}

/// What a [`Backend::put_mode`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored; the new object's e-tag if the store reports one.
    Stored(Option<ETag>),
    /// The condition did not hold (the object exists, or has another
    /// e-tag); nothing was stored.
    Refused(String),
}

/// Whether an object_store error is a refused condition.
fn refused(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotModified { .. }
    )
}

fn options(mode: &PutMode) -> PutOptions {
    PutOptions::from(match mode {
        PutMode::Overwrite => object_store::PutMode::Overwrite,
        PutMode::Create => object_store::PutMode::Create,
        PutMode::Update(tag) => object_store::PutMode::Update(UpdateVersion {
            e_tag: Some(tag.clone()),
            version: None,
        }),
    })
}

impl Backend {
    /// Whether this is a local-directory backend.
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// Stores an object under `mode`, retrying like [`Backend::put`]
    /// (`forever` until success or shutdown). A condition that does not
    /// hold is [`PutOutcome::Refused`], never retried. A store that cannot
    /// do `mode` at all (the local file system cannot `Update`) fails with
    /// [`EngineError::Backend`].
    pub fn put_mode(
        &self,
        key: &str,
        data: Bytes,
        mode: &PutMode,
        forever: bool,
    ) -> EngineResult<PutOutcome> {
        let path = self.path(key);
        let len = data.len() as u64;
        let out = self.with_retry("put", key, forever, || {
            let r = self.rt.block_on(self.store.put_opts(
                &path,
                PutPayload::from_bytes(data.clone()),
                options(mode),
            ));
            match r {
                Ok(res) => Ok(PutOutcome::Stored(res.e_tag)),
                Err(e) if refused(&e) => Ok(PutOutcome::Refused(super::chain(&e))),
                Err(e) => Err(map_err(e, key)),
            }
        })?;
        if matches!(out, PutOutcome::Stored(_)) {
            self.counters.puts.fetch_add(1, Ordering::Relaxed);
            self.counters.put_bytes.fetch_add(len, Ordering::Relaxed);
        }
        Ok(out)
    }

    /// Fetches a whole object with its e-tag (if the store reports one).
    pub fn get_with_etag(&self, key: &str) -> EngineResult<(Bytes, Option<ETag>)> {
        let path = self.path(key);
        let (data, tag) = self.with_retry("get", key, false, || {
            self.rt
                .block_on(async {
                    let r = self.store.get(&path).await?;
                    let tag = r.meta.e_tag.clone();
                    Ok::<_, object_store::Error>((r.bytes().await?, tag))
                })
                .map_err(|e| map_err(e, key))
        })?;
        self.counters.gets.fetch_add(1, Ordering::Relaxed);
        self.counters
            .get_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok((self.faults.maybe_corrupt(data), tag))
    }

    /// Finds out whether the store enforces conditional PUTs: a probe
    /// object is created with `Create` twice (the second must be refused),
    /// replaced with `Update` on a wrong e-tag (must be refused) and on its
    /// own e-tag (must succeed), then deleted. `Ok(false)` for a local
    /// directory and for stores that ignore or cannot do the conditions;
    /// an error when the store could not be asked (one attempt per call, no
    /// retries: this runs when a vPool is opened).
    pub fn probe_conditional(&self) -> EngineResult<bool> {
        if self.local {
            return Ok(false);
        }
        self.faults.before_call("probe")?;
        let key = keys::probe(rand::random());
        let path = self.path(&key);
        let put = |mode: object_store::PutMode| {
            self.rt.block_on(self.store.put_opts(
                &path,
                PutPayload::from_static(b"depot conditional-put probe"),
                PutOptions::from(mode),
            ))
        };
        let ask = || -> EngineResult<bool> {
            let first = match put(object_store::PutMode::Create) {
                Ok(r) => r,
                Err(object_store::Error::NotImplemented { .. }) => return Ok(false),
                Err(e) if refused(&e) => {
                    return Err(EngineError::Backend(format!(
                        "probe object {key} exists already"
                    )));
                }
                // A PUT answered "not found" means there is no bucket.
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(EngineError::Backend(
                        "the bucket does not exist (or these credentials cannot see it)".into(),
                    ));
                }
                Err(e) => return Err(map_err(e, &key)),
            };
            // Each step: refused as it must be (true), accepted (false),
            // or no answer (error).
            let must_refuse = |mode| match put(mode) {
                Ok(_) | Err(object_store::Error::NotImplemented { .. }) => Ok(false),
                Err(e) if refused(&e) => Ok(true),
                Err(e) => Err(map_err(e, &key)),
            };
            if !must_refuse(object_store::PutMode::Create)? {
                return Ok(false);
            }
            let wrong = UpdateVersion {
                e_tag: Some("\"depot-probe-not-this-etag\"".into()),
                version: None,
            };
            if !must_refuse(object_store::PutMode::Update(wrong))? {
                return Ok(false);
            }
            let Some(tag) = first.e_tag else {
                return Ok(false);
            };
            let right = UpdateVersion {
                e_tag: Some(tag),
                version: first.version,
            };
            match put(object_store::PutMode::Update(right)) {
                Ok(_) => Ok(true),
                Err(e) if refused(&e) => Ok(false),
                Err(object_store::Error::NotImplemented { .. }) => Ok(false),
                Err(e) => Err(map_err(e, &key)),
            }
        };
        let answer = ask();
        let _ = self.rt.block_on(self.store.delete(&path));
        answer
    }
}
