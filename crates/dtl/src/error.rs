//! The DTL's errors.

use thiserror::Error;

/// What can go wrong holding or sending a mirror.
#[derive(Debug, Error)]
pub enum DtlError {
    /// A message broke the protocol (bad name, out of bounds, out of
    /// order); nothing was written.
    #[error("DTL protocol: {0}")]
    Protocol(String),
    /// The holder has no mirror of this vDisk for this owner generation.
    #[error("no mirror of vDisk {vdisk:?} for owner generation {generation} here")]
    NotHeld {
        /// The vDisk.
        vdisk: String,
        /// The generation asked for.
        generation: u64,
    },
    /// The holder's disk failed.
    #[error("DTL storage: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The other router could not be reached or refused.
    #[error("DTL peer: {0}")]
    Peer(String),
}

impl DtlError {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DtlError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Results of this crate.
pub type DtlResult<T> = Result<T, DtlError>;
