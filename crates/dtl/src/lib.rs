//! The DTL (distributed transaction log): each vDisk's unshipped window —
//! what its owner has on flash and not yet on the backend — mirrored to
//! another router, so that router can take the vDisk over with every write
//! whose durability was promised.
//!
//! The owner's engine hands each group commit's batch to a
//! [`MirrorClient`] (the engine's `Mirror` seam), which copies the bytes
//! the batch names to the holder; the holder keeps them in a
//! [`ReplicaStore`] and, on a takeover, hands the engine a `MirrorCopy` to
//! import. The transport (the peer connection) and the cluster state
//! (placement, the mirror's recorded state) are the daemon's, behind
//! [`Link`] and [`Control`].
//!
//! Modules, in dependency order: [`error`]; [`proto`] (the messages and
//! their bounds); [`replica`] (the holder's copies); [`seam`] (modes,
//! states, what the daemon plugs in); `window` (which ranges of the
//! owner's window files a round copies, and reading them); [`client`]
//! (the owner's worker and state machine). The protocol and the state
//! machine are specified in docs/cluster.md.

pub mod client;
pub mod error;
pub mod proto;
pub mod replica;
pub mod seam;
mod window;

pub use client::MirrorClient;
pub use error::{DtlError, DtlResult};
pub use replica::{HeldCopy, ReplicaState, ReplicaStore};
pub use seam::{
    ClientConfig, Control, Link, Locate, MirrorState, MirrorStatus, Mode, RecordError, Subject,
};
