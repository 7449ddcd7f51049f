//! Reproducible timestamps: RFC 3339 from seconds since 1970, and `SOURCE_DATE_EPOCH`.

use crate::error::{Error, Result};

/// Formats seconds since 1970 as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parses a `SOURCE_DATE_EPOCH` value (decimal seconds since 1970).
///
/// # Errors
/// [`Error::InvalidChange`] naming the value when it is not a non-negative integer.
pub fn parse_epoch(value: &str) -> Result<u64> {
    // 9999-12-31T23:59:59Z: RFC 3339 has four-digit years.
    const LAST: u64 = 253_402_300_799;
    match value.trim().parse::<u64>() {
        Ok(secs) if secs <= LAST => Ok(secs),
        _ => Err(Error::InvalidChange {
            reason: format!(
                "SOURCE_DATE_EPOCH={value:?} is not a number of seconds from 1970 to the year 9999"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert!(parse_epoch("12x").is_err());
        assert!(parse_epoch("253402300800").is_err());
        assert_eq!(
            rfc3339(parse_epoch("253402300799").unwrap()),
            "9999-12-31T23:59:59Z"
        );
    }
}
