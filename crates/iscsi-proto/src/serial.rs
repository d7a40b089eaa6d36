//! RFC 1982 serial number arithmetic on 32-bit sequence numbers (CmdSN,
//! StatSN, DataSN), as RFC 7143 §4.2.2.1 requires for comparisons.

/// `a < b` in serial arithmetic.
pub fn lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

/// `a <= b` in serial arithmetic.
pub fn le(a: u32, b: u32) -> bool {
    a == b || lt(a, b)
}

/// Whether `sn` lies in the window `[lo, hi]` (inclusive, serial order).
pub fn in_window(sn: u32, lo: u32, hi: u32) -> bool {
    le(lo, sn) && le(sn, hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wraps() {
        assert!(lt(0xffff_fffe, 1));
        assert!(!lt(1, 0xffff_fffe));
        assert!(in_window(0, 0xffff_fff0, 0x10));
        assert!(!in_window(0x11, 0xffff_fff0, 0x10));
        assert!(in_window(5, 5, 5));
    }

    proptest! {
        #[test]
        fn lt_is_antisymmetric(a: u32, d in 1u32..0x7fff_ffff) {
            let b = a.wrapping_add(d);
            prop_assert!(lt(a, b));
            prop_assert!(!lt(b, a));
        }
    }
}
