//! Who may write a vDisk's objects: the owner context a volume is opened
//! with in a grid (several storage routers sharing a vPool's backend, one
//! owning each vDisk), and the fencing seam the daemon fills in.
//!
//! An owner has a *generation*: a number that only grows across ownership
//! changes (the daemon takes it from its cluster store). Generation 0 means
//! standalone: no cluster, today's behaviour and today's object keys. A
//! router that lost a vDisk (paused, partitioned) may keep running for a
//! while; generation-named keys keep it from overwriting the new owner's
//! objects, and [`Fencing::check`] plus conditional manifest PUTs
//! ([`FencingMode::Conditional`]) keep it from publishing or deleting
//! anything once it is deposed (docs/engine-formats.md, *Grid*).
//!
//! Invariants:
//! - An [`Owner`]'s generation is read once, when it is made, and never
//!   changes: a volume opened under generation `g` writes and publishes as
//!   `g` until it is closed.
//! - The engine calls [`Fencing::check`] only off the I/O path: before each
//!   manifest PUT and before deleting a volume's objects, never per write.
//! - The engine depends on no cluster crate: everything it learns about
//!   ownership comes through this trait.

use std::sync::Arc;

/// The daemon's view of one vDisk's ownership, consulted by the engine
/// before it publishes a manifest or deletes objects.
pub trait Fencing: Send + Sync {
    /// The owner generation this router holds the vDisk under (0:
    /// standalone).
    fn generation(&self) -> u64;
    /// Whether this router still owns the vDisk under that generation.
    /// [`FenceError::Lost`] fences the volume for good: every later read,
    /// write and ship fails with [`EngineError::Fenced`](crate::EngineError::Fenced).
    /// [`FenceError::Unknown`] publishes and deletes nothing now (the
    /// caller retries later) and leaves I/O alone.
    fn check(&self) -> Result<(), FenceError>;
}

/// Why an ownership check did not pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    /// This router no longer owns the vDisk (another generation does, or
    /// its lease lapsed).
    #[error("{0}")]
    Lost(String),
    /// Ownership cannot be established now (the cluster store cannot be
    /// reached): nothing is known to have changed.
    #[error("ownership cannot be checked: {0}")]
    Unknown(String),
}

/// The standalone owner: generation 0, never fenced.
#[derive(Debug, Clone, Copy, Default)]
pub struct Standalone;

impl Fencing for Standalone {
    fn generation(&self) -> u64 {
        0
    }
    fn check(&self) -> Result<(), FenceError> {
        Ok(())
    }
}

/// The owner context a volume is opened, created, cloned or imported with.
#[derive(Clone)]
pub struct Owner {
    generation: u64,
    fencing: Arc<dyn Fencing>,
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owner")
            .field("generation", &self.generation)
            .finish()
    }
}

impl Default for Owner {
    fn default() -> Self {
        Owner::standalone()
    }
}

impl From<Arc<dyn Fencing>> for Owner {
    fn from(fencing: Arc<dyn Fencing>) -> Self {
        Owner::new(fencing)
    }
}

impl Owner {
    /// An owner with `fencing`'s generation (read now, once).
    pub fn new(fencing: Arc<dyn Fencing>) -> Self {
        Owner {
            generation: fencing.generation(),
            fencing,
        }
    }

    /// Generation 0 with a check that always passes: what the plain
    /// `open_volume`, `create_volume` and `clone_volume` use.
    pub fn standalone() -> Self {
        Owner::new(Arc::new(Standalone))
    }

    /// The owner generation (0: standalone).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether this owner is in a grid (generation above 0).
    pub fn is_grid(&self) -> bool {
        self.generation > 0
    }

    /// Asks the daemon whether the ownership still holds.
    pub fn check(&self) -> Result<(), FenceError> {
        self.fencing.check()
    }
}

/// How a vPool's backend fences a deposed owner's manifest writes
/// ([`VPool::fencing_mode`](crate::VPool::fencing_mode)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FencingMode {
    /// The backend honours conditional PUTs (S3 `If-Match` /
    /// `If-None-Match`, probed): each manifest PUT is conditional on the
    /// e-tag of the manifest the volume last read or wrote, so a deposed
    /// owner's PUT is refused by the store itself.
    Conditional,
    /// The backend ignores conditions (Garage, s3rver) or could not be
    /// probed: only [`Fencing::check`] (and a read of the manifest's newest
    /// epoch before each PUT) stands between a deposed owner and the
    /// manifest; the daemon's check must ask the cluster store.
    External,
    /// A local directory: one router, no conditional writes; fencing is the
    /// check hook and the epoch read, as for `External`.
    Local,
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Gen(u64);
    impl Fencing for Gen {
        fn generation(&self) -> u64 {
            self.0
        }
        fn check(&self) -> Result<(), FenceError> {
            Err(FenceError::Lost(format!("lost generation {}", self.0)))
        }
    }

    #[test]
    fn owners_carry_the_fencing_generation() {
        let s = Owner::standalone();
        assert_eq!(s.generation(), 0);
        assert!(!s.is_grid());
        assert!(s.check().is_ok());
        let g = Owner::new(Arc::new(Gen(7)));
        assert_eq!(g.generation(), 7);
        assert!(g.is_grid());
        assert_eq!(
            g.check(),
            Err(FenceError::Lost("lost generation 7".to_string()))
        );
    }

    #[test]
    fn fencing_modes_serialise_in_lower_case() {
        let s = serde_json::to_string(&FencingMode::Conditional).unwrap();
        assert_eq!(s, "\"conditional\"");
    }
}
