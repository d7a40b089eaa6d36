//! Human sizes: `512M`, `20G`, `1T`, `4096`, `1.5G` (binary units).

/// Parses a size; suffixes K, M, G, T, P (optionally followed by `i`/`iB`/`B`)
/// are powers of 1024.
pub fn parse(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit
        .trim()
        .trim_end_matches(['B', 'b'])
        .trim_end_matches('i');
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        _ => return Err(format!("unknown size unit in {s:?}")),
    };
    let value: f64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let bytes = value * (1u64 << shift) as f64;
    // `u64::MAX as f64` is 2^64, itself out of range.
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return Err(format!("size out of range: {s:?}"));
    }
    // reason: std has no checked f64 -> u64; the value is finite and within
    // 0..2^64 (checked above), so the cast only drops a fraction of a byte.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bytes = bytes as u64;
    Ok(bytes)
}

/// Formats bytes with the largest binary unit that keeps one decimal.
pub fn format(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 || (v.fract() == 0.0) {
        format!("{v:.0}{}", UNITS[i])
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        assert_eq!(parse("512M").unwrap(), 512 << 20);
        assert_eq!(parse("20G").unwrap(), 20 << 30);
        assert_eq!(parse("1T").unwrap(), 1 << 40);
        assert_eq!(parse("4096").unwrap(), 4096);
        assert_eq!(parse("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse("2GiB").unwrap(), 2 << 30);
        assert!(parse("12X").is_err());
        assert!(parse("").is_err());
        assert_eq!(format(1 << 30), "1G");
        assert_eq!(format(1536 << 20), "1.5G");
        assert_eq!(format(100), "100B");
    }

    /// Sizes that do not fit a u64 are refused, not saturated.
    #[test]
    fn out_of_range_sizes_are_refused() {
        assert_eq!(parse("16383P").unwrap(), 16383 << 50);
        assert!(parse("16384P").is_err());
        assert!(parse("1e30").is_err());
    }
}
