//! Set-up shared by the engine benchmarks (each bench binary includes this
//! module): a tokio runtime for the vPool's background work and a scratch
//! directory under `DEPOT_BENCH_DIR` (default `/tmp`).

/// A 2-worker multi-threaded runtime.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A temporary directory under `DEPOT_BENCH_DIR` (default `/tmp`), removed
/// when dropped.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(std::env::var("DEPOT_BENCH_DIR").unwrap_or("/tmp".into())).unwrap()
}
