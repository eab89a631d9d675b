//! The pack's default schedules (issue #5, "Chains and schedules"; issue #19, "Pack defaults that
//! find deletions"), in UTC, crontab syntax. The producer's scheduler adds them for every enabled
//! `partner` integration; a configured or stored schedule of the same chain and mode replaces one,
//! and a stored schedule switched off stops its mode's (or, switched off for every mode, all of its
//! chain's).
//!
//! `partner_daily` runs incremental through the day and **full every night**: the full run sweeps
//! people, groups, group memberships, courses, NPCU and Impartner partners and contacts behind the
//! deletion guard, so what Northpass or Impartner deleted is found without anyone triggering a run.
//! Its enrollments and the counts pushed to Impartner stay incremental at night (they are read per
//! user and swept per user in every mode; a full push would resend every count).

use syncfleet_sdk::{DefaultSchedule, chain::Mode};

/// The nightly full run of `partner_daily`.
pub const NIGHTLY_FULL: DefaultSchedule = DefaultSchedule::new("partner_daily", "0 2 * * *", Mode::Full)
    .with_step_modes(&[("sync_enrollments", Mode::Incremental), ("sync_to_impartner", Mode::Incremental)]);

pub fn defaults() -> Vec<DefaultSchedule> {
    let d = DefaultSchedule::new;
    vec![
        // Every night at 02:00: the whole chain in full (the deletion sweeps).
        NIGHTLY_FULL,
        // Through the day, every 4 h from 05:30: the changes since the last read.
        d("partner_daily", "30 5-21/4 * * *", Mode::Incremental),
        // Every 4 h from 06:00: enrollments, then the counts pushed (the chain's second step).
        d("partner_enrollments", "0 6,10,14,18,22 * * *", Mode::Incremental),
        d("partner_leads", "0 8,14,20 * * *", Mode::Incremental),
        // Weekly: leads in full (conversions and deletions) Sunday 03:00, cleanup Sunday 04:00,
        // the weekly reports Monday 08:00.
        d("partner_leads", "0 3 * * 0", Mode::Full),
        d("partner_cleanup", "0 4 * * 0", Mode::Incremental),
        d("partner_weekly_reports", "0 8 * * 1", Mode::Incremental),
    ]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{Datelike, TimeZone, Timelike, Utc};
    use syncfleet_sdk::{chain::Mode, config::ScheduleSpec};

    #[test]
    fn defaults_parse_and_fire_when_the_issue_says() {
        let monday = Utc.with_ymd_and_hms(2026, 11, 23, 0, 30, 0).unwrap();
        assert_eq!(monday.weekday(), chrono::Weekday::Mon);
        let d = super::defaults();
        let next = |i: usize| {
            let spec = ScheduleSpec { cron: Some(d[i].cron.into()), tz: Some(d[i].tz.into()), ..Default::default() };
            let s = syncfleet_sdk::config::Schedule::from_spec(&spec, Duration::from_secs(60)).unwrap();
            s.next_after(monday).unwrap()
        };
        assert_eq!((d[0].chain, d[0].mode, next(0).hour()), ("partner_daily", Mode::Full, 2));
        assert_eq!(
            (d[1].chain, d[1].mode, next(1).hour(), next(1).minute()),
            ("partner_daily", Mode::Incremental, 5, 30)
        );
        assert_eq!(next(2).hour(), 6);
        assert_eq!((next(4).weekday(), next(4).hour()), (chrono::Weekday::Sun, 3));
        assert_eq!((next(5).weekday(), next(5).hour()), (chrono::Weekday::Sun, 4));
        assert_eq!((next(6).weekday(), next(6).hour()), (chrono::Weekday::Mon, 8));
        // Every step the nightly run sweeps is a step of the chain.
        let daily = crate::chains().into_iter().find(|c| c.name.as_str() == "partner_daily").unwrap();
        assert!(d[0].step_modes.iter().all(|(s, _)| daily.step(s).is_some()));
    }
}
