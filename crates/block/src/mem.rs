//! An in-memory, thin-provisioned block device: the reference model for tests.
//!
//! Blocks live in a map keyed by LBA; absent blocks are deallocated and read
//! as zeros. Not durable across process exit (it has nothing to lose).

use std::collections::BTreeMap;

use parking_lot::RwLock;

use crate::{BlockDevice, BlockResult, Provisioning, blocks_in, check_range};

/// Thin-provisioned memory device.
pub struct MemDevice {
    block_size: u32,
    num_blocks: RwLock<u64>,
    blocks: RwLock<BTreeMap<u64, Box<[u8]>>>,
}

impl MemDevice {
    /// A zero-filled device of `num_blocks` blocks of `block_size` bytes.
    pub fn new(block_size: u32, num_blocks: u64) -> Self {
        MemDevice {
            block_size,
            num_blocks: RwLock::new(num_blocks),
            blocks: RwLock::new(BTreeMap::new()),
        }
    }

    /// Grows (or shrinks, dropping data past the new end) the device.
    pub fn resize(&self, num_blocks: u64) {
        *self.num_blocks.write() = num_blocks;
        self.blocks.write().retain(|lba, _| *lba < num_blocks);
    }

    /// Number of allocated blocks.
    pub fn allocated_blocks(&self) -> u64 {
        self.blocks.read().len() as u64
    }
}

impl MemDevice {
    /// Writes the concatenation of `pieces` (whole blocks in all, pieces
    /// cut anywhere) at `lba`, block by block.
    fn store(&self, lba: u64, pieces: &[&[u8]]) -> BlockResult<()> {
        let len = pieces.iter().map(|p| p.len()).sum();
        let n = blocks_in(len, self.block_size)?;
        check_range(self.num_blocks(), lba, n)?;
        let bs = self.block_size as usize;
        let mut blocks = self.blocks.write();
        if let [one] = pieces {
            for (i, chunk) in one.chunks_exact(bs).enumerate() {
                blocks.insert(lba + i as u64, chunk.into());
            }
            return Ok(());
        }
        let mut rest = pieces.iter().copied();
        let mut cur: &[u8] = &[];
        for i in 0..n {
            let mut block = vec![0u8; bs];
            let mut filled = 0;
            while filled < bs {
                if cur.is_empty() {
                    match rest.next() {
                        Some(p) => cur = p,
                        None => break,
                    }
                    continue;
                }
                let k = (bs - filled).min(cur.len());
                block[filled..filled + k].copy_from_slice(&cur[..k]);
                filled += k;
                cur = &cur[k..];
            }
            blocks.insert(lba + i, block.into_boxed_slice());
        }
        Ok(())
    }
}

impl BlockDevice for MemDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        *self.num_blocks.read()
    }

    fn read(&self, lba: u64, buf: &mut [u8]) -> BlockResult<()> {
        let n = blocks_in(buf.len(), self.block_size)?;
        check_range(self.num_blocks(), lba, n)?;
        let bs = self.block_size as usize;
        let blocks = self.blocks.read();
        for (i, chunk) in buf.chunks_exact_mut(bs).enumerate() {
            match blocks.get(&(lba + i as u64)) {
                Some(b) => chunk.copy_from_slice(b),
                None => chunk.fill(0),
            }
        }
        Ok(())
    }

    fn write(&self, lba: u64, data: &[u8], _fua: bool) -> BlockResult<()> {
        self.store(lba, &[data])
    }

    /// Stores the pieces as they are (no gathering copy).
    fn write_vectored(&self, lba: u64, pieces: &[&[u8]], _fua: bool) -> BlockResult<()> {
        self.store(lba, pieces)
    }

    fn try_read_nowait(&self, lba: u64, buf: &mut [u8]) -> BlockResult<bool> {
        self.read(lba, buf).map(|()| true)
    }

    fn try_write_nowait(&self, lba: u64, data: &[u8]) -> BlockResult<bool> {
        self.store(lba, &[data]).map(|()| true)
    }

    fn try_write_vectored_nowait(&self, lba: u64, pieces: &[&[u8]]) -> BlockResult<bool> {
        self.store(lba, pieces).map(|()| true)
    }

    fn flush(&self) -> BlockResult<()> {
        Ok(())
    }

    fn thin_provisioned(&self) -> bool {
        true
    }

    fn unmap(&self, lba: u64, blocks: u64) -> BlockResult<()> {
        check_range(self.num_blocks(), lba, blocks)?;
        if blocks == 0 {
            return Ok(());
        }
        let mut map = self.blocks.write();
        let doomed: Vec<u64> = map.range(lba..lba + blocks).map(|(k, _)| *k).collect();
        for k in doomed {
            map.remove(&k);
        }
        Ok(())
    }

    fn provisioning(&self, lba: u64, max_blocks: u64) -> BlockResult<(Provisioning, u64)> {
        let total = self.num_blocks();
        check_range(total, lba, 1)?;
        let limit = max_blocks.clamp(1, total - lba);
        let map = self.blocks.read();
        let mapped = map.contains_key(&lba);
        let mut run = 1;
        while run < limit && map.contains_key(&(lba + run)) == mapped {
            run += 1;
        }
        let state = if mapped {
            Provisioning::Mapped
        } else {
            Provisioning::Deallocated
        };
        Ok((state, run))
    }
}

impl std::fmt::Debug for MemDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemDevice")
            .field("block_size", &self.block_size)
            .field("num_blocks", &self.num_blocks())
            .finish()
    }
}

#[cfg(test)]
// Test data patterns truncate on purpose.
#[allow(clippy::cast_sign_loss)]
mod tests {
    use super::*;
    use crate::BlockError;

    #[test]
    fn unwritten_reads_zero_and_unmap_deallocates() {
        let d = MemDevice::new(512, 16);
        let mut buf = vec![0xffu8; 1024];
        d.read(0, &mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 0));
        d.write(2, &[7u8; 1024], false).unwrap();
        assert_eq!(
            d.provisioning(0, 16).unwrap(),
            (Provisioning::Deallocated, 2)
        );
        assert_eq!(d.provisioning(2, 16).unwrap(), (Provisioning::Mapped, 2));
        d.unmap(3, 1).unwrap();
        assert_eq!(d.provisioning(2, 16).unwrap(), (Provisioning::Mapped, 1));
        d.read(2, &mut buf).unwrap();
        assert!(buf[..512].iter().all(|b| *b == 7));
        assert!(buf[512..].iter().all(|b| *b == 0));
        assert!(matches!(
            d.write(16, &[0u8; 512], false),
            Err(BlockError::OutOfRange { .. })
        ));
    }

    #[test]
    fn vectored_nowait_write_stores_pieces_cut_anywhere() {
        let d = MemDevice::new(512, 16);
        let data: Vec<u8> = (0..3 * 512).map(|i| (i % 251) as u8).collect();
        let pieces: [&[u8]; 5] = [
            &data[..1],
            &[],
            &data[1..700],
            &data[700..1024],
            &data[1024..],
        ];
        assert!(d.try_write_vectored_nowait(4, &pieces).unwrap());
        let mut back = vec![0u8; data.len()];
        d.read(4, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(d.allocated_blocks(), 3);
        d.write_vectored(8, &pieces, false).unwrap();
        d.read(8, &mut back).unwrap();
        assert_eq!(back, data);
        // Not whole blocks, or past the end: refused, nothing stored.
        assert!(
            d.try_write_vectored_nowait(0, &[&data[..100], &data[..300]])
                .is_err()
        );
        assert!(matches!(
            d.try_write_vectored_nowait(15, &[&data[..512], &data[..512]]),
            Err(BlockError::OutOfRange { .. })
        ));
        assert_eq!(d.allocated_blocks(), 6);
    }
}
