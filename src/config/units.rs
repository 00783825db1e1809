//! Duration and size units as written in the config file.
//!
//! Owns: turning `250ms` / `10s` / `5m` / `1h` into a [`Duration`] and `512B` / `16KiB` /
//! `1MiB` / `1GiB` (binary) or `16KB` / `1MB` / `1GB` (decimal) into a byte count. Pure: no
//! knowledge of which field a value belongs to; callers attach paths and positions.
//!
//! One whole number and one unit, nothing else: `1.5s`, `1h30m` and bare numbers are rejected
//! so that every value reads the same way and a missing unit (seconds? milliseconds?) is never
//! guessed.

use std::time::Duration;

/// Why a duration or size was rejected; the message states the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Not a duration like `250ms` or `10s`.
    #[error("invalid duration {0:?}: {DURATION_FORM}")]
    Duration(String),
    /// A negative duration.
    #[error("invalid duration {0:?}: must not be negative; {DURATION_FORM}")]
    NegativeDuration(String),
    /// A duration too large to represent.
    #[error("invalid duration {0:?}: too large")]
    DurationTooLarge(String),
    /// Not a size like `16KiB`.
    #[error("invalid size {0:?}: {SIZE_FORM}")]
    Size(String),
    /// A negative size.
    #[error("invalid size {0:?}: must not be negative; {SIZE_FORM}")]
    NegativeSize(String),
    /// A size too large to represent.
    #[error("invalid size {0:?}: too large")]
    SizeTooLarge(String),
}

const DURATION_FORM: &str = "expected a whole number followed by ms, s, m or h (e.g. 250ms, 10s, 5m, 1h)";
const SIZE_FORM: &str =
    "expected a whole number followed by B, KiB, MiB or GiB (e.g. 512B, 16KiB, 1MiB), or KB, MB, GB for powers of 1000";

/// Parse `250ms`, `10s`, `5m`, `1h` (also `0s`, `1500ms`).
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let (number, unit) = split(text).map_err(|negative| match negative {
        true => UnitError::NegativeDuration(text.to_owned()),
        false => UnitError::Duration(text.to_owned()),
    })?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(UnitError::Duration(text.to_owned())),
    };
    let number: u64 = number.parse().map_err(|_| UnitError::DurationTooLarge(text.to_owned()))?;
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| UnitError::DurationTooLarge(text.to_owned()))
}

/// Parse `512B`, `16KiB`, `1MiB`, `1GiB` (powers of 1024) or `16KB`, `1MB`, `1GB` (powers of
/// 1000).
pub(crate) fn parse_size(text: &str) -> Result<u64, UnitError> {
    let (number, unit) = split(text).map_err(|negative| match negative {
        true => UnitError::NegativeSize(text.to_owned()),
        false => UnitError::Size(text.to_owned()),
    })?;
    let bytes_per_unit: u64 = match unit {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(UnitError::Size(text.to_owned())),
    };
    let number: u64 = number.parse().map_err(|_| UnitError::SizeTooLarge(text.to_owned()))?;
    number.checked_mul(bytes_per_unit).ok_or_else(|| UnitError::SizeTooLarge(text.to_owned()))
}

/// `1h`, `5m`, `10s` or `250ms`: the largest unit that shows `d` exactly (sub-millisecond
/// parts are dropped; config durations never have them).
pub(crate) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".to_owned()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Split `  10 s ` into (`"10"`, `"s"`): leading ASCII digits, optional blanks, a unit.
/// `Err(true)` marks a leading minus sign so the message can say why it is wrong.
fn split(text: &str) -> Result<(&str, &str), bool> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(true);
    }
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(false);
    }
    let (number, unit) = text.split_at(digits);
    let unit = unit.trim_start();
    if unit.is_empty() {
        return Err(false);
    }
    Ok((number, unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration(" 2 s "), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn bare_numbers_and_unknown_units_are_rejected_with_the_expected_form() {
        for bad in ["10", "", "s", "1.5s", "10 sec", "1h30m", "10S", "ten s", "1d"] {
            let err = parse_duration(bad).expect_err(bad);
            assert_eq!(err, UnitError::Duration(bad.to_owned()), "{bad}");
        }
        assert_eq!(
            parse_duration("10").map_err(|e| e.to_string()),
            Err("invalid duration \"10\": expected a whole number followed by ms, s, m or h \
                 (e.g. 250ms, 10s, 5m, 1h)"
                .to_owned())
        );
    }

    #[test]
    fn negative_durations_say_so() {
        let err = parse_duration("-5s").expect_err("negative");
        assert_eq!(err, UnitError::NegativeDuration("-5s".into()));
        assert!(err.to_string().contains("must not be negative"), "{err}");
    }

    #[test]
    fn huge_durations_do_not_overflow() {
        assert_eq!(
            parse_duration("18446744073709551615h"),
            Err(UnitError::DurationTooLarge("18446744073709551615h".into()))
        );
        assert_eq!(
            parse_duration("99999999999999999999999s"),
            Err(UnitError::DurationTooLarge("99999999999999999999999s".into()))
        );
    }

    #[test]
    fn formatting_picks_the_largest_exact_unit_and_round_trips() {
        for (text, d) in [
            ("0s", Duration::ZERO),
            ("250ms", Duration::from_millis(250)),
            ("1500ms", Duration::from_millis(1500)),
            ("10s", Duration::from_secs(10)),
            ("90s", Duration::from_secs(90)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("25h", Duration::from_secs(90_000)),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d));
        }
    }

    #[test]
    fn sizes_binary_and_decimal() {
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("16KiB"), Ok(16 * 1024));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("16KB"), Ok(16_000));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("0B"), Ok(0));
    }

    #[test]
    fn bad_sizes_are_rejected() {
        for bad in ["16384", "16kib", "16K", "1.5MiB", "MiB", "16 KiBs", ""] {
            assert_eq!(parse_size(bad), Err(UnitError::Size(bad.to_owned())), "{bad}");
        }
        assert_eq!(parse_size("-1KiB"), Err(UnitError::NegativeSize("-1KiB".into())));
        assert_eq!(parse_size("20000000000GiB"), Err(UnitError::SizeTooLarge("20000000000GiB".into())));
    }
}
