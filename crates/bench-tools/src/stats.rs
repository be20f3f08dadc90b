//! Latency samples and their percentiles.

/// Latencies in microseconds, merged from every connection.
#[derive(Default)]
pub struct Samples {
    micros: Vec<u32>,
}

impl Samples {
    /// Adds every sample of `other`.
    pub fn extend(&mut self, other: Vec<u32>) {
        self.micros.extend(other);
    }

    /// How many samples there are.
    pub fn len(&self) -> usize {
        self.micros.len()
    }

    /// The `p`-th percentile (0..=100) in milliseconds, `None` without samples.
    pub fn percentile_ms(&mut self, p: f64) -> Option<f64> {
        if self.micros.is_empty() {
            return None;
        }
        self.micros.sort_unstable();
        let rank = ((p / 100.0) * self.micros.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.micros.len()) - 1;
        Some(f64::from(self.micros[index]) / 1000.0)
    }
}

/// Microseconds of a duration, saturating at `u32::MAX` (71 minutes).
pub fn micros(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut s = Samples::default();
        assert_eq!(s.percentile_ms(50.0), None);
        s.extend((1..=100).map(|i| i * 1000).collect());
        assert_eq!(s.len(), 100);
        assert_eq!(s.percentile_ms(50.0), Some(50.0));
        assert_eq!(s.percentile_ms(99.0), Some(99.0));
        assert_eq!(s.percentile_ms(100.0), Some(100.0));
        assert_eq!(s.percentile_ms(0.0), Some(1.0));
    }
}
