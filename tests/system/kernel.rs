//! The Linux kernel initiator (open-iscsi over `iscsi_tcp`) against a Depot
//! engine vDisk. This host's kernel has no `iscsi_tcp`, so the initiator
//! runs in a QEMU guest (TCG; built by `scripts/initiator-guest.sh`, its
//! boot program is `guest/initiator-test.sh`) whose 10.0.2.100:3260 is
//! forwarded, through `socat`, to the daemon's portal on 127.0.0.1.
//!
//! The guest discovers and logs in, makes an ext4 filesystem on LUN 0,
//! writes a file, syncs and powers off at once (no unmount, no logout).
//! Then the daemon is killed with SIGKILL and started again, and a second
//! boot mounts the filesystem (ext4 replays its journal) and must read the
//! same file back: what the kernel flushed survives a crash of both.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{Depot, engine_vm_config, peer, run_timeout, tools_cache};

/// The built guest: `$DEPOT_INITIATOR_GUEST`, else `initiator-guest` in
/// the tools cache (where `scripts/initiator-guest.sh` puts it).
fn guest_dir() -> PathBuf {
    let dir = std::env::var_os("DEPOT_INITIATOR_GUEST")
        .map(PathBuf::from)
        .or_else(|| tools_cache().map(|t| t.join("initiator-guest")))
        .expect("HOME, XDG_CACHE_HOME or DEPOT_INITIATOR_GUEST must be set");
    for f in ["vmlinuz", "initrd.img", "root.img"] {
        assert!(
            dir.join(f).is_file(),
            "{} missing: run scripts/install-deps.sh (it builds the initiator guest)",
            dir.join(f).display()
        );
    }
    dir
}

/// Boots the guest for one `step` against `depot`'s target `iqn` and
/// returns its `GUEST:` lines.
fn boot(dir: &Path, depot: &Depot, iqn: &str, step: &str) -> Vec<String> {
    let socat = peer("socat");
    let netdev = format!(
        "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:3260-cmd:{} - TCP:{}",
        socat.display(),
        depot.portal
    );
    let append = format!(
        "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1 depot.iqn={iqn} depot.step={step}"
    );
    // QEMU's TCG itself sometimes aborts on an internal assertion on a
    // loaded 2-core host (iotlb_to_section, seen in CI): that is the
    // emulator dying, not the guest or the target failing, so the boot is
    // tried once more. Any failure the guest sees still fails the test.
    let mut tries = 0;
    let out = loop {
        let out = boot_once(dir, &append, &netdev);
        let stderr = String::from_utf8_lossy(&out.stderr);
        tries += 1;
        if tries < 2 && stderr.contains("qemu-system-x86_64:") && stderr.contains("Assertion") {
            eprintln!(
                "QEMU aborted ({}); booting the {step} step again",
                stderr.trim()
            );
            continue;
        }
        break out;
    };
    let console = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<String> = console
        .lines()
        .filter_map(|l| l.split_once("GUEST: ").map(|(_, r)| r.trim().to_string()))
        .collect();
    assert!(
        lines.iter().any(|l| l == "end"),
        "the {step} boot did not finish; console:\n{console}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("guest, {step} boot: {lines:#?}");
    lines
}

/// One run of the guest for a kernel command line `append`.
fn boot_once(dir: &Path, append: &str, netdev: &str) -> std::process::Output {
    run_timeout(
        Command::new(peer("qemu-system-x86_64"))
            .args(["-accel", "tcg", "-m", "1024", "-smp", "2"])
            .args([
                "-nographic",
                "-no-reboot",
                "-nodefaults",
                "-serial",
                "stdio",
            ])
            .arg("-kernel")
            .arg(dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(dir.join("initrd.img"))
            .args(["-append", append])
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,snapshot=on",
                dir.join("root.img").display()
            ))
            .args(["-netdev", netdev, "-device", "virtio-net-pci,netdev=n0"])
            .stdin(Stdio::null()),
        Duration::from_secs(900),
    )
}

/// The line starting with `key `, without the key.
fn field<'a>(lines: &'a [String], key: &str) -> &'a str {
    let prefix = format!("{key} ");
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no \"{key}\" line in {lines:#?}"))
}

#[test]
fn kernel_initiator_ext4_survives_kill9_of_target_and_guest() {
    let dir = guest_dir();
    let mut depot = Depot::start(&engine_vm_config("kguest", "512M"));
    let iqn = "iqn.2026-11.io.depot:kguest";

    let written = boot(&dir, &depot, iqn, "write");
    assert_eq!(field(&written, "discovered"), "1", "{written:#?}");
    assert_eq!(field(&written, "login"), "0", "{written:#?}");
    let disk = field(&written, "disk");
    assert!(
        disk.contains("lun=0 vendor=DEPOT sectors=1048576"),
        "LUN 0 as the kernel sees it: {disk}"
    );
    for step in ["mkfs", "mount", "sync"] {
        assert_eq!(field(&written, step), "0", "{step}: {written:#?}");
    }
    let sum = field(&written, "sum").to_string();
    assert_eq!(sum.len(), 64, "sha256 of the file: {sum:?}");

    depot.kill9();
    depot.respawn();

    let read = boot(&dir, &depot, iqn, "verify");
    assert_eq!(field(&read, "login"), "0", "{read:#?}");
    assert_eq!(field(&read, "mount"), "0", "{read:#?}");
    assert_eq!(
        field(&read, "sum"),
        sum,
        "the file read back after the crash differs; log:\n{}",
        depot.log()
    );
    assert_eq!(field(&read, "umount"), "0", "{read:#?}");
    assert_eq!(field(&read, "logout"), "0", "{read:#?}");
}
