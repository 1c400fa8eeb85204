//! Durations as written in the configuration: `<positive integer><s|m|h|d>`.

use std::time::Duration;

use super::LimitsError;

/// Parses `<positive integer><unit>` with unit `s`, `m`, `h` or `d` (`"60s"`, `"10m"`, `"4h"`,
/// `"1d"`). Nothing else is accepted: no spaces, signs, fractions, other units or a missing
/// unit.
///
/// # Errors
/// [`LimitsError::BadDuration`] naming the value; zero is rejected because a zero period or
/// gap is meaningless.
pub fn parse_duration(s: &str) -> Result<Duration, LimitsError> {
    let bad = |reason| LimitsError::BadDuration {
        value: s.to_owned(),
        reason,
    };
    // Split before the last character, not the last byte: a multi-byte last character (found
    // by fuzzing the config: `"0ŗ"`) would otherwise make `split_at` panic.
    let last = s.char_indices().next_back().map_or(0, |(i, _)| i);
    let (digits, unit) = s.split_at(last);
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "" => return Err(bad("empty")),
        _ => return Err(bad("missing or unknown unit")),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the number must be a plain positive integer"));
    }
    let n: u64 = digits.parse().map_err(|_| bad("number too large"))?;
    if n == 0 {
        return Err(bad("must be greater than zero"));
    }
    let secs = n
        .checked_mul(unit_secs)
        .ok_or_else(|| bad("number too large"))?;
    Ok(Duration::from_secs(secs))
}

/// The canonical text of a duration: the largest unit that divides it exactly (`"1d"`,
/// `"90m"`). Sub-second parts are dropped (parsed durations never have them).
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".to_owned(),
        _ if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s.is_multiple_of(3_600) => format!("{}h", s / 3_600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

/// Serde helpers writing a [`Duration`] as its canonical string (see [`parse_duration`] and
/// [`format_duration`]), for `#[serde(with = "…::serde_duration")]`.
pub mod serde_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _, ser::Error as _};

    /// Serializes as `"<n><unit>"`.
    ///
    /// # Errors
    /// When the duration has a sub-second part, which the text form cannot express.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if d.subsec_nanos() != 0 {
            return Err(S::Error::custom("durations must be whole seconds"));
        }
        s.serialize_str(&super::format_duration(*d))
    }

    /// Deserializes from `"<n><unit>"`.
    ///
    /// # Errors
    /// The message of [`super::LimitsError::BadDuration`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(D::Error::custom)
    }

    /// The same for `Option<Duration>` (use with `default` and
    /// `skip_serializing_if = "Option::is_none"`).
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        /// Serializes `Some` as a string and `None` as a unit (callers skip `None`).
        ///
        /// # Errors
        /// As [`super::serialize`].
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        /// Deserializes a present string into `Some`.
        ///
        /// # Errors
        /// As [`super::deserialize`].
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            #[derive(Deserialize)]
            struct Wrap(#[serde(with = "super")] Duration);
            Ok(Option::<Wrap>::deserialize(d)?.map(|Wrap(d)| d))
        }
    }

    /// `Option<Duration>` where `None` is written `"off"`: a feature that can be switched off
    /// (`"off"` or `"0"`) or given a duration (`"5m"`). Anything else is an error.
    pub mod off {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

        /// Serializes `Some` as `"<n><unit>"` and `None` as `"off"`.
        ///
        /// # Errors
        /// As [`super::serialize`].
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_str("off"),
            }
        }

        /// Deserializes `"off"` or `"0"` into `None`, a duration into `Some`.
        ///
        /// # Errors
        /// As [`super::deserialize`] for anything else.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let text = String::deserialize(d)?;
            match text.as_str() {
                "off" | "0" => Ok(None),
                _ => super::super::parse_duration(&text)
                    .map(Some)
                    .map_err(D::Error::custom),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multibyte_last_character_is_an_error_not_a_panic() {
        // Regression: fuzz/ config_toml found `low_watermark = "0ŗ"` panicking in `split_at`.
        for text in ["0ŗ", "ŗ", "5é", "1\u{1F600}", "10mß"] {
            assert!(
                matches!(
                    parse_duration(text),
                    Err(LimitsError::BadDuration { reason, .. }) if reason == "missing or unknown unit"
                ),
                "{text:?}"
            );
        }
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5_400));
    }
}
