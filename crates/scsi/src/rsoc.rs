//! REPORT SUPPORTED OPERATION CODES and REPORT SUPPORTED TASK MANAGEMENT
//! FUNCTIONS.
//!
//! [`COMMANDS`] is the single list of what the device server implements,
//! with each command's CDB usage data (the bits it evaluates). Invariant:
//! every entry is decoded by `cdb::parse` and executed by `lu` (a unit test
//! checks the first half; `lu` tests exercise the second), and commands
//! that need thin provisioning are listed only on thin logical units.

use crate::sense::Sense;

/// One supported command (opcode + optional service action).
#[derive(Debug, Clone, Copy)]
pub struct CommandInfo {
    /// Operation code.
    pub opcode: u8,
    /// Service action, for opcodes that have them.
    pub service_action: Option<u8>,
    /// CDB usage data; its length is the CDB length.
    pub usage: &'static [u8],
    /// Only on thin-provisioned logical units.
    pub thin_only: bool,
}

const fn c(opcode: u8, usage: &'static [u8]) -> CommandInfo {
    CommandInfo {
        opcode,
        service_action: None,
        usage,
        thin_only: false,
    }
}

const fn s(opcode: u8, sa: u8, usage: &'static [u8]) -> CommandInfo {
    CommandInfo {
        opcode,
        service_action: Some(sa),
        usage,
        thin_only: false,
    }
}

const FF4: u8 = 0xff;

/// Everything the device server implements, in opcode order.
pub const COMMANDS: &[CommandInfo] = &[
    c(0x00, &[0x00, 0, 0, 0, 0, 0]),
    c(0x03, &[0x03, 0x01, 0, 0, 0xff, 0]),
    c(0x08, &[0x08, 0x1f, 0xff, 0xff, 0xff, 0]),
    c(0x0a, &[0x0a, 0x1f, 0xff, 0xff, 0xff, 0]),
    c(0x12, &[0x12, 0x01, 0xff, 0xff, 0xff, 0]),
    c(0x15, &[0x15, 0x11, 0, 0, 0xff, 0]),
    c(0x16, &[0x16, 0, 0, 0, 0, 0]),
    c(0x17, &[0x17, 0, 0, 0, 0, 0]),
    c(0x1a, &[0x1a, 0x08, 0xff, 0xff, 0xff, 0]),
    c(0x1b, &[0x1b, 0x01, 0, 0x0f, 0xf7, 0]),
    c(0x1e, &[0x1e, 0, 0, 0, 0x03, 0]),
    c(0x25, &[0x25, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0]),
    c(0x28, &[0x28, 0x18, FF4, FF4, FF4, FF4, 0, 0xff, 0xff, 0]),
    c(0x2a, &[0x2a, 0x18, FF4, FF4, FF4, FF4, 0, 0xff, 0xff, 0]),
    c(0x2e, &[0x2e, 0x16, FF4, FF4, FF4, FF4, 0, 0xff, 0xff, 0]),
    c(0x2f, &[0x2f, 0x16, FF4, FF4, FF4, FF4, 0, 0xff, 0xff, 0]),
    c(0x34, &[0x34, 0x02, FF4, FF4, FF4, FF4, 0, 0xff, 0xff, 0]),
    c(0x35, &[0x35, 0x02, FF4, FF4, FF4, FF4, 0, 0xff, 0xff, 0]),
    c(0x37, &[0x37, 0, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0]),
    c(0x41, &[0x41, 0x08, FF4, FF4, FF4, FF4, 0, 0xff, 0xff, 0]),
    CommandInfo {
        opcode: 0x42,
        service_action: None,
        usage: &[0x42, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
        thin_only: true,
    },
    c(0x55, &[0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    c(0x56, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    c(0x57, &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    c(0x5a, &[0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0]),
    s(0x5e, 0x00, &[0x5e, 0x00, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    s(0x5e, 0x01, &[0x5e, 0x01, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    s(0x5e, 0x02, &[0x5e, 0x02, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    s(0x5e, 0x03, &[0x5e, 0x03, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    s(
        0x5f,
        0x00,
        &[0x5f, 0x00, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    s(
        0x5f,
        0x01,
        &[0x5f, 0x01, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    s(
        0x5f,
        0x02,
        &[0x5f, 0x02, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    s(
        0x5f,
        0x03,
        &[0x5f, 0x03, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    s(
        0x5f,
        0x04,
        &[0x5f, 0x04, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    s(
        0x5f,
        0x05,
        &[0x5f, 0x05, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    s(
        0x5f,
        0x06,
        &[0x5f, 0x06, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    s(
        0x5f,
        0x07,
        &[0x5f, 0x07, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    s(
        0x83,
        0x00,
        &[0x83, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, FF4, FF4, FF4, FF4, 0, 0],
    ),
    s(
        0x84,
        0x00,
        &[
            0x84, 0x00, 0xff, 0, 0, 0, 0, 0, 0, 0, FF4, FF4, FF4, FF4, 0, 0,
        ],
    ),
    s(
        0x84,
        0x03,
        &[0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, FF4, FF4, FF4, FF4, 0, 0],
    ),
    c(
        0x88,
        &[
            0x88, 0x18, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, 0, 0,
        ],
    ),
    c(
        0x89,
        &[
            0x89, 0x18, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, 0, 0, 0, 0xff, 0, 0,
        ],
    ),
    c(
        0x8a,
        &[
            0x8a, 0x18, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, 0, 0,
        ],
    ),
    c(
        0x8b,
        &[
            0x8b, 0x18, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, 0, 0,
        ],
    ),
    c(
        0x8e,
        &[
            0x8e, 0x16, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, 0, 0,
        ],
    ),
    c(
        0x8f,
        &[
            0x8f, 0x16, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, 0, 0,
        ],
    ),
    c(
        0x90,
        &[
            0x90, 0x02, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, 0, 0,
        ],
    ),
    c(
        0x91,
        &[
            0x91, 0x02, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, 0, 0,
        ],
    ),
    c(
        0x93,
        &[
            0x93, 0x09, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, 0, 0,
        ],
    ),
    s(
        0x9e,
        0x10,
        &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, FF4, FF4, FF4, FF4, 0, 0],
    ),
    s(
        0x9e,
        0x12,
        &[
            0x9e, 0x12, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, 0, 0,
        ],
    ),
    c(0xa0, &[0xa0, 0, 0xff, 0, 0, 0, FF4, FF4, FF4, FF4, 0, 0]),
    s(
        0xa3,
        0x0a,
        &[0xa3, 0x2a, 0, 0, 0, 0, FF4, FF4, FF4, FF4, 0, 0],
    ),
    s(
        0xa3,
        0x0c,
        &[0xa3, 0x0c, 0x87, 0xff, 0xff, 0xff, FF4, FF4, FF4, FF4, 0, 0],
    ),
    s(
        0xa3,
        0x0d,
        &[0xa3, 0x0d, 0x80, 0, 0, 0, FF4, FF4, FF4, FF4, 0, 0],
    ),
    c(
        0xa8,
        &[0xa8, 0x18, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, 0, 0],
    ),
    c(
        0xaa,
        &[0xaa, 0x18, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, 0, 0],
    ),
    c(
        0xae,
        &[0xae, 0x16, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, 0, 0],
    ),
    c(
        0xaf,
        &[0xaf, 0x16, FF4, FF4, FF4, FF4, FF4, FF4, FF4, FF4, 0, 0],
    ),
    c(0xb7, &[0xb7, 0x1f, 0, 0, 0, 0, FF4, FF4, FF4, FF4, 0, 0]),
];

/// Nominal / recommended timeout reported with RCTD, in seconds.
const TIMEOUT_SECS: u32 = 30;

fn timeouts_descriptor() -> [u8; 12] {
    let mut t = [0u8; 12];
    t[1] = 0x0a;
    t[4..8].copy_from_slice(&TIMEOUT_SECS.to_be_bytes());
    t[8..12].copy_from_slice(&TIMEOUT_SECS.to_be_bytes());
    t
}

fn available(thin: bool) -> impl Iterator<Item = &'static CommandInfo> {
    COMMANDS.iter().filter(move |c| thin || !c.thin_only)
}

/// REPORT SUPPORTED OPERATION CODES parameter data.
pub fn report(
    thin: bool,
    rctd: bool,
    options: u8,
    opcode: u8,
    service_action: u16,
) -> Result<Vec<u8>, Sense> {
    if options == 0 {
        let mut body = Vec::new();
        for cmd in available(thin) {
            body.push(cmd.opcode);
            body.push(0);
            body.extend_from_slice(&u16::from(cmd.service_action.unwrap_or(0)).to_be_bytes());
            body.push(0);
            let mut flags = 0;
            if rctd {
                flags |= 0x02;
            }
            if cmd.service_action.is_some() {
                flags |= 0x01;
            }
            body.push(flags);
            body.extend_from_slice(&crate::sat_u16(cmd.usage.len()).to_be_bytes());
            if rctd {
                body.extend_from_slice(&timeouts_descriptor());
            }
        }
        let mut d = Vec::with_capacity(4 + body.len());
        d.extend_from_slice(&crate::sat_u32(body.len()).to_be_bytes());
        d.extend_from_slice(&body);
        return Ok(d);
    }
    let has_sa = available(thin).any(|c| c.opcode == opcode && c.service_action.is_some());
    let known = available(thin).any(|c| c.opcode == opcode);
    let by_sa = match options {
        1 if has_sa => return Err(Sense::invalid_cdb_field(2, Some(2))),
        1 => false,
        2 if known && !has_sa => return Err(Sense::invalid_cdb_field(2, Some(2))),
        2 => true,
        _ => has_sa,
    };
    let found = available(thin).find(|c| {
        c.opcode == opcode
            && (!by_sa || u16::from(c.service_action.unwrap_or(0)) == service_action)
            && (by_sa || c.service_action.is_none())
    });
    let mut d = vec![0u8; 4];
    if rctd {
        d[1] = 0x80;
    }
    match found {
        None => d[1] |= 0x01,
        Some(cmd) => {
            d[1] |= 0x03;
            d[2..4].copy_from_slice(&crate::sat_u16(cmd.usage.len()).to_be_bytes());
            d.extend_from_slice(cmd.usage);
            if rctd {
                d.extend_from_slice(&timeouts_descriptor());
            }
        }
    }
    Ok(d)
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS parameter data: ABORT TASK,
/// ABORT TASK SET, LOGICAL UNIT RESET and TARGET RESET.
pub fn report_tmfs(repd: bool) -> Vec<u8> {
    let mut d = vec![0u8; if repd { 16 } else { 4 }];
    d[0] = 0x80 | 0x40 | 0x08 | 0x02;
    if repd {
        d[3] = 0x0c;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdb;

    #[test]
    fn table_matches_parser() {
        let mut last = (0u8, 0u8);
        for cmd in COMMANDS {
            let key = (cmd.opcode, cmd.service_action.unwrap_or(0));
            assert!(key > last || last == (0, 0), "sorted: {key:?}");
            last = key;
            assert_eq!(cmd.usage[0], cmd.opcode);
            assert_eq!(Some(cmd.usage.len()), cdb::cdb_len(cmd.opcode));
            // A CDB made of the usage bits must decode (maybe with a field
            // error for protection/option bits), never as an unknown opcode.
            let mut bytes = [0u8; 16];
            bytes[0] = cmd.opcode;
            if let Some(sa) = cmd.service_action {
                bytes[1] = sa;
            }
            if let Err(s) = cdb::parse(&bytes[..cmd.usage.len()]) {
                panic!(
                    "opcode {:#x} sa {:?}: {s:?}",
                    cmd.opcode, cmd.service_action
                );
            }
        }
    }

    #[test]
    fn one_command_rules() {
        // PR IN has service actions: option 1 refused, option 2 works.
        assert!(report(true, false, 1, 0x5e, 0).is_err());
        let d = report(true, false, 2, 0x5e, 1).unwrap();
        assert_eq!(d[1] & 0x07, 3);
        assert_eq!(&d[4..6], &[0x5e, 0x01]);
        // READ(10) has none: option 2 refused, option 1 works.
        assert!(report(true, false, 2, 0x28, 0).is_err());
        let d = report(true, true, 1, 0x28, 0).unwrap();
        assert_eq!(d[1], 0x83);
        assert_eq!(d.len(), 4 + 10 + 12);
        // Unknown opcode: not supported.
        assert_eq!(report(true, false, 1, 0xc0, 0).unwrap()[1], 0x01);
        // UNMAP is hidden on thick LUs.
        assert_eq!(report(false, false, 1, 0x42, 0).unwrap()[1], 0x01);
    }

    #[test]
    fn all_commands_length() {
        let d = report(true, true, 0, 0, 0).unwrap();
        let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
        assert_eq!(len, d.len() - 4);
        assert_eq!(len, COMMANDS.len() * 20);
    }
}
