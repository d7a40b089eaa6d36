//! The Linux kernel initiator with dm-multipath against a grid of three
//! routers: one iSCSI session per router (each reached through its own
//! QEMU `guestfwd`, since the routers advertise 127.0.0.1 portals), one
//! multipath map grouping the paths by ALUA priority, and a verified write
//! workload (fio passes, every block checked) running on the map while the
//! vDisk moves r1 → r2 → r3 → r1. The guest is the one the kernel test boots
//! (`scripts/initiator-guest.sh`), at its `multipath` step.
//!
//! What must hold: the guest sees one path per router; the path the kernel
//! holds active/optimized follows the owner through every move; no I/O error
//! reaches the multipath device; every pass and a final pass over the whole
//! region verify; and what the guest last read is what the owner serves
//! after it logged out.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::{Grid, eventually};
use crate::common::{Depot, peer, run_timeout, tools_cache};

const VM: &str = "mp1";
const DISK: &str = "mp1-root";
/// The region the guest's workload writes (its `REGION`).
const REGION: usize = 32 << 20;
/// Whole test, from the guest's start to its power-off.
const GUEST_LIMIT: Duration = Duration::from_secs(300);
/// Between the moves: the workload writes while the vDisk stays put.
const SETTLE: Duration = Duration::from_secs(4);

/// The built guest (as the kernel test finds it).
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

/// A running guest whose `GUEST:` lines arrive as it prints them; killed
/// when dropped.
struct Guest {
    child: Child,
    lines: Receiver<String>,
    console: Arc<Mutex<String>>,
    seen: Vec<String>,
}

impl Guest {
    /// Boots the guest's multipath step; guest address 10.0.2.(100+i) is
    /// forwarded to `portals[i]`, with portal group tag `tpgts[i]`.
    fn boot(portals: &[String], tpgts: &[u16], iqn: &str, owners: &[u16], extra: &str) -> Guest {
        let dir = guest_dir();
        let socat = peer("socat");
        let fwds: Vec<String> = portals
            .iter()
            .enumerate()
            .map(|(i, p)| {
                format!(
                    "guestfwd=tcp:10.0.2.{}:3260-cmd:{} - TCP:{p}",
                    100 + i,
                    socat.display()
                )
            })
            .collect();
        let netdev = format!("user,id=n0,restrict=on,{}", fwds.join(","));
        let paths: Vec<String> = tpgts
            .iter()
            .enumerate()
            .map(|(i, t)| format!("10.0.2.{}:3260,{t}", 100 + i))
            .collect();
        let owners: Vec<String> = owners.iter().map(u16::to_string).collect();
        let append = format!(
            "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1 depot.iqn={iqn} depot.step=multipath depot.portals={} depot.owners={} depot.secs=150 {extra}",
            paths.join("/"),
            owners.join(",")
        );
        let mut child = Command::new(peer("qemu-system-x86_64"))
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
            .args(["-append", &append])
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,snapshot=on",
                dir.join("root.img").display()
            ))
            .args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qemu-system-x86_64");
        let console = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = channel();
        let out = child.stdout.take().expect("qemu stdout");
        let c = console.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line).into_owned();
                {
                    let mut c = c.lock().unwrap();
                    c.push_str(&line);
                    c.push('\n');
                }
                if let Some((_, rest)) = line.split_once("GUEST: ") {
                    let _ = tx.send(rest.trim().to_string());
                }
            }
        });
        let err = child.stderr.take().expect("qemu stderr");
        let c = console.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(err).read_to_string(&mut s);
            c.lock().unwrap().push_str(&format!("[qemu stderr]\n{s}"));
        });
        Guest {
            child,
            lines,
            console,
            seen: Vec::new(),
        }
    }

    /// Collects lines until one equals `line` (true) or `until` (false).
    fn wait_for(&mut self, line: &str, until: Instant) -> bool {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = l == line;
                    self.seen.push(l);
                    if hit {
                        return true;
                    }
                }
                Err(RecvTimeoutError::Timeout) => return false,
                Err(RecvTimeoutError::Disconnected) => {
                    // QEMU exited: take what is left, then stop.
                    return false;
                }
            }
        }
    }

    /// Collects the lines that arrived so far.
    fn drain(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
    }

    fn has(&self, line: &str) -> bool {
        self.seen.iter().any(|l| l == line)
    }

    /// The value of the first `key VALUE` line.
    fn field(&self, key: &str) -> &str {
        let prefix = format!("{key} ");
        self.seen
            .iter()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no \"{key}\" line; guest said:\n{}", self.said()))
    }

    /// The values of every `key VALUE` line, in order.
    fn all(&self, key: &str) -> Vec<&str> {
        let prefix = format!("{key} ");
        self.seen
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix))
            .collect()
    }

    fn said(&self) -> String {
        self.seen.join("\n")
    }

    fn console(&self) -> String {
        self.console.lock().unwrap().clone()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The time of day (UTC) to the millisecond, as the guest prints it.
fn utc_now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let s = t.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        t.subsec_millis()
    )
}

/// Bytes router `r` wrote to the vDisk for initiators (its
/// `depot_vdisk_write_bytes_total`).
fn written_bytes(r: &Depot) -> u64 {
    let (status, body) = r.http_get("/metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| {
            l.starts_with("depot_vdisk_write_bytes_total{") && l.contains(&format!("\"{DISK}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// One move as `depot --json vdisk move` reported it.
struct Moved {
    to: String,
    pause_ms: u64,
    total_ms: u64,
    paused_bytes: u64,
    precopied_bytes: u64,
}

#[test]
fn dm_multipath_verified_writes_survive_moves_across_three_routers() {
    let t0 = Instant::now();
    let g = Grid::start(3, 5);
    let names = ["r1", "r2", "r3"];
    let tpgts = g.tpgts();

    g.r(0).cli_ok(&["vm", "create", VM, "--multipath"]);
    g.r(0).cli_ok(&[
        "vdisk", "create", DISK, "--vm", VM, "--size", "256M", "--vpool", "s3p",
    ]);
    let shown = g.r(1).json(&["vdisk", "show", DISK]);
    assert_eq!(shown["owner"], "r1", "{shown}");
    let iqn = format!("iqn.2026-11.io.depot:{VM}");
    let portals: Vec<String> = g.routers.iter().map(|r| r.portal.to_string()).collect();
    // The owners in order: r1, then each move's target.
    let route = [1usize, 2, 0];
    let owners: Vec<u16> = std::iter::once(tpgts[0])
        .chain(route.iter().map(|&i| tpgts[i]))
        .collect();
    let grid_ready = t0.elapsed();

    let mut guest = Guest::boot(&portals, &tpgts, &iqn, &owners, "");
    let booted = Instant::now();
    let limit = booted + GUEST_LIMIT;
    assert!(
        guest.wait_for("workload-started", booted + Duration::from_secs(180)),
        "the guest did not start its workload; it said:\n{}\nconsole:\n{}",
        guest.said(),
        guest.console()
    );
    let started = booted.elapsed();
    assert_eq!(guest.field("login"), "0", "{}", guest.said());
    assert_eq!(guest.field("paths"), "3", "{}", guest.said());
    // Every path has the vDisk's size, the standby ones too (a path the
    // kernel sized 0 would fail every I/O once its router owns the vDisk).
    let paths = guest.all("path");
    assert_eq!(paths.len(), 3, "{}", guest.said());
    for p in &paths {
        assert!(p.contains(" sectors 524288 "), "path {p}");
    }

    // The moves, each through a different router's API (a non-owner
    // forwards it to the owner).
    let mut moves = Vec::new();
    for (k, &to) in route.iter().enumerate() {
        std::thread::sleep(SETTLE);
        guest.drain();
        if guest.has("workload-done") {
            // It failed (asserted below, with everything it said).
            break;
        }
        let via = g.r((k + 2) % 3);
        let began = utc_now();
        let out = via.cli(&["--json", "vdisk", "move", DISK, "--to", names[to]]);
        eprintln!("move {k} to {}: {began} .. {}", names[to], utc_now());
        assert!(
            out.status.success(),
            "move to {} failed: {}{}\nguest said:\n{}\nr1 log:\n{}\nr2 log:\n{}\nr3 log:\n{}",
            names[to],
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            guest.said(),
            g.r(0).log(),
            g.r(1).log(),
            g.r(2).log()
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(r["to"], names[to], "{r}");
        let num = |k: &str| {
            r[k].as_u64()
                .unwrap_or_else(|| panic!("no {k} in the move report {r}"))
        };
        moves.push(Moved {
            to: names[to].to_string(),
            pause_ms: num("pause_ms"),
            total_ms: num("total_ms"),
            paused_bytes: num("paused_bytes"),
            precopied_bytes: num("precopied_bytes"),
        });
    }
    let moved_at = booted.elapsed();
    guest.drain();
    let ended_early = guest.has("workload-done");
    let finished = guest.wait_for("end", limit);
    let ended = booted.elapsed();
    let said = format!(
        "{}\nr1 log:\n{}\nr2 log:\n{}\nr3 log:\n{}",
        guest.said(),
        g.r(0).log(),
        g.r(1).log(),
        g.r(2).log()
    );
    assert!(
        finished,
        "the guest did not finish within {GUEST_LIMIT:?}; it said:\n{said}\nconsole:\n{}",
        guest.console()
    );
    eprintln!("guest said:\n{}", guest.said());
    for (k, m) in moves.iter().enumerate() {
        eprintln!(
            "move {k} to {}: pause_ms {} total_ms {} paused_bytes {} precopied_bytes {}",
            m.to, m.pause_ms, m.total_ms, m.paused_bytes, m.precopied_bytes
        );
    }
    eprintln!(
        "timings: grid {grid_ready:?}, guest boot to workload {started:?}, moves done at {moved_at:?}, guest done at {ended:?}, total {:?}",
        t0.elapsed()
    );

    // Every pass wrote and verified its region; at least one pass ran
    // after the last move.
    let passes = guest.all("pass");
    for p in &passes {
        assert!(p.contains(" rc 0 "), "pass {p}:\n{said}");
    }
    assert!(passes.len() >= 2, "{said}");
    assert_eq!(guest.field("final-verify"), "0", "{said}");
    assert_eq!(guest.field("io-errors"), "0", "{said}");
    assert_eq!(guest.field("dm-errors"), "0", "{said}");
    assert_eq!(guest.field("beyond-end"), "0", "{said}");
    assert_eq!(guest.field("verify"), "ok", "{said}");
    assert!(
        moves.len() == route.len() && !ended_early,
        "the workload ended before the last move finished:\n{said}"
    );

    // The kernel followed the owner: active/optimized went r1, r2, r3, r1.
    let active: Vec<u16> = guest
        .all("active")
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    let mut distinct = active.clone();
    distinct.dedup();
    assert_eq!(distinct, owners, "active paths the guest saw:\n{said}");

    // Each router served the guest's writes while it owned the vDisk.
    for (name, r) in names.iter().zip(&g.routers) {
        let written = written_bytes(r);
        eprintln!("{name} wrote {written} bytes for the guest");
        assert!(written > 0, "{name} served no write");
    }

    // What the guest last read is what r1, the owner again, serves.
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("region.img");
    let out = run_timeout(
        Command::new(peer("qemu-img"))
            .args(["dd", "-f", "raw", "-O", "raw", "bs=1M"])
            .arg(format!("count={}", REGION >> 20))
            .arg(format!("if={}", g.r(0).url(VM, 0)))
            .arg(format!("of={}", img.display())),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use md5::Digest;
    let data = std::fs::read(&img).unwrap();
    assert_eq!(data.len(), REGION);
    let sum = format!("{:x}", md5::Md5::digest(&data));
    assert_eq!(
        guest.field("sum"),
        sum,
        "the region as r1 serves it differs"
    );
}

/// The kernel's dm-multipath over the three routers keeps a mounted ext4,
/// with a verified workload running on a file of it (plain O_DIRECT
/// writes: a sync mirror holds every completed write, flushed or not),
/// through a `kill -9` of the vDisk's owner:
/// the router holding its in-sync mirror takes it over,
/// the kernel's path follows (queued I/O, `no_path_retry queue`), no I/O
/// error reaches the filesystem, and fsck finds it clean afterwards.
#[test]
fn dm_multipath_ext4_survives_kill9_of_the_owner() {
    let mut g = Grid::start(3, 3);
    let names = ["r1", "r2", "r3"];
    let tpgts = g.tpgts();
    g.r(0).cli_ok(&["vm", "create", VM, "--multipath"]);
    g.r(0).cli_ok(&[
        "vdisk", "create", DISK, "--vm", VM, "--size", "256M", "--vpool", "s3p",
    ]);
    let mut holder = String::new();
    eventually(Duration::from_secs(60), "the mirror in sync", || {
        let d = g.r(1).json(&["vdisk", "show", DISK]);
        holder = d["dtl"]["holder"].as_str().unwrap_or_default().to_string();
        d["dtl"]["state"] == "in_sync"
    });
    let h = names.iter().position(|n| *n == holder).unwrap();
    let owners = [tpgts[0], tpgts[h]];
    let iqn = format!("iqn.2026-11.io.depot:{VM}");
    let portals: Vec<String> = g.routers.iter().map(|r| r.portal.to_string()).collect();
    let mut guest = Guest::boot(&portals, &tpgts, &iqn, &owners, "depot.fs=ext4");
    let booted = Instant::now();
    assert!(
        guest.wait_for("workload-started", booted + Duration::from_secs(180)),
        "the guest did not start its workload; it said:\n{}\nconsole:\n{}",
        guest.said(),
        guest.console()
    );
    assert_eq!(guest.field("mount"), "0", "{}", guest.said());
    std::thread::sleep(SETTLE);
    let killed = utc_now();
    g.routers[0].kill9();
    eprintln!("killed r1 (the owner) at {killed}; {holder} holds the mirror");
    eventually(Duration::from_secs(60), "the holder takes over", || {
        g.r(h).json(&["vdisk", "show", DISK])["owner"] == holder.as_str()
    });
    let finished = guest.wait_for("end", booted + GUEST_LIMIT);
    let said = format!("{}\n{holder} log:\n{}", guest.said(), g.r(h).log());
    assert!(
        finished,
        "the guest did not finish; it said:\n{said}\nconsole:\n{}",
        guest.console()
    );
    eprintln!("guest said:\n{}", guest.said());
    for p in guest.all("pass") {
        assert!(p.contains(" rc 0 "), "pass {p}:\n{said}");
    }
    assert_eq!(guest.field("final-verify"), "0", "{said}");
    assert_eq!(guest.field("io-errors"), "0", "{said}");
    assert_eq!(guest.field("dm-errors"), "0", "{said}");
    assert_eq!(guest.field("fs-errors"), "0", "{said}");
    assert_eq!(guest.field("verify"), "ok", "{said}");
    assert_eq!(guest.field("umount"), "0", "{said}");
    assert_eq!(guest.field("fsck"), "0", "{said}");
    // The kernel's active path went from the owner to the holder.
    let active: Vec<u16> = guest
        .all("active")
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    let mut distinct = active.clone();
    distinct.dedup();
    assert_eq!(distinct, owners, "active paths the guest saw:\n{said}");
}
