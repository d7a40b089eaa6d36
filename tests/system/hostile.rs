//! Hostile and malformed input over raw sockets, login failures, ACLs,
//! SendTargets visibility and CHAP. Every case checks that the daemon answers
//! as the protocol says and that other sessions keep working. The same raw
//! initiator also checks the unit attentions a logged-in session sees when
//! the admin adds or grows a vDisk.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use md5::{Digest, Md5};

use crate::common::{Depot, peer, run_timeout};

/// A bare-bones initiator speaking raw PDUs.
pub(crate) struct Raw {
    s: TcpStream,
    cmd_sn: u32,
    exp_stat_sn: u32,
}

/// A received PDU: BHS and data segment.
pub(crate) struct Rx {
    bhs: [u8; 48],
    data: Vec<u8>,
}

impl Rx {
    fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    pub(crate) fn status(&self) -> (u8, u8) {
        (self.bhs[36], self.bhs[37])
    }
    fn text(&self) -> Vec<(String, String)> {
        String::from_utf8_lossy(&self.data)
            .split('\0')
            .filter(|s| !s.is_empty())
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect()
    }
    fn get(&self, key: &str) -> Option<String> {
        self.text()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

fn text_segment(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, val) in pairs {
        v.extend_from_slice(k.as_bytes());
        v.push(b'=');
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

impl Raw {
    fn connect(portal: SocketAddr) -> Raw {
        let s = TcpStream::connect(portal).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw {
            s,
            cmd_sn: 1,
            exp_stat_sn: 0,
        }
    }

    fn send(&mut self, bhs: &[u8; 48], data: &[u8]) {
        let mut buf = bhs.to_vec();
        buf.extend_from_slice(data);
        buf.resize(buf.len().div_ceil(4) * 4, 0);
        self.s.write_all(&buf).expect("send");
    }

    /// Next PDU, or None when the target closed the connection.
    fn recv(&mut self) -> Option<Rx> {
        let mut bhs = [0u8; 48];
        self.s.read_exact(&mut bhs).ok()?;
        let len = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
        let mut data = vec![0u8; len.div_ceil(4) * 4];
        self.s.read_exact(&mut data).ok()?;
        data.truncate(len);
        if bhs[0] & 0x3f != 0x25 {
            self.exp_stat_sn = u32::from_be_bytes(bhs[24..28].try_into().unwrap()).wrapping_add(1);
        }
        Some(Rx { bhs, data })
    }

    /// Whether the target closes the connection (EOF or reset) in time.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 4096];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => {
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    );
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn login_pdu(&mut self, csg: u8, nsg: u8, transit: bool, version_min: u8, text: &[u8]) -> Rx {
        let mut b = [0u8; 48];
        b[0] = 0x43;
        b[1] = (if transit { 0x80 } else { 0 }) | (csg << 2) | nsg;
        b[3] = version_min;
        b[5..8].copy_from_slice(&(text.len() as u32).to_be_bytes()[1..]);
        b[8..14].copy_from_slice(&[0x80, 0, 0x12, 0x34, 0, 1]);
        b[16..20].copy_from_slice(&7u32.to_be_bytes());
        b[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        self.send(&b, text);
        self.recv().expect("login response")
    }

    /// A one-step login without authentication.
    pub(crate) fn login(portal: SocketAddr, initiator: &str, target: Option<&str>) -> (Raw, Rx) {
        let mut r = Raw::connect(portal);
        let mut pairs = vec![("InitiatorName", initiator)];
        match target {
            Some(t) => pairs.push(("TargetName", t)),
            None => pairs.push(("SessionType", "Discovery")),
        }
        let rx = r.login_pdu(1, 3, true, 0, &text_segment(&pairs));
        (r, rx)
    }

    fn nop(&mut self, itt: u32, payload: &[u8]) -> Rx {
        let mut b = [0u8; 48];
        b[0] = 0x40; // immediate NOP-Out
        b[1] = 0x80;
        b[5..8].copy_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        b[16..20].copy_from_slice(&itt.to_be_bytes());
        b[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
        b[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        self.send(&b, payload);
        self.recv().expect("NOP-In")
    }

    /// Sends a SCSI command without data to `lun` and returns its SCSI
    /// Response (Data-In PDUs are skipped): (status, sense key, ASC, ASCQ).
    pub(crate) fn scsi(&mut self, lun: u8, cdb: &[u8], edtl: u32) -> (u8, u8, u8, u8) {
        let mut b = [0u8; 48];
        b[0] = 0x01;
        b[1] = 0x80 | if edtl > 0 { 0x40 } else { 0 } | 1;
        b[9] = lun;
        b[16..20].copy_from_slice(&(0x100 + self.cmd_sn).to_be_bytes());
        b[20..24].copy_from_slice(&edtl.to_be_bytes());
        b[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        b[32..32 + cdb.len()].copy_from_slice(cdb);
        self.cmd_sn += 1;
        self.send(&b, &[]);
        loop {
            let rx = self.recv().expect("SCSI response");
            match rx.opcode() {
                0x25 if rx.bhs[1] & 0x01 != 0 => return (rx.bhs[3], 0, 0, 0),
                0x25 => continue,
                0x21 => {
                    let sense = rx.data.get(2..).unwrap_or_default();
                    let (key, asc, ascq) = if sense.len() >= 14 {
                        (sense[2] & 0x0f, sense[12], sense[13])
                    } else {
                        (0, 0, 0)
                    };
                    return (rx.bhs[3], key, asc, ascq);
                }
                _ => continue,
            }
        }
    }

    /// Sends a SCSI command with `data` as immediate data (at most the
    /// first burst) to `lun`: (status, sense key, ASC, ASCQ).
    pub(crate) fn scsi_out(&mut self, lun: u8, cdb: &[u8], data: &[u8]) -> (u8, u8, u8, u8) {
        let mut b = [0u8; 48];
        b[0] = 0x01;
        b[1] = 0x80 | 0x20 | 1;
        b[5..8].copy_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        b[9] = lun;
        b[16..20].copy_from_slice(&(0x100 + self.cmd_sn).to_be_bytes());
        b[20..24].copy_from_slice(&(data.len() as u32).to_be_bytes());
        b[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        b[32..32 + cdb.len()].copy_from_slice(cdb);
        self.cmd_sn += 1;
        self.send(&b, data);
        loop {
            let rx = self.recv().expect("SCSI response");
            if rx.opcode() == 0x21 {
                let sense = rx.data.get(2..).unwrap_or_default();
                let (key, asc, ascq) = if sense.len() >= 14 {
                    (sense[2] & 0x0f, sense[12], sense[13])
                } else {
                    (0, 0, 0)
                };
                return (rx.bhs[3], key, asc, ascq);
            }
        }
    }

    fn send_targets(&mut self) -> Rx {
        let text = text_segment(&[("SendTargets", "All")]);
        let mut b = [0u8; 48];
        b[0] = 0x04;
        b[1] = 0x80;
        b[5..8].copy_from_slice(&(text.len() as u32).to_be_bytes()[1..]);
        b[16..20].copy_from_slice(&9u32.to_be_bytes());
        b[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
        b[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        self.cmd_sn += 1;
        self.send(&b, &text);
        self.recv().expect("text response")
    }
}

const CONFIG: &str = r#"
[[vm]]
name = "open"
[[vm.disk]]
name = "d0"
size = "16M"

[[vm]]
name = "private"
allowed_initiators = ["iqn.2026-11.test:allowed"]
[[vm.disk]]
name = "d0"
size = "16M"

[[vm]]
name = "secret"
[vm.chap]
user = "alice"
secret = "initiator-secret"
target_user = "depot"
target_secret = "target-secret-9"
[[vm.disk]]
name = "d0"
size = "16M"
"#;

fn assert_healthy(portal: SocketAddr) {
    let (mut r, rx) = Raw::login(
        portal,
        "iqn.2026-11.test:probe",
        Some("iqn.2026-11.io.depot:open"),
    );
    assert_eq!(rx.status(), (0, 0), "healthy login");
    let nop = r.nop(0x42, b"ping");
    assert_eq!(nop.opcode(), 0x20);
    assert_eq!(&nop.data, b"ping");
}

#[test]
fn malformed_pdus_close_only_their_connection() {
    let depot = Depot::start(CONFIG);
    // A logged-in session that must survive everything below.
    let (mut keeper, rx) = Raw::login(
        depot.portal,
        "iqn.2026-11.test:keeper",
        Some("iqn.2026-11.io.depot:open"),
    );
    assert_eq!(rx.status(), (0, 0));

    // Garbage instead of a login.
    let mut r = Raw::connect(depot.portal);
    r.send(&[0xffu8; 48], &[]);
    assert!(r.closed(), "garbage must close the connection");

    // An oversized data segment length is refused before any data arrives.
    let mut r = Raw::connect(depot.portal);
    let mut b = [0u8; 48];
    b[0] = 0x43;
    b[1] = 0x87;
    b[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    r.send(&b, &[]);
    assert!(r.closed(), "oversized segment must close the connection");

    // A truncated PDU followed by a hang-up.
    let mut r = Raw::connect(depot.portal);
    r.s.write_all(&[0x43, 0x87, 0, 0]).unwrap();
    drop(r);

    // Full feature phase: unknown opcode gets a Reject and the session lives.
    let (mut s, rx) = Raw::login(
        depot.portal,
        "iqn.2026-11.test:x",
        Some("iqn.2026-11.io.depot:open"),
    );
    assert_eq!(rx.status(), (0, 0));
    let mut b = [0u8; 48];
    b[0] = 0x1c;
    b[16..20].copy_from_slice(&5u32.to_be_bytes());
    s.send(&b, &[]);
    let rej = s.recv().expect("reject");
    assert_eq!(rej.opcode(), 0x3f);
    assert_eq!(rej.bhs[2], 0x05, "reason: command not supported");
    assert_eq!(&rej.data[..48], &b[..], "reject echoes the header");
    assert_eq!(s.nop(1, b"still here").data, b"still here");

    // A second login request in full feature phase is a protocol violation.
    let lr = text_segment(&[("InitiatorName", "iqn.2026-11.test:x")]);
    let mut b = [0u8; 48];
    b[0] = 0x43;
    b[1] = 0x87;
    b[5..8].copy_from_slice(&(lr.len() as u32).to_be_bytes()[1..]);
    s.send(&b, &lr);
    assert!(s.closed());

    assert_eq!(keeper.nop(2, b"alive").data, b"alive");
    assert_healthy(depot.portal);
}

#[test]
fn login_failures_carry_the_right_status() {
    let depot = Depot::start(CONFIG);
    let mut r = Raw::connect(depot.portal);
    let rx = r.login_pdu(
        1,
        3,
        true,
        0,
        &text_segment(&[("TargetName", "iqn.2026-11.io.depot:open")]),
    );
    assert_eq!(rx.status(), (2, 7), "missing InitiatorName");

    let (_, rx) = Raw::login(
        depot.portal,
        "iqn.2026-11.test:a",
        Some("iqn.2026-11.io.depot:nope"),
    );
    assert_eq!(rx.status(), (2, 3), "unknown target");

    let mut r = Raw::connect(depot.portal);
    let rx = r.login_pdu(
        1,
        3,
        true,
        1,
        &text_segment(&[
            ("InitiatorName", "iqn.2026-11.test:a"),
            ("TargetName", "iqn.2026-11.io.depot:open"),
        ]),
    );
    assert_eq!(rx.status(), (2, 5), "unsupported version");

    let mut r = Raw::connect(depot.portal);
    let rx = r.login_pdu(1, 3, true, 0, b"InitiatorName\0garbage");
    assert_eq!(rx.status(), (2, 0), "malformed text");

    // Unknown keys are NotUnderstood, obsolete marker keys Reject; login works.
    let mut r = Raw::connect(depot.portal);
    let rx = r.login_pdu(
        1,
        3,
        true,
        0,
        &text_segment(&[
            ("InitiatorName", "iqn.2026-11.test:a"),
            ("TargetName", "iqn.2026-11.io.depot:open"),
            ("X-com.example.Knob", "1"),
            ("IFMarker", "No"),
            ("MaxBurstLength", "12"),
        ]),
    );
    assert_eq!(rx.status(), (0, 0));
    assert_eq!(
        rx.get("X-com.example.Knob").as_deref(),
        Some("NotUnderstood")
    );
    assert_eq!(rx.get("IFMarker").as_deref(), Some("Reject"));
    assert_eq!(rx.get("MaxBurstLength").as_deref(), Some("Reject"));
    assert_eq!(rx.get("TargetPortalGroupTag").as_deref(), Some("1"));
    assert_healthy(depot.portal);
}

#[test]
fn acl_limits_login_and_discovery() {
    let depot = Depot::start(CONFIG);
    let (_, rx) = Raw::login(
        depot.portal,
        "iqn.2026-11.test:other",
        Some("iqn.2026-11.io.depot:private"),
    );
    assert_eq!(rx.status(), (2, 2), "ACL must refuse");
    let (_, rx) = Raw::login(
        depot.portal,
        "iqn.2026-11.test:allowed",
        Some("iqn.2026-11.io.depot:private"),
    );
    assert_eq!(rx.status(), (0, 0), "ACL must admit");

    let names = |initiator: &str| {
        let (mut r, rx) = Raw::login(depot.portal, initiator, None);
        assert_eq!(rx.status(), (0, 0));
        let st = r.send_targets();
        let names: Vec<String> = st
            .text()
            .into_iter()
            .filter(|(k, _)| k == "TargetName")
            .map(|(_, v)| v)
            .collect();
        let addr = st.get("TargetAddress").unwrap_or_default();
        assert_eq!(addr, format!("{},1", depot.portal));
        names
    };
    let other = names("iqn.2026-11.test:other");
    assert!(other.contains(&"iqn.2026-11.io.depot:open".to_owned()));
    assert!(!other.contains(&"iqn.2026-11.io.depot:private".to_owned()));
    let allowed = names("iqn.2026-11.test:allowed");
    assert!(allowed.contains(&"iqn.2026-11.io.depot:private".to_owned()));

    // libiscsi's discovery sees the same.
    let out = run_timeout(
        Command::new(peer("iscsi-ls"))
            .args(["-i", "iqn.2026-11.test:other"])
            .arg(format!("iscsi://{}", depot.portal)),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("iqn.2026-11.io.depot:open"), "{text}");
    assert!(!text.contains("private"), "{text}");
}

fn hex(b: &[u8]) -> String {
    let mut s = String::from("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn unhex(s: &str) -> Vec<u8> {
    let h = s.trim_start_matches("0x");
    (0..h.len() / 2)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn md5_chap(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().to_vec()
}

#[test]
fn chap_and_mutual_chap() {
    let depot = Depot::start(CONFIG);
    let target = "iqn.2026-11.io.depot:secret";
    // Without authentication: refused.
    let (_, rx) = Raw::login(depot.portal, "iqn.2026-11.test:c", Some(target));
    assert_eq!(rx.status(), (2, 1));

    for (secret, ok) in [("initiator-secret", true), ("wrong", false)] {
        let mut r = Raw::connect(depot.portal);
        let rx = r.login_pdu(
            0,
            1,
            false,
            0,
            &text_segment(&[
                ("InitiatorName", "iqn.2026-11.test:c"),
                ("TargetName", target),
                ("AuthMethod", "CHAP,None"),
            ]),
        );
        assert_eq!(rx.get("AuthMethod").as_deref(), Some("CHAP"));
        let rx = r.login_pdu(0, 1, false, 0, &text_segment(&[("CHAP_A", "99,5")]));
        assert_eq!(rx.get("CHAP_A").as_deref(), Some("5"));
        let id: u8 = rx.get("CHAP_I").unwrap().parse().unwrap();
        let challenge = unhex(&rx.get("CHAP_C").unwrap());
        let resp = md5_chap(id, secret.as_bytes(), &challenge);
        let my_challenge = [7u8; 16];
        let rx = r.login_pdu(
            0,
            1,
            true,
            0,
            &text_segment(&[
                ("CHAP_N", "alice"),
                ("CHAP_R", &hex(&resp)),
                ("CHAP_I", "33"),
                ("CHAP_C", &hex(&my_challenge)),
            ]),
        );
        if !ok {
            assert_eq!(rx.status(), (2, 1), "wrong secret must fail");
            continue;
        }
        assert_eq!(rx.status(), (0, 0));
        assert_eq!(rx.get("CHAP_N").as_deref(), Some("depot"));
        let expect = md5_chap(33, b"target-secret-9", &my_challenge);
        assert_eq!(
            unhex(&rx.get("CHAP_R").unwrap()),
            expect,
            "mutual CHAP answer"
        );
        let rx = r.login_pdu(1, 3, true, 0, &[]);
        assert_eq!(rx.status(), (0, 0));
        assert_eq!(rx.bhs[1] & 0x83, 0x83, "transit to full feature phase");
        assert_eq!(r.nop(3, b"ok").data, b"ok");
    }

    // libiscsi with credentials in the URL.
    let url = format!("iscsi://alice%initiator-secret@{}/{target}/0", depot.portal);
    let out = run_timeout(
        Command::new(peer("iscsi-inq")).arg(&url),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "iscsi-inq with CHAP: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = format!("iscsi://alice%nope@{}/{target}/0", depot.portal);
    let out = run_timeout(
        Command::new(peer("iscsi-inq")).arg(&bad),
        Duration::from_secs(30),
    );
    assert!(!out.status.success(), "wrong CHAP secret must fail");
}

#[test]
fn logged_in_session_sees_new_luns_and_growth_as_unit_attentions() {
    let depot = Depot::start("");
    depot.cli_ok(&["vm", "create", "uavm"]);
    depot.cli_ok(&[
        "vdisk", "create", "ua0", "--vm", "uavm", "--size", "16M", "--kind", "raw",
    ]);
    let (mut s, rx) = Raw::login(
        depot.portal,
        "iqn.2026-11.test:ua",
        Some("iqn.2026-11.io.depot:uavm"),
    );
    assert_eq!(rx.status(), (0, 0));
    let tur = [0u8; 6];
    assert_eq!(s.scsi(0, &tur, 0).0, 0, "TEST UNIT READY before any change");

    // A second vDisk lands on LUN 1: REPORTED LUNS DATA HAS CHANGED (3F/0E).
    depot.cli_ok(&[
        "vdisk", "create", "ua1", "--vm", "uavm", "--size", "16M", "--kind", "raw",
    ]);
    assert_eq!(s.scsi(0, &tur, 0), (0x02, 0x06, 0x3f, 0x0e));
    assert_eq!(
        s.scsi(0, &tur, 0).0,
        0,
        "the unit attention is reported once"
    );
    let report_luns = [0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0];
    assert_eq!(s.scsi(0, &report_luns, 64).0, 0);

    // Growing LUN 0: CAPACITY DATA HAS CHANGED (2A/09) on that LUN.
    depot.cli_ok(&["vdisk", "resize", "ua0", "32M"]);
    assert_eq!(s.scsi(0, &tur, 0), (0x02, 0x06, 0x2a, 0x09));
    assert_eq!(s.scsi(0, &tur, 0).0, 0);
}
