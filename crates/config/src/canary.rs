//! `strategy`, `[services.NAME.canary]` and `[metrics]`: their shape as serde
//! sees it and their conversion into [`CanaryConfig`] and friends.
//!
//! Every key is optional; an absent one takes its value from
//! [`CanaryConfig::default`] or [`AnalysisConfig::default`], so the defaults
//! are written down once.

use std::time::Duration;

use baton_core::{Inconclusive, Pause, Plan, Step, Sticky, Weight};
use serde::{Deserialize, Deserializer};

use crate::raw::{nonzero, Culprit};
use crate::{AnalysisConfig, CanaryConfig, ConfigError, PrometheusCheck, Strategy, WebhookCheck};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Canary {
    #[serde(default)]
    steps: Option<Vec<RawStep>>,
    #[serde(default)]
    sticky: Option<String>,
    #[serde(default, deserialize_with = "crate::duration::deserialize_opt")]
    deadline: Option<Duration>,
    #[serde(default)]
    analysis: Analysis,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    /// A percentage; integers and floats both (serde's f64 takes either).
    #[serde(default)]
    weight: Option<f64>,
    #[serde(deserialize_with = "pause")]
    pause: Pause,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Analysis {
    #[serde(default, deserialize_with = "crate::duration::deserialize_opt")]
    interval: Option<Duration>,
    #[serde(default)]
    min_requests: Option<u64>,
    #[serde(default)]
    max_error_rate: Option<f64>,
    #[serde(default, deserialize_with = "crate::duration::deserialize_opt")]
    max_p99: Option<Duration>,
    #[serde(default)]
    max_p99_ratio: Option<f64>,
    #[serde(default)]
    failure_limit: Option<u32>,
    #[serde(default)]
    inconclusive: Option<String>,
    #[serde(default)]
    prometheus: Vec<Prometheus>,
    #[serde(default)]
    webhook: Vec<Webhook>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Prometheus {
    server: String,
    query: String,
    #[serde(default)]
    max: Option<f64>,
    #[serde(default)]
    min: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Webhook {
    url: String,
    #[serde(default, deserialize_with = "crate::duration::deserialize_opt")]
    timeout: Option<Duration>,
}

/// A webhook's timeout when none is given.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// `"30s"` or `"forever"`, so that a typo is an error with its line.
fn pause<'de, D: Deserializer<'de>>(d: D) -> Result<Pause, D::Error> {
    let s = String::deserialize(d)?;
    if s == "forever" {
        return Ok(Pause::Forever);
    }
    humantime::parse_duration(&s).map(Pause::For).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid pause {s:?} (expected a duration such as \"30s\", or \"forever\"): {e}"
        ))
    })
}

pub(crate) fn strategy(at: &Culprit, key: &str, s: &str) -> Result<Strategy, ConfigError> {
    match s {
        "blue-green" => Ok(Strategy::BlueGreen),
        "canary" => Ok(Strategy::Canary),
        other => Err(at.err(
            key,
            format!("unknown strategy {other:?} (expected \"blue-green\" or \"canary\")"),
        )),
    }
}

impl Canary {
    /// `key` is the table's, `services.NAME.canary`.
    pub(crate) fn validate(self, at: &Culprit, key: &str) -> Result<CanaryConfig, ConfigError> {
        let key = |k: &str| format!("{key}.{k}");
        let defaults = CanaryConfig::default();
        let steps = match self.steps {
            Some(raw) => steps(at, &key("steps"), raw)?,
            None => defaults.plan.steps.clone(),
        };
        let sticky = match self.sticky {
            Some(s) => sticky(&s).map_err(|m| at.err(key("sticky"), m))?,
            None => defaults.sticky.clone(),
        };
        let deadline = self.deadline.unwrap_or(defaults.deadline);
        nonzero(at, &key("deadline"), deadline)?;
        let paused: Duration = steps
            .iter()
            .filter_map(|s| match s.pause {
                Pause::For(d) => Some(d),
                Pause::Forever => None,
            })
            .sum();
        if deadline <= paused {
            let deadline = humantime::format_duration(deadline);
            let paused = humantime::format_duration(paused);
            let message = match self.deadline {
                Some(_) => format!(
                    "{deadline} must be longer than the steps' pauses, which add up to {paused}"
                ),
                None => format!(
                    "the default {deadline} must be longer than the steps' pauses, which add up \
                     to {paused}: set a longer one"
                ),
            };
            return Err(at.err(key("deadline"), message));
        }
        let (analysis, failure_limit, inconclusive) =
            self.analysis.validate(at, &key("analysis"), &defaults)?;
        Ok(CanaryConfig {
            plan: Plan {
                steps,
                failure_limit,
                inconclusive,
            },
            sticky,
            deadline,
            analysis,
        })
    }
}

fn steps(at: &Culprit, key: &str, raw: Vec<RawStep>) -> Result<Vec<Step>, ConfigError> {
    if raw.is_empty() {
        return Err(at.err(key, "needs at least one step"));
    }
    let last = raw.len() - 1;
    let mut steps: Vec<Step> = Vec::with_capacity(raw.len());
    for (i, step) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("{key}[{i}].{k}");
        let previous = steps.last().map(|s| s.weight);
        let weight = match (step.weight, previous) {
            (None, None) => {
                return Err(at.err(
                    key("weight"),
                    "the first step needs a weight (a later step without one keeps the \
                     previous step's)",
                ))
            }
            (None, Some(previous)) => previous,
            (Some(percent), previous) => {
                let weight = weight(percent).map_err(|m| at.err(key("weight"), m))?;
                if let Some(previous) = previous.filter(|p| weight <= *p) {
                    return Err(at.err(
                        key("weight"),
                        format!("must be above the previous step's {previous} (weights rise)"),
                    ));
                }
                weight
            }
        };
        if weight == Weight::FULL && i != last {
            return Err(at.err(
                key("weight"),
                "only the last step may be 100% (after the last step the candidate takes \
                 everything anyway)",
            ));
        }
        if step.pause == Pause::For(Duration::ZERO) {
            return Err(at.err(key("pause"), "must be longer than 0s (or \"forever\")"));
        }
        steps.push(Step {
            weight,
            pause: step.pause,
        });
    }
    Ok(steps)
}

/// A step's weight, from a percentage above 0 and at most 100.
fn weight(percent: f64) -> Result<Weight, String> {
    if !(percent > 0.0 && percent <= 100.0) {
        return Err(format!(
            "must be a percentage above 0 and at most 100, got {percent}"
        ));
    }
    match Weight::from_percent(percent) {
        Some(w) if w > Weight::ZERO => Ok(w),
        _ => Err(format!(
            "{percent} is below 0.01%, the finest weight (must be above 0 and at most 100)"
        )),
    }
}

fn sticky(s: &str) -> Result<Sticky, String> {
    match s {
        "cookie" => return Ok(Sticky::Cookie),
        "ip" => return Ok(Sticky::Ip),
        _ => {}
    }
    match s.strip_prefix("header:") {
        Some(name) if is_token(name) => Ok(Sticky::Header(name.to_ascii_lowercase())),
        Some(name) => Err(format!(
            "invalid header name {name:?} in sticky mode {s:?} (expected a name such as \
             \"X-User-Id\")"
        )),
        None => Err(format!(
            "unknown sticky mode {s:?} (expected \"cookie\", \"header:<name>\" or \"ip\")"
        )),
    }
}

/// An HTTP field name: a non-empty RFC 9110 token.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Analysis {
    fn validate(
        self,
        at: &Culprit,
        key: &str,
        defaults: &CanaryConfig,
    ) -> Result<(AnalysisConfig, u32, Inconclusive), ConfigError> {
        let key = |k: &str| format!("{key}.{k}");
        let d = &defaults.analysis;
        let interval = self.interval.unwrap_or(d.interval);
        nonzero(at, &key("interval"), interval)?;
        let max_error_rate = self.max_error_rate.or(d.max_error_rate);
        if let Some(rate) = max_error_rate.filter(|r| !(0.0..=1.0).contains(r)) {
            return Err(at.err(
                key("max_error_rate"),
                format!("must be between 0 and 1 (a share of responses: 0.01 is 1%), got {rate}"),
            ));
        }
        let max_p99 = self.max_p99.or(d.max_p99);
        if let Some(p99) = max_p99 {
            nonzero(at, &key("max_p99"), p99)?;
        }
        let max_p99_ratio = self.max_p99_ratio.or(d.max_p99_ratio);
        if let Some(ratio) = max_p99_ratio.filter(|r| !(*r > 0.0 && r.is_finite())) {
            return Err(at.err(
                key("max_p99_ratio"),
                format!("must be a number above 0 (1.5: half again the live p99), got {ratio}"),
            ));
        }
        let failure_limit = self.failure_limit.unwrap_or(defaults.plan.failure_limit);
        if failure_limit == 0 {
            return Err(at.err(key("failure_limit"), "must be at least 1"));
        }
        let inconclusive = match self.inconclusive.as_deref() {
            None => defaults.plan.inconclusive,
            Some("pause") => Inconclusive::Pause,
            Some("fail") => Inconclusive::Fail,
            Some("continue") => Inconclusive::Continue,
            Some(other) => {
                return Err(at.err(
                    key("inconclusive"),
                    format!(
                        "unknown inconclusive mode {other:?} (expected \"pause\", \"fail\" or \
                         \"continue\")"
                    ),
                ))
            }
        };
        let prometheus = self
            .prometheus
            .into_iter()
            .enumerate()
            .map(|(i, p)| p.validate(at, &format!("{}[{i}]", key("prometheus"))))
            .collect::<Result<Vec<_>, _>>()?;
        let webhook = self
            .webhook
            .into_iter()
            .enumerate()
            .map(|(i, w)| w.validate(at, &format!("{}[{i}]", key("webhook"))))
            .collect::<Result<Vec<_>, _>>()?;
        let analysis = AnalysisConfig {
            interval,
            min_requests: self.min_requests.unwrap_or(d.min_requests),
            max_error_rate,
            max_p99,
            max_p99_ratio,
            prometheus,
            webhook,
        };
        Ok((analysis, failure_limit, inconclusive))
    }
}

impl Prometheus {
    fn validate(self, at: &Culprit, table: &str) -> Result<PrometheusCheck, ConfigError> {
        let key = |k: &str| format!("{table}.{k}");
        http_url(&self.server).map_err(|m| at.err(key("server"), m))?;
        if self.query.trim().is_empty() {
            return Err(at.err(key("query"), "must not be empty"));
        }
        for (k, bound) in [("max", self.max), ("min", self.min)] {
            if let Some(b) = bound.filter(|b| !b.is_finite()) {
                return Err(at.err(key(k), format!("must be a finite number, got {b}")));
            }
        }
        match (self.min, self.max) {
            (None, None) => {
                return Err(at.err(
                    table,
                    "needs max, min or both (the bounds the query's value must stay within)",
                ))
            }
            (Some(min), Some(max)) if min > max => {
                return Err(at.err(
                    key("min"),
                    format!("{min} is above max {max}, so no value could pass"),
                ))
            }
            _ => {}
        }
        Ok(PrometheusCheck {
            server: self.server.trim_end_matches('/').to_string(),
            query: self.query,
            max: self.max,
            min: self.min,
        })
    }
}

impl Webhook {
    fn validate(self, at: &Culprit, key: &str) -> Result<WebhookCheck, ConfigError> {
        http_url(&self.url).map_err(|m| at.err(format!("{key}.url"), m))?;
        let timeout = self.timeout.unwrap_or(WEBHOOK_TIMEOUT);
        nonzero(at, &format!("{key}.timeout"), timeout)?;
        Ok(WebhookCheck {
            url: self.url,
            timeout,
        })
    }
}

/// Checks that `url` is `http://HOST[:PORT][/PATH]`; baton speaks no TLS.
fn http_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Err(format!(
            "{url:?}: https is not supported (use an http:// URL, e.g. through a local proxy)"
        ));
    }
    let host = url
        .strip_prefix("http://")
        .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""));
    match host {
        Some(host) if !host.is_empty() && !url.contains(char::is_whitespace) => Ok(()),
        _ => Err(format!(
            "must be an http:// URL such as \"http://127.0.0.1:9090\", got {url:?}"
        )),
    }
}
