//! Schedules: what the config, the API and the packs declare (`ScheduleSpec`, several per chain
//! and integration as `ScheduleSpecs`) and what the scheduler fires (`Schedule`: an interval
//! aligned to the epoch, or a crontab expression read in a time zone), with their checks.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

/// One schedule of a chain for an integration: every `interval_secs` seconds, or at the times of a
/// crontab expression (`cron`, read in `tz`), firing runs in `mode` (default incremental) with
/// `step_modes` overriding single steps' modes. `enabled = false` switches off the schedule of the
/// same (chain, integration, mode) a pack would add, and needs no time.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u64>,
    /// Crontab syntax, 5 fields (`0 2 * * *`; 0 or 7 is Sunday), or 6 with seconds first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The mode of the runs it fires (default incremental).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<crate::chain::Mode>,
    /// IANA time zone the cron expression is read in (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
    /// Per-step modes of the runs it fires, over the chain's pinned modes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub step_modes: BTreeMap<String, crate::chain::Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

impl ScheduleSpec {
    /// The mode of the runs it fires.
    pub fn run_mode(&self) -> crate::chain::Mode {
        self.mode.unwrap_or_default()
    }

    /// False when the spec switches a schedule off.
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }
}

/// The schedules of one (chain, integration) in the config: one table or an array of tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ScheduleSpecs {
    One(ScheduleSpec),
    Many(Vec<ScheduleSpec>),
}

impl ScheduleSpecs {
    pub fn iter(&self) -> std::slice::Iter<'_, ScheduleSpec> {
        match self {
            ScheduleSpecs::One(s) => std::slice::from_ref(s).iter(),
            ScheduleSpecs::Many(v) => v.iter(),
        }
    }
}

impl<'de> Deserialize<'de> for ScheduleSpecs {
    // Read through a value so that an error names the field (an untagged enum would only say that
    // no form matched).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Array(items) => items
                .into_iter()
                .map(serde_json::from_value)
                .collect::<Result<Vec<ScheduleSpec>, _>>()
                .map(ScheduleSpecs::Many)
                .map_err(D::Error::custom),
            v => serde_json::from_value(v).map(ScheduleSpecs::One).map_err(D::Error::custom),
        }
    }
}

/// Checks the schedules of one (chain, integration): each spec, and no two of one mode.
pub fn check_specs(specs: &ScheduleSpecs, min: Duration) -> Result<(), String> {
    let mut modes = Vec::new();
    for spec in specs.iter() {
        if spec.is_enabled() || spec.interval_secs.is_some() || spec.cron.is_some() {
            Schedule::from_spec(spec, min)?;
        }
        if modes.contains(&spec.run_mode()) {
            return Err(format!("two schedules of mode `{}`: give each mode one", spec.run_mode().as_str()));
        }
        modes.push(spec.run_mode());
    }
    Ok(())
}

/// Parses a crontab expression: 5 fields (minute first, as crontab reads it; 0 or 7 is Sunday), or
/// 6 with a seconds field first.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| format!("bad cron `{expr}`: {e}"))
}

/// Parses an IANA time zone name (`Europe/Berlin`, `UTC`).
pub fn parse_tz(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse::<chrono_tz::Tz>().map_err(|_| format!("unknown time zone `{name}` (an IANA name, e.g. Europe/Berlin)"))
}

/// A resolved schedule: every N seconds (aligned to the epoch, so every producer agrees on the
/// tick) or a crontab expression read in an IANA time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Interval(Duration),
    Cron { expr: String, tz: chrono_tz::Tz },
}

impl Schedule {
    /// A cron schedule in UTC.
    pub fn cron_utc(expr: &str) -> Result<Schedule, String> {
        parse_cron(expr)?;
        Ok(Schedule::Cron { expr: expr.to_owned(), tz: chrono_tz::Tz::UTC })
    }

    /// Validates a spec against the minimum interval.
    pub fn from_spec(spec: &ScheduleSpec, min: Duration) -> Result<Schedule, String> {
        match (spec.interval_secs, &spec.cron) {
            (Some(_), Some(_)) => Err("set either interval_secs or cron, not both".into()),
            (None, None) => Err("set interval_secs or cron".into()),
            (Some(secs), None) => {
                if spec.tz.as_deref().is_some_and(|tz| tz != "UTC") {
                    return Err("tz: applies to a cron expression only (intervals are counted in UTC)".into());
                }
                if Duration::from_secs(secs) < min {
                    Err(format!("interval {secs}s is below the minimum of {}s", min.as_secs()))
                } else {
                    Ok(Schedule::Interval(Duration::from_secs(secs)))
                }
            }
            (None, Some(expr)) => {
                let tz = spec.tz.as_deref().map(parse_tz).transpose()?.unwrap_or(chrono_tz::Tz::UTC);
                let parsed = parse_cron(expr)?;
                // The shortest gap over the next occurrences (a day's worth of a `*/5 2 * * *` too).
                let start = chrono::Utc::now().with_timezone(&tz);
                let times: Vec<_> = parsed.iter_after(start).take(64).collect();
                if times.is_empty() {
                    return Err(format!("cron `{expr}` never fires"));
                }
                if let Some(gap) = times.windows(2).map(|w| (w[1] - w[0]).to_std().unwrap_or_default()).min()
                    && gap < min
                {
                    return Err(format!(
                        "cron `{expr}` fires every {}s, below the minimum of {}s",
                        gap.as_secs(),
                        min.as_secs()
                    ));
                }
                Ok(Schedule::Cron { expr: expr.clone(), tz })
            }
        }
    }

    /// The time zone its times are read in (`UTC` for an interval).
    pub fn tz(&self) -> chrono_tz::Tz {
        match self {
            Schedule::Interval(_) => chrono_tz::Tz::UTC,
            Schedule::Cron { tz, .. } => *tz,
        }
    }

    /// The latest tick at or before `now` (epoch seconds), the identity of a scheduled run.
    pub fn tick_at_or_before(&self, now: chrono::DateTime<chrono::Utc>) -> Option<i64> {
        match self {
            Schedule::Interval(d) => {
                let secs = d.as_secs().max(1) as i64;
                Some(now.timestamp().div_euclid(secs) * secs)
            }
            Schedule::Cron { expr, tz } => {
                let parsed = parse_cron(expr).ok()?;
                let at = chrono::DateTime::from_timestamp(now.timestamp(), 0)?.with_timezone(tz);
                parsed.find_previous_occurrence(&at, true).ok().map(|t| t.timestamp())
            }
        }
    }

    /// The cron expression firing at the same ticks: a cron schedule's own; for an interval, the
    /// equivalent when one exists (a whole number of minutes dividing an hour, or of hours dividing
    /// a day — interval ticks are aligned to the epoch, so to UTC midnight), with a seconds field.
    pub fn as_cron(&self) -> Option<String> {
        match self {
            Schedule::Cron { expr, .. } => Some(expr.clone()),
            Schedule::Interval(d) => {
                let secs = d.as_secs();
                if secs % 60 != 0 || secs == 0 {
                    return None;
                }
                let minutes = secs / 60;
                match minutes {
                    60 => Some("0 0 * * * *".into()),
                    m if m < 60 && 60 % m == 0 => Some(format!("0 */{m} * * * *")),
                    m if m % 60 == 0 && 24 % (m / 60) == 0 => Some(format!("0 0 */{} * * *", m / 60)),
                    _ => None,
                }
            }
        }
    }

    /// The next tick strictly after `now`.
    pub fn next_after(&self, now: chrono::DateTime<chrono::Utc>) -> Option<chrono::DateTime<chrono::Utc>> {
        match self {
            Schedule::Interval(d) => {
                let secs = d.as_secs().max(1) as i64;
                let next = (now.timestamp().div_euclid(secs) + 1) * secs;
                chrono::DateTime::from_timestamp(next, 0)
            }
            Schedule::Cron { expr, tz } => {
                let at = chrono::DateTime::from_timestamp(now.timestamp(), 0)?.with_timezone(tz);
                parse_cron(expr).ok()?.find_next_occurrence(&at, false).ok().map(|t| t.with_timezone(&chrono::Utc))
            }
        }
    }
}
