//! Fuzzes SCSI command decoding and execution.
//!
//! The first input byte selects the mode: even → `cdb::parse` alone (must
//! never panic, must agree with the CDB-length rules and with
//! `ParsedCdb`); odd → a whole command through `LogicalUnit::execute` on a
//! small in-memory LU, with the input split into CDB, data-out (delivered
//! in two pieces, as a transport may) and expected length. Invariants
//! checked: no panic, data-in never exceeds the expected length, CHECK
//! CONDITION always carries sense.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use depot_block::MemDevice;
use depot_scsi::{
    Command, DataOut, LogicalUnit, LuConfig, Nexus, ParsedCdb, Registry, Status, cdb,
};
use libfuzzer_sys::fuzz_target;

/// The logical unit under test, its nexus, and the registry that resolves
/// EXTENDED COPY targets (kept alive with them).
type Rig = (Arc<LogicalUnit>, Arc<Nexus>, Arc<Registry>);

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let dev = Arc::new(MemDevice::new(512, 256));
        let registry = Registry::new();
        let lu = LogicalUnit::new(
            LuConfig::new("FUZZ", LuConfig::naa_from_id(1)),
            dev,
            &registry,
        )
        .expect("logical unit");
        let nexus = Arc::new(Nexus {
            initiator_name: "iqn.2026-01.fuzz:init".into(),
            isid: [0x80, 0, 0, 0, 0, 1],
            target_name: "iqn.2026-01.fuzz:target".into(),
            tpgt: 1,
            relative_port_id: 1,
        });
        (lu, nexus, registry)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let parsed = ParsedCdb::parse(rest);
        assert_eq!(parsed.decoded(), cdb::parse(rest));
        assert_eq!(parsed.opcode(), rest.first().copied());
        if let (Ok(_), Some(&op)) = (cdb::parse(rest), rest.first()) {
            let len = cdb::cdb_len(op).expect("decoded opcode has a length");
            assert!(rest.len() >= len);
        }
        return;
    }
    let Some((&cdb_len, rest)) = rest.split_first() else {
        return;
    };
    let cdb_len = usize::from(cdb_len % 33).min(rest.len());
    let (cdb, rest) = rest.split_at(cdb_len);
    let (expected, data_out) = if rest.len() >= 2 {
        let (e, d) = rest.split_at(2);
        (u32::from(u16::from_be_bytes([e[0], e[1]])), d)
    } else {
        (0, rest)
    };
    let (lu, nexus, _) = rig();
    let (a, b) = data_out.split_at(data_out.len() / 2);
    let pieces = [Bytes::copy_from_slice(a), Bytes::copy_from_slice(b)];
    let c = lu.execute(&Command {
        nexus,
        cdb: ParsedCdb::parse(cdb),
        data_out: DataOut::new(&pieces),
        expected_in: expected,
    });
    assert!(c.data.len() <= expected as usize);
    if c.status == Status::CHECK_CONDITION {
        assert!(c.sense.is_some());
    }
});
