//! Checked integer conversions for offsets and counts.
//!
//! Owns the two conversions the engine makes between the u64 of disk
//! offsets, cluster numbers and byte counts and the usize of in-memory
//! buffers. Invariant: nothing here truncates; a value that does not fit is
//! an error (or, for [`min_usize`], simply larger than the buffer). Every
//! caller's value is bounded by a buffer length or a format limit, so on the
//! 64-bit targets Depot runs on the checks compile away.

use crate::error::{EngineError, EngineResult};

/// `n` as a usize (an offset or count into memory), or an error instead of
/// a truncation.
#[inline]
pub(crate) fn usize_of(n: u64) -> EngineResult<usize> {
    usize::try_from(n).map_err(|_| EngineError::Failed(format!("{n} does not fit in memory")))
}

/// The smaller of a buffer size `a` and a count `b` from a wider field:
/// how much of `b` fits in `a`.
#[inline]
pub(crate) fn min_usize(a: usize, b: u64) -> usize {
    usize::try_from(b).map_or(a, |b| a.min(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_never_truncate() {
        assert_eq!(usize_of(4096).unwrap(), 4096);
        assert_eq!(min_usize(10, 3), 3);
        assert_eq!(min_usize(10, 30), 10);
        assert_eq!(min_usize(10, u64::MAX), 10);
    }
}
