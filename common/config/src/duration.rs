//! Durations as Istio's YAML writes them: `7s`, `2.8s`, `0.5s`, `10ms`, `1m30s`, `1h`.
//!
//! Istio's protobuf JSON form only has seconds (`"1.5s"`); its docs and users also write Go
//! durations (`"100ms"`), which 1.0's validation accepted through gogo's std duration. Both
//! forms are read; output always uses the shortest exact form.

use std::fmt;
use std::time::Duration as StdDuration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub StdDuration);

impl Duration {
    pub fn as_std(self) -> StdDuration {
        self.0
    }

    pub fn from_millis(ms: u64) -> Self {
        Duration(StdDuration::from_millis(ms))
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

/// Why a duration string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("negative durations are not allowed: \"{0}\"")]
    Negative(String),
    #[error(
        "\"{0}\" is not a duration (expected a number and a unit: ns, us, ms, s, m, h; e.g. \"1.5s\" or \"100ms\")"
    )]
    Invalid(String),
    #[error("\"{0}\" is too long a duration")]
    Overflow(String),
}

impl std::str::FromStr for Duration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let s = text.trim();
        if s.is_empty() {
            return Err(DurationError::Empty);
        }
        if s.starts_with('-') {
            return Err(DurationError::Negative(text.to_owned()));
        }
        let invalid = || DurationError::Invalid(text.to_owned());
        let mut rest = s.strip_prefix('+').unwrap_or(s);
        if rest == "0" {
            return Ok(Duration(StdDuration::ZERO));
        }
        let mut total_nanos: u128 = 0;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(invalid)?;
            let (num, after) = rest.split_at(num_len);
            if num.is_empty() || num == "." || num.matches('.').count() > 1 {
                return Err(invalid());
            }
            let unit_len = after
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(after.len());
            let (unit, next) = after.split_at(unit_len);
            let unit_nanos: u128 = match unit {
                "ns" => 1,
                "us" | "µs" | "μs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => return Err(invalid()),
            };
            let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
            let int: u128 = if int_part.is_empty() {
                0
            } else {
                int_part.parse().map_err(|_| invalid())?
            };
            let mut nanos = int
                .checked_mul(unit_nanos)
                .ok_or_else(|| DurationError::Overflow(text.to_owned()))?;
            let mut scale = unit_nanos;
            for d in frac_part.bytes() {
                scale /= 10;
                if scale == 0 {
                    break;
                }
                nanos += u128::from(d - b'0') * scale;
            }
            total_nanos = total_nanos
                .checked_add(nanos)
                .ok_or_else(|| DurationError::Overflow(text.to_owned()))?;
            rest = next;
        }
        let secs = u64::try_from(total_nanos / 1_000_000_000)
            .map_err(|_| DurationError::Overflow(text.to_owned()))?;
        let sub = u32::try_from(total_nanos % 1_000_000_000).unwrap_or(0);
        Ok(Duration(StdDuration::new(secs, sub)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.subsec_nanos();
        let secs = self.0.as_secs();
        if secs == 0 && nanos != 0 && nanos.is_multiple_of(1_000_000) {
            return write!(f, "{}ms", nanos / 1_000_000);
        }
        if nanos == 0 {
            return write!(f, "{secs}s");
        }
        let frac = format!("{nanos:09}");
        write!(f, "{secs}.{}s", frac.trim_end_matches('0'))
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"1.5s\" or \"100ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> StdDuration {
        s.parse::<Duration>().unwrap().0
    }

    #[test]
    fn parses_istio_and_go_forms() {
        assert_eq!(d("7s"), StdDuration::from_secs(7));
        assert_eq!(d("2.8s"), StdDuration::from_millis(2800));
        assert_eq!(d("0.5s"), StdDuration::from_millis(500));
        assert_eq!(d(".5s"), StdDuration::from_millis(500));
        assert_eq!(d("10ms"), StdDuration::from_millis(10));
        assert_eq!(d("1m30s"), StdDuration::from_secs(90));
        assert_eq!(d("1h"), StdDuration::from_secs(3600));
        assert_eq!(d("250us"), StdDuration::from_micros(250));
        assert_eq!(d("0"), StdDuration::ZERO);
    }

    #[test]
    fn refuses_nonsense() {
        for bad in ["", "7", "s", "1.2.3s", "-1s", "10 seconds", "1d", "abc"] {
            assert!(
                bad.parse::<Duration>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn displays_shortest_exact_form() {
        assert_eq!(Duration(StdDuration::from_millis(2800)).to_string(), "2.8s");
        assert_eq!(Duration(StdDuration::from_millis(10)).to_string(), "10ms");
        assert_eq!(Duration(StdDuration::from_secs(6)).to_string(), "6s");
        assert_eq!(
            Duration(StdDuration::from_micros(1500)).to_string(),
            "0.0015s"
        );
    }
}
