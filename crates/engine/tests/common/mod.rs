//! Shared helpers for the engine's integration tests.
#![allow(dead_code, missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use depot_engine::{BackendConfig, VPool, VPoolConfig};

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A small-container config so tests exercise sealing and shipping.
pub fn config(root: &Path) -> VPoolConfig {
    let mut c = VPoolConfig::new(
        "pool",
        BackendConfig::Local {
            path: root.join("backend"),
        },
        root.join("flash"),
    );
    c.container_bytes = 64 * 4096;
    c.write_buffer_bytes = 4 << 20;
    c.keep_shipped_bytes = 1 << 20;
    c.read_cache_bytes = 1 << 20;
    c.ship_interval = Duration::from_secs(3600);
    c.sync_interval = Duration::from_millis(200);
    c.retry.base_delay = Duration::from_millis(5);
    c.retry.max_delay = Duration::from_millis(50);
    c
}

pub fn open(cfg: &VPoolConfig, rt: &tokio::runtime::Runtime) -> Arc<VPool> {
    VPool::open(cfg.clone(), rt.handle().clone()).unwrap()
}

pub fn flash(root: &Path) -> PathBuf {
    root.join("flash")
}

/// A volume's flash directory (its `containers` and `tlogs`).
pub fn vol_dir(root: &Path, v: &depot_engine::Volume) -> PathBuf {
    flash(root).join("vols").join(format!("{:016x}", v.id()))
}

/// Deterministic block contents: every byte derived from (tag, lba, i).
pub fn pattern(tag: u64, lba: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ lba.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    v
}

pub mod grid;
pub mod handover;
pub mod moto;
