//! Typed engine errors and their mapping onto the `BlockDevice` seam.
//!
//! Callers branch on these: [`EngineError::is_retryable`] drives backend
//! retries and tells the daemon whether an admin call may be repeated;
//! `From<EngineError> for BlockError` is the one place engine failures become
//! SCSI-visible block errors (integrity → MEDIUM ERROR, unavailable backend →
//! a retryable sense, and so on).

use depot_block::BlockError;

/// Everything the engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Local file-system I/O failed (flash directory, container, log).
    #[error("local I/O error while {context}: {source}")]
    Io {
        /// What the engine was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The flash directory is full.
    #[error("flash directory is full while {0}")]
    NoSpace(String),
    /// The RocksDB index failed.
    #[error("index (RocksDB) error: {0}")]
    Index(String),
    /// The object backend failed in a way that may succeed later (network,
    /// 5xx, throttling, injected fault).
    #[error("backend temporarily unavailable: {0}")]
    BackendUnavailable(String),
    /// The object backend refused the request permanently (auth, bad config).
    #[error("backend error: {0}")]
    Backend(String),
    /// An object the engine needs is missing on the backend.
    #[error("object {0} not found on the backend")]
    ObjectNotFound(String),
    /// Stored data failed its checksum.
    #[error("integrity check failed for {what}: {detail}")]
    Integrity {
        /// Which cluster/object.
        what: String,
        /// The mismatch.
        detail: String,
        /// First logical block affected, when known.
        lba: Option<u64>,
    },
    /// A format (container, log, manifest, checkpoint) could not be parsed.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// Which structure.
        what: String,
        /// Why.
        detail: String,
    },
    /// The named volume does not exist.
    #[error("volume {0:?} not found")]
    VolumeNotFound(String),
    /// A volume with that name already exists.
    #[error("volume {0:?} already exists")]
    VolumeExists(String),
    /// The named snapshot does not exist.
    #[error("snapshot {0:?} not found")]
    SnapshotNotFound(String),
    /// A snapshot with that name already exists.
    #[error("snapshot {0:?} already exists")]
    SnapshotExists(String),
    /// The operation would break a clone that depends on this data.
    #[error("{0} has clones that depend on it")]
    HasClones(String),
    /// The request is malformed (bad name, size, block size).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Writes were refused: the volume is a template or read-only.
    #[error("volume is read-only")]
    ReadOnly,
    /// I/O past the end of the volume.
    #[error("blocks {lba}+{blocks} are beyond the end of the volume")]
    OutOfRange {
        /// First block.
        lba: u64,
        /// Number of blocks.
        blocks: u64,
    },
    /// An earlier durability failure (fdatasync error) poisoned the volume;
    /// it must be reopened so the logs are replayed.
    #[error("volume failed earlier and must be reopened: {0}")]
    Failed(String),
    /// The pool is shutting down.
    #[error("vPool is shut down")]
    ShutDown,
    /// This router no longer owns the vDisk (another owner took over, the
    /// daemon's fencing check failed, or it was handed over): every later
    /// read, write and ship on the volume fails with this.
    #[error("vDisk is fenced on this router: {0}")]
    Fenced(String),
}

impl From<crate::name::NameError> for EngineError {
    fn from(e: crate::name::NameError) -> Self {
        EngineError::InvalidArgument(e.to_string())
    }
}

/// Result alias for engine calls.
pub type EngineResult<T> = Result<T, EngineError>;

impl EngineError {
    /// Wraps a local I/O error with context, classifying ENOSPC.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        let context = context.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            EngineError::NoSpace(context)
        } else {
            EngineError::Io { context, source }
        }
    }

    /// Whether repeating the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            EngineError::BackendUnavailable(_) | EngineError::NoSpace(_) | EngineError::Io { .. }
        )
    }

    /// Whether the error reports bad or missing stored data.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            EngineError::Integrity { .. } | EngineError::Corrupt { .. }
        )
    }

    /// Whether the error names something that does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            EngineError::VolumeNotFound(_)
                | EngineError::SnapshotNotFound(_)
                | EngineError::ObjectNotFound(_)
        )
    }

    pub(crate) fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Self {
        EngineError::Corrupt {
            what: what.into(),
            detail: detail.into(),
        }
    }
}

impl From<EngineError> for BlockError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::OutOfRange { lba, blocks } => BlockError::OutOfRange { lba, blocks },
            EngineError::Integrity { lba, what, detail } => BlockError::Integrity {
                lba: lba.unwrap_or(0),
                detail: format!("{what}: {detail}"),
            },
            EngineError::Corrupt { what, detail } => BlockError::Integrity {
                lba: 0,
                detail: format!("{what}: {detail}"),
            },
            EngineError::ReadOnly => BlockError::ReadOnly,
            EngineError::NoSpace(m) => BlockError::NoSpace(m),
            EngineError::BackendUnavailable(m) => BlockError::Unavailable(m),
            EngineError::ShutDown => BlockError::Unavailable("vPool is shut down".into()),
            EngineError::Fenced(m) => BlockError::Unavailable(format!("fenced: {m}")),
            EngineError::Io { context, source } => BlockError::Io(std::io::Error::new(
                source.kind(),
                format!("{context}: {source}"),
            )),
            other => BlockError::Io(std::io::Error::other(other.to_string())),
        }
    }
}
