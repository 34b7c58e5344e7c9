//! Pressure on one resource: watermarks with hysteresis, the sustain window and the
//! Holt forecast that flags a rising ramp before it crosses.

use serde::{Deserialize, Serialize};

use crate::config::PolicyConfig;
use crate::forecast::Holt;
use crate::resource::{Resource, Watermark};

/// Why pressure started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// Usage stayed above the high watermark for the sustain window.
    Sustained,
    /// The forecast crossed the high watermark within the horizon.
    Forecast,
}

/// How pressure on a resource changed in one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Started,
    Ended,
    Unchanged,
}

/// The forecast must agree on this many consecutive samples before it starts pressure,
/// so one noisy sample cannot make users move.
const FORECAST_SAMPLES: u32 = 2;

/// The state of one resource between evaluations.
#[derive(Debug, Clone)]
pub(crate) struct Pressure {
    resource: Resource,
    watermark: Watermark,
    horizon_secs: f64,
    sustain_secs: f64,
    holt: Holt,
    usage: f64,
    forecast: f64,
    above_high_since: Option<f64>,
    forecast_over_samples: u32,
    active: Option<(f64, Trigger)>,
}

impl Pressure {
    pub(crate) fn new(resource: Resource, config: &PolicyConfig) -> Self {
        Self {
            resource,
            watermark: config.watermark(resource),
            horizon_secs: config.horizon_secs,
            sustain_secs: config.sustain_secs,
            holt: Holt::new(config.forecast_alpha, config.forecast_beta),
            usage: 0.0,
            forecast: 0.0,
            above_high_since: None,
            forecast_over_samples: 0,
            active: None,
        }
    }

    /// Folds in the usage seen at `at`. `new_sample` is false when `at` repeats (or
    /// precedes) the previous evaluation; such a call re-reads the level without advancing
    /// the forecast or the sample count.
    pub(crate) fn update(&mut self, at: f64, usage: f64, new_sample: bool) -> Change {
        let Watermark { low, high } = self.watermark;
        self.usage = usage;
        if new_sample {
            self.holt.observe(at, usage);
        }
        // With the forecast off, "forecast" is the usage itself, not the lagging level.
        self.forecast = if self.horizon_secs > 0.0 {
            self.holt.forecast(self.horizon_secs)
        } else {
            usage
        };
        if usage > high {
            self.above_high_since.get_or_insert(at);
        } else {
            self.above_high_since = None;
        }
        if new_sample {
            // The forecast flags a crossing still to come: usage between the watermarks
            // and rising towards high. Below low a jump from idle is not a trend yet;
            // above high the sustain window decides, so a flat load over high is not
            // rushed past it.
            let forecast_over = self.horizon_secs > 0.0
                && usage >= low
                && usage <= high
                && self.holt.rising()
                && self.forecast >= high;
            self.forecast_over_samples = if forecast_over {
                self.forecast_over_samples.saturating_add(1)
            } else {
                0
            };
        }
        match self.active {
            None => {
                let sustained = self
                    .above_high_since
                    .is_some_and(|since| at - since >= self.sustain_secs);
                let trigger = if sustained {
                    Some(Trigger::Sustained)
                } else if self.forecast_over_samples >= FORECAST_SAMPLES {
                    Some(Trigger::Forecast)
                } else {
                    None
                };
                match trigger {
                    Some(trigger) => {
                        self.active = Some((at, trigger));
                        Change::Started
                    }
                    None => Change::Unchanged,
                }
            }
            Some(_) if usage < low && self.forecast < low => {
                self.active = None;
                Change::Ended
            }
            Some(_) => Change::Unchanged,
        }
    }

    pub(crate) fn resource(&self) -> Resource {
        self.resource
    }

    pub(crate) fn watermark(&self) -> Watermark {
        self.watermark
    }

    pub(crate) fn is_active(&self) -> bool {
        self.active.is_some()
    }

    pub(crate) fn trigger(&self) -> Option<Trigger> {
        self.active.map(|(_, trigger)| trigger)
    }

    pub(crate) fn usage(&self) -> f64 {
        self.usage
    }

    pub(crate) fn forecast(&self) -> f64 {
        self.forecast
    }

    pub(crate) fn above_high_for(&self, at: f64) -> Option<f64> {
        self.above_high_since.map(|since| (at - since).max(0.0))
    }

    /// The usage to plan against: the higher of now and the forecast. The forecast alone
    /// is capped at full use, since a host cannot run above it whatever the trend says.
    pub(crate) fn projected(&self) -> f64 {
        self.usage.max(self.forecast.min(self.usage.max(1.0)))
    }

    /// True when neither usage nor forecast is at or above the low watermark.
    pub(crate) fn is_calm(&self) -> bool {
        self.active.is_none()
            && self.usage < self.watermark.low
            && self.forecast < self.watermark.low
    }

    /// "cpu 93% for 20 s (high 85%), forecast 98% in 30 s".
    pub(crate) fn describe(&self, at: f64) -> String {
        let mut text = format!("{} {}", self.resource, percent(self.usage));
        if let Some(secs) = self.above_high_for(at) {
            text.push_str(&format!(" for {} s", secs.round()));
        }
        text.push_str(&format!(" (high {})", percent(self.watermark.high)));
        if self.horizon_secs > 0.0 {
            text.push_str(&format!(
                ", forecast {} in {} s",
                percent(self.forecast),
                self.horizon_secs.round()
            ));
        }
        text
    }
}

/// A fraction as a whole percentage, "93%".
pub(crate) fn percent(fraction: f64) -> String {
    format!("{}%", (fraction * 100.0).round())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pressure: &mut Pressure, series: &[(f64, f64)]) -> Vec<(f64, Change)> {
        series
            .iter()
            .map(|&(at, usage)| (at, pressure.update(at, usage, true)))
            .filter(|(_, change)| *change != Change::Unchanged)
            .collect()
    }

    fn every_two_secs(values: &[f64]) -> Vec<(f64, f64)> {
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as f64 * 2.0, v))
            .collect()
    }

    #[test]
    fn pressure_starts_only_after_the_sustain_window() {
        let config = PolicyConfig {
            horizon_secs: 0.0,
            ..PolicyConfig::default()
        };
        let mut cpu = Pressure::new(Resource::Cpu, &config);
        // Above high from t = 4; sustain is 10 s, so pressure starts at t = 14.
        let series = every_two_secs(&[0.5, 0.5, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]);
        assert_eq!(run(&mut cpu, &series), vec![(14.0, Change::Started)]);
        assert_eq!(cpu.trigger(), Some(Trigger::Sustained));
        assert_eq!(cpu.describe(18.0), "cpu 90% for 14 s (high 85%)");
    }

    #[test]
    fn a_short_spike_is_not_pressure() {
        let config = PolicyConfig {
            horizon_secs: 0.0,
            ..PolicyConfig::default()
        };
        let mut cpu = Pressure::new(Resource::Cpu, &config);
        let series = every_two_secs(&[0.5, 0.95, 0.95, 0.95, 0.5, 0.95, 0.95, 0.5]);
        assert_eq!(run(&mut cpu, &series), vec![]);
    }

    #[test]
    fn hysteresis_holds_pressure_until_below_low() {
        let config = PolicyConfig {
            horizon_secs: 0.0,
            sustain_secs: 0.0,
            ..PolicyConfig::default()
        };
        let mut cpu = Pressure::new(Resource::Cpu, &config);
        // Between the watermarks (0.60..0.85) pressure neither starts nor ends.
        let series = every_two_secs(&[0.7, 0.9, 0.8, 0.7, 0.61, 0.59, 0.7, 0.84]);
        assert_eq!(
            run(&mut cpu, &series),
            vec![(2.0, Change::Started), (10.0, Change::Ended)]
        );
    }

    #[test]
    fn a_rising_ramp_is_flagged_by_the_forecast_before_it_crosses() {
        let config = PolicyConfig::default();
        let mut cpu = Pressure::new(Resource::Cpu, &config);
        // +1 point per second from 30%: crosses 85% at t = 55.
        let series: Vec<(f64, f64)> = (0..40)
            .map(|i| {
                let at = f64::from(i) * 2.0;
                (at, 0.30 + 0.01 * at)
            })
            .collect();
        let changes = run(&mut cpu, &series);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let (at, change) = changes[0];
        assert_eq!(change, Change::Started);
        assert!(at < 55.0, "flagged at {at}, after the crossing");
        assert_eq!(cpu.trigger(), Some(Trigger::Forecast));
    }

    #[test]
    fn the_same_ramp_without_forecast_is_flagged_only_after_crossing() {
        // Guards the test above: it is the forecast, not the sustain window, that flags early.
        let config = PolicyConfig {
            horizon_secs: 0.0,
            ..PolicyConfig::default()
        };
        let mut cpu = Pressure::new(Resource::Cpu, &config);
        let series: Vec<(f64, f64)> = (0..40)
            .map(|i| {
                let at = f64::from(i) * 2.0;
                (at, 0.30 + 0.01 * at)
            })
            .collect();
        let changes = run(&mut cpu, &series);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(changes[0].0 > 55.0, "{changes:?}");
    }

    #[test]
    fn a_flat_load_between_watermarks_is_not_forecast_as_pressure() {
        let config = PolicyConfig::default();
        let mut cpu = Pressure::new(Resource::Cpu, &config);
        let series = every_two_secs(&[0.8; 30]);
        assert_eq!(run(&mut cpu, &series), vec![]);
    }
}
