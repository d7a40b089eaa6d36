//! Black-box system tests: a real `depot serve` process on 127.0.0.1, driven
//! by real initiators (libiscsi's iscsi-test-cu, qemu-img/qemu-io over
//! `iscsi://`, fio's libiscsi engine, the Linux kernel initiator in a QEMU
//! guest) and by raw sockets for hostile input.
//!
//! The peers are installed by `scripts/install-deps.sh`; a missing peer fails
//! the test with that hint rather than skipping it.

// Test code: hand-built PDU lengths of small payloads, latencies in whole
// microseconds.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod cluster;
mod common;
mod conformance;
mod daemon;
mod dashboards;
mod durability;
mod failover;
mod fio;
mod grid_moves;
mod hostile;
mod kernel;
mod multipath;
mod qemu;
