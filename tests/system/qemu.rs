//! QEMU's iSCSI block driver (libiscsi inside qemu-img / qemu-io) against a
//! Depot LUN: a 256 MiB image round trip, and I/O at offsets that straddle
//! PDU (MaxRecvDataSegmentLength) and burst (MaxBurstLength) boundaries,
//! each against a raw and an engine-backed vDisk.

use std::process::Command;
use std::time::Duration;

use crate::common::{Depot, engine_vm_config, pattern, peer, qemu_io, run_timeout, vm_config};

#[test]
fn qemu_img_convert_round_trip_is_byte_identical() {
    round_trip(&vm_config("qemu", "256M"));
}

#[test]
fn qemu_img_convert_round_trip_on_engine_vdisk() {
    round_trip(&engine_vm_config("qemu", "256M"));
}

fn round_trip(config: &str) {
    let depot = Depot::start(config);
    let url = depot.url("qemu", 0);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("random.raw");
    let back = work.path().join("back.raw");
    let data = pattern(256 << 20, 0x5eed);
    std::fs::write(&src, &data).unwrap();
    let out = run_timeout(
        Command::new(peer("qemu-img"))
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(&url),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "convert in: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_timeout(
        Command::new(peer("qemu-img"))
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(&url)
            .arg(&back),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "convert out: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read(&back).unwrap();
    assert_eq!(got.len(), data.len(), "image size differs");
    let first_diff = got.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "images differ at byte {first_diff:?}");
    let info = run_timeout(
        Command::new(peer("qemu-img")).arg("info").arg(&url),
        Duration::from_secs(60),
    );
    assert!(String::from_utf8_lossy(&info.stdout).contains("virtual size: 256 MiB"));
}

#[test]
fn qemu_io_across_pdu_and_burst_boundaries() {
    pdu_and_burst_boundaries(&vm_config("qemuio", "64M"));
}

#[test]
fn qemu_io_across_pdu_and_burst_boundaries_on_engine_vdisk() {
    pdu_and_burst_boundaries(&engine_vm_config("qemuio", "64M"));
}

fn pdu_and_burst_boundaries(config: &str) {
    let depot = Depot::start(config);
    let url = depot.url("qemuio", 0);
    // (offset, length, pattern byte): around 8 KiB (login default MRDSL),
    // 256 KiB (negotiated MRDSL), 1 MiB, 16 MiB (bursts), sub-4K-aligned.
    let cases: &[(u64, u64, u8)] = &[
        (512, 512, 0x11),
        (8192 - 512, 8192 + 1024, 0x22),
        ((256 << 10) - 4096, (256 << 10) + 8192, 0x33),
        ((1 << 20) - 512, (3 << 20) + 1536, 0x44),
        ((16 << 20) - 3584, (16 << 20) + 7680, 0x55),
        ((64 << 20) - 4096, 4096, 0x66),
    ];
    let mut cmds = Vec::new();
    for (i, (off, len, p)) in cases.iter().enumerate() {
        // Alternate plain and FUA writes.
        let fua = if i % 2 == 1 { "-f " } else { "" };
        cmds.push(format!("write {fua}-P {p:#x} {off} {len}"));
    }
    cmds.push("flush".into());
    qemu_io(&url, &cmds);
    // Read back in a second session: every range holds its pattern, except
    // where a later range overwrote it.
    let mut reads = Vec::new();
    for (i, (off, len, p)) in cases.iter().enumerate() {
        let end = off + len;
        let later_start = cases[i + 1..]
            .iter()
            .filter(|(o, l, _)| *o < end && o + l > *off)
            .map(|(o, _, _)| *o)
            .min();
        let check_end = later_start.map_or(end, |s| s.max(*off));
        if check_end > *off {
            reads.push(format!("read -P {p:#x} {off} {}", check_end - off));
        }
    }
    // Untouched space between ranges reads as zeros.
    reads.push(format!("read -P 0 {} {}", 40 << 20, 1 << 20));
    let text = qemu_io(&url, &reads);
    assert!(!text.contains("Pattern verification failed"), "{text}");
    assert!(!text.to_lowercase().contains("error"), "{text}");
}
