//! fio's libiscsi engine (fio rebuilt from Debian's source with
//! --enable-libiscsi) with crc32c verification at queue depth 32, against a
//! raw and an engine-backed vDisk.

use std::process::Command;
use std::time::Duration;

use crate::common::{Depot, engine_vm_config, peer, run_timeout, vm_config};

fn fio(url: &str, job: &[&str]) -> String {
    let escaped = url.replace(':', "\\:");
    let mut c = Command::new(peer("fio"));
    c.arg("--name=verify")
        .arg("--ioengine=libiscsi")
        .arg(format!("--filename={escaped}"))
        .args(job)
        .args([
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            // No verify-state file in the working directory (crates/depot).
            "--verify_state_save=0",
            "--group_reporting",
        ]);
    let out = run_timeout(&mut c, Duration::from_secs(600));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fio failed:\n{text}");
    assert!(!text.contains("verify: bad"), "{text}");
    text
}

#[test]
fn fio_libiscsi_verify_qd32() {
    verify_qd32(&vm_config("fio", "128M"));
}

#[test]
fn fio_libiscsi_verify_qd32_on_engine_vdisk() {
    verify_qd32(&engine_vm_config("fio", "128M"));
}

fn verify_qd32(config: &str) {
    let depot = Depot::start(config);
    let url = depot.url("fio", 0);
    fio(
        &url,
        &[
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=32",
            "--size=64m",
            "--randrepeat=1",
        ],
    );
    // Mixed sizes: crosses PDU, R2T and burst boundaries at depth.
    fio(
        &url,
        &[
            "--rw=randwrite",
            "--bsrange=4k-1m",
            "--iodepth=32",
            "--size=96m",
            "--offset=32m",
        ],
    );
}
