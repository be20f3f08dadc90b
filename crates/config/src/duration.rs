//! Durations written as `"250ms"`, `"1s"`, `"5m"`, so a typo is an error with a line number.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Deserializes a human-readable duration such as `"250ms"` or `"1m 30s"`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
}

/// The same, for a key that may be left out (with `#[serde(default)]`).
pub fn deserialize_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    deserialize(d).map(Some)
}
