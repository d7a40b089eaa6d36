//! Unit tests for writes a device stores inline but completes later (a
//! mirror must hold them first: `Stored::Later`): the inline path hands
//! the completion over only when the device settles it, GOOD for a write
//! the mirror held and the one sense mapping for an error.

// Test CDB fields and lengths from small constants.
#![allow(clippy::cast_possible_truncation)]

use std::sync::Arc;

use depot_block::{BlockDevice, BlockError, BlockResult, Later, MemDevice, Settle, Stored};
use parking_lot::Mutex;

use super::tests::{BLOCKS, BS, assert_check, assert_good, cdb10, nexus, run};
use super::*;
use crate::sense::{asc, key};
use crate::{Command, Completion, DataOut, Nowait, ParsedCdb};

/// Stores writes at once and keeps their answers until `settle_all`.
struct Deferring {
    mem: MemDevice,
    pending: Arc<Mutex<Vec<Settle>>>,
}

impl Deferring {
    fn settle_all(&self, r: impl Fn() -> BlockResult<()>) {
        for s in std::mem::take(&mut *self.pending.lock()) {
            s(r());
        }
    }
}

impl BlockDevice for Deferring {
    fn block_size(&self) -> u32 {
        self.mem.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.mem.num_blocks()
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> BlockResult<()> {
        self.mem.read(lba, buf)
    }
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> BlockResult<()> {
        self.mem.write(lba, data, fua)
    }
    fn flush(&self) -> BlockResult<()> {
        Ok(())
    }
    fn try_write_deferred(&self, lba: u64, pieces: &[&[u8]]) -> BlockResult<Stored> {
        self.mem.write(lba, &pieces.concat(), false)?;
        let pending = self.pending.clone();
        Ok(Stored::Later(Later::new(move |settle| {
            pending.lock().push(settle);
        })))
    }
}

fn deferred_write(
    lu: &LogicalUnit,
    n: &Arc<Nexus>,
    lba: u32,
    data: &[u8],
) -> Arc<Mutex<Option<Completion>>> {
    let pieces = [bytes::Bytes::copy_from_slice(data)];
    let cdb = cdb10(0x2a, 0, lba, (data.len() / BS) as u16);
    let got = lu.try_execute_nowait(&Command {
        nexus: n,
        cdb: ParsedCdb::parse(&cdb),
        data_out: DataOut::new(&pieces),
        expected_in: 0,
    });
    let Some(Nowait::Later(later)) = got else {
        panic!("the write was not deferred: {got:?}");
    };
    let slot = Arc::new(Mutex::new(None));
    let s = slot.clone();
    later.then(Box::new(move |c| *s.lock() = Some(c)));
    slot
}

#[test]
fn a_deferred_write_completes_when_the_device_settles_it() {
    let dev = Arc::new(Deferring {
        mem: MemDevice::new(BS as u32, BLOCKS),
        pending: Arc::new(Mutex::new(Vec::new())),
    });
    let lu = LogicalUnit::new(
        LuConfig::new("SN0009", LuConfig::naa_from_id(49)),
        dev.clone(),
        &Registry::new(),
    )
    .unwrap();
    let a = nexus("iqn.test:a", 1);
    assert_good(&run(&lu, &a, &[0, 0, 0, 0, 0, 0], &[], 0));

    // Stored at once, answered only once settled: GOOD, with the data-out
    // length as the transfer length.
    let one = deferred_write(&lu, &a, 0, &[7; BS]);
    let mut back = vec![0u8; BS];
    dev.mem.read(0, &mut back).unwrap();
    assert_eq!(back, [7; BS]);
    assert!(
        one.lock().is_none(),
        "completed before the device settled it"
    );
    dev.settle_all(|| Ok(()));
    let c = one.lock().take().expect("completed once settled");
    assert_good(&c);
    assert_eq!(c.transfer_length, BS as u32);

    // An error settles as CHECK CONDITION with the sense of the one
    // mapping (NOT READY for an unavailable device).
    let two = deferred_write(&lu, &a, 8, &[9; BS * 2]);
    assert!(two.lock().is_none());
    dev.settle_all(|| Err(BlockError::Unavailable("lease lapsed".into())));
    let c = two.lock().take().expect("completed once settled");
    assert_check(&c, key::NOT_READY, asc::LU_BECOMING_READY);
}
