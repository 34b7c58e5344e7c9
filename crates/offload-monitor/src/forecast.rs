//! Holt linear (double exponential) smoothing over irregularly spaced samples.

/// A level and a per-second trend, updated with each sample.
#[derive(Debug, Clone)]
pub(crate) struct Holt {
    alpha: f64,
    beta: f64,
    level: f64,
    trend_per_sec: f64,
    last_at: Option<f64>,
}

impl Holt {
    pub(crate) fn new(alpha: f64, beta: f64) -> Self {
        Self {
            alpha,
            beta,
            level: 0.0,
            trend_per_sec: 0.0,
            last_at: None,
        }
    }

    /// Folds in `value` observed at `at` seconds. A sample at or before the previous one
    /// changes nothing, so evaluating the same tick twice is harmless.
    pub(crate) fn observe(&mut self, at: f64, value: f64) {
        match self.last_at {
            None => {
                self.level = value;
                self.trend_per_sec = 0.0;
            }
            Some(last) if at > last => {
                // The trend is per second, not per sample, so a missed tick stretches the
                // step instead of bending the line.
                let dt = at - last;
                let predicted = self.level + self.trend_per_sec * dt;
                let level = self.alpha * value + (1.0 - self.alpha) * predicted;
                self.trend_per_sec =
                    self.beta * (level - self.level) / dt + (1.0 - self.beta) * self.trend_per_sec;
                self.level = level;
            }
            Some(_) => return,
        }
        self.last_at = Some(at);
    }

    /// Whether the trend points up.
    pub(crate) fn rising(&self) -> bool {
        self.trend_per_sec > 0.0
    }

    /// The value expected `ahead_secs` after the last sample (never below 0).
    pub(crate) fn forecast(&self, ahead_secs: f64) -> f64 {
        (self.level + self.trend_per_sec * ahead_secs).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_series_forecasts_itself() {
        let mut holt = Holt::new(0.5, 0.3);
        for i in 0..20 {
            holt.observe(f64::from(i) * 2.0, 0.5);
        }
        assert!((holt.forecast(30.0) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn a_linear_ramp_is_extrapolated() {
        let mut holt = Holt::new(0.5, 0.3);
        for i in 0..60 {
            let t = f64::from(i) * 2.0;
            holt.observe(t, 0.1 + 0.005 * t);
        }
        // Last sample at t = 118 (0.69); 30 s later the line is at 0.84.
        let f = holt.forecast(30.0);
        assert!((f - 0.84).abs() < 0.01, "{f}");
    }

    #[test]
    fn repeating_a_tick_changes_nothing() {
        let mut once = Holt::new(0.5, 0.3);
        let mut twice = Holt::new(0.5, 0.3);
        for (t, v) in [(0.0, 0.2), (2.0, 0.4), (4.0, 0.5)] {
            once.observe(t, v);
            twice.observe(t, v);
            twice.observe(t, v);
        }
        assert_eq!(once.forecast(10.0), twice.forecast(10.0));
    }
}
