//! Depot's cluster state on etcd (v3 API; etcd 3.4 and later).
//!
//! Routers share one state: which routers exist and which are up, the
//! vPools, VMs and vDisks, persistent reservations, and which router owns
//! each vDisk under which generation. This crate knows etcd and nothing of
//! storage or SCSI; the daemon wires it to the engine and the target.
//!
//! Modules, in dependency order:
//! - [`error`], [`config`], [`keys`]: the error type, the settings, the key
//!   layout.
//! - [`store`]: reads, compare-and-swap transactions, bounded values.
//! - [`lease`]: the router's lease, its renewal, and the self-fencing clock
//!   ([`Fence`]) that stops I/O before the lease can lapse.
//! - [`members`]: joining, liveness, `depot router list`.
//! - [`owner`]: vDisk ownership with generations; transfer and takeover.
//! - [`dtl`]: each vDisk's mirror record, and the takeover from an in-sync
//!   mirror.
//! - [`watch`]: a feed of the whole state (snapshot, then changes).
//!
//! docs/cluster.md has the key layout, the fencing argument and the
//! failure table.

pub mod config;
pub mod dtl;
pub mod error;
pub mod keys;
pub mod lease;
pub mod members;
pub mod owner;
pub mod store;
pub mod watch;

pub use config::{ClusterConfig, EtcdTls};
pub use dtl::{DtlRecord, Mirrored};
pub use error::{ClusterError, ClusterResult};
pub use lease::{Fence, Lease, LeaseStatus};
pub use members::{AliveRecord, RouterRecord, RouterState};
pub use owner::{OwnerRecord, Ownership};
pub use store::{Committed, Guard, Op, Store, Txn, Versioned};
pub use watch::{Change, FeedEvent};
