//! The two environments of blue-green: the live one and the idle one beside it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One of the two slots a service's releases alternate between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    /// The slot a candidate takes when `self` is live.
    pub fn other(self) -> Self {
        match self {
            Self::Blue => Self::Green,
            Self::Green => Self::Blue,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Blue => "blue",
            Self::Green => "green",
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A color name that is neither `blue` nor `green`.
#[derive(Debug, thiserror::Error)]
#[error("unknown color {0:?} (expected \"blue\" or \"green\")")]
pub struct UnknownColor(String);

impl FromStr for Color {
    type Err = UnknownColor;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blue" => Ok(Self::Blue),
            "green" => Ok(Self::Green),
            other => Err(UnknownColor(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colors_alternate_and_round_trip() {
        for c in [Color::Blue, Color::Green] {
            assert_ne!(c, c.other());
            assert_eq!(c, c.other().other());
            assert_eq!(c.as_str().parse::<Color>().unwrap(), c);
        }
        assert!("red".parse::<Color>().is_err());
    }
}
