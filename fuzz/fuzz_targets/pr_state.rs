//! Fuzzes the persistent reservation state as a router reads it back: the
//! JSON of `depot_scsi::PrState` from the state file of a logical unit or
//! from the cluster (`<prefix>/pr/<vdisk>` in etcd, which other routers
//! write), loaded into a logical unit through its `ReservationStore` and
//! pushed into it as another router's commit (`replace_reservations`),
//! then one command from a nexus the input picks (PERSISTENT RESERVE IN /
//! OUT, or any other command, checked for reservation conflicts).
//!
//! Input: the state's JSON, a NUL byte, then the command: nexus selector
//! (0: an unregistered nexus, n: the nexus of registration n-1), CDB
//! length, CDB, expected data-in length (u16 BE), data-out.
//!
//! Invariants checked: no panic; the state serialises and parses back to
//! itself; the PR IN reports agree with the state's lengths; replacing a
//! state by itself owes no unit attention; the unit reports exactly the
//! state it loaded; a command's data-in never exceeds its expected length
//! and CHECK CONDITION carries sense; the state after the command still
//! round-trips and is what the store holds.
#![no_main]

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use depot_block::MemDevice;
use depot_scsi::{
    Command, DataOut, LogicalUnit, LuConfig, Nexus, ParsedCdb, PrState, Registry, ReservationStore,
    Status, StoreError,
};
use libfuzzer_sys::fuzz_target;

/// A store holding one state, as the cluster's store does between commits.
struct Store(Mutex<PrState>);

impl ReservationStore for Store {
    fn load(&self) -> Result<PrState, StoreError> {
        Ok(self.0.lock().expect("store lock").clone())
    }

    fn save(&self, state: &PrState) -> Result<(), StoreError> {
        *self.0.lock().expect("store lock") = state.clone();
        Ok(())
    }
}

fn round_trip(state: &PrState) {
    let bytes = serde_json::to_vec(state).expect("a parsed state serialises");
    let back: PrState = serde_json::from_slice(&bytes).expect("our own JSON parses");
    assert_eq!(&back, state);
}

fn reports(state: &PrState) {
    let keys = state.read_keys();
    assert_eq!(keys.len(), 8 + 8 * state.registrations.len());
    let full = state.read_full_status();
    assert!(full.len() >= 8 + 24 * state.registrations.len());
    let _ = state.read_reservation();
    let _ = state.report_capabilities(true);
    let _ = state.report_capabilities(false);
    assert!(state.replacement_posts(state).is_empty());
    let _ = state.replacement_posts(&PrState::default());
    let _ = PrState::default().replacement_posts(state);
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (json, cmd) = data.split_at(split);
    let Ok(state) = serde_json::from_slice::<PrState>(json) else {
        return;
    };
    round_trip(&state);
    reports(&state);

    let store = Arc::new(Store(Mutex::new(state.clone())));
    let registry = Registry::new();
    let lu = LogicalUnit::with_reservation_store(
        LuConfig::new("FUZZ", LuConfig::naa_from_id(2)),
        Arc::new(MemDevice::new(512, 64)),
        &registry,
        store.clone(),
    )
    .expect("logical unit");
    assert_eq!(lu.reservation_state(), state);
    // The same state pushed again (the daemon's feed) changes nothing.
    lu.replace_reservations(state.clone());
    assert_eq!(lu.reservation_state(), state);

    let cmd = cmd.get(1..).unwrap_or_default();
    let Some((&who, rest)) = cmd.split_first() else {
        return;
    };
    let nexus = match usize::from(who).checked_sub(1) {
        Some(i) if !state.registrations.is_empty() => {
            let n = &state.registrations[i % state.registrations.len()].nexus;
            Nexus::new(&n.initiator_name, n.isid, &n.target_name, n.tpgt)
        }
        _ => Nexus::new(
            "iqn.2026-01.fuzz:other",
            [0x80, 0, 0, 0, 0, 9],
            "iqn.2026-01.fuzz:t",
            1,
        ),
    };
    let Some((&cdb_len, rest)) = rest.split_first() else {
        return;
    };
    let cdb_len = usize::from(cdb_len % 33).min(rest.len());
    let (cdb, rest) = rest.split_at(cdb_len);
    let (expected, data_out) = match rest {
        [a, b, tail @ ..] => (u32::from(u16::from_be_bytes([*a, *b])), tail),
        _ => (0, rest),
    };
    let pieces = [Bytes::copy_from_slice(data_out)];
    let c = lu.execute(&Command {
        nexus: &Arc::new(nexus),
        cdb: ParsedCdb::parse(cdb),
        data_out: DataOut::new(&pieces),
        expected_in: expected,
    });
    assert!(c.data.len() <= expected as usize);
    if c.status == Status::CHECK_CONDITION {
        assert!(c.sense.is_some());
    }
    let after = lu.reservation_state();
    round_trip(&after);
    reports(&after);
    assert_eq!(store.load().expect("memory store"), after);
});
