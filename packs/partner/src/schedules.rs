//! The pack's default schedules (issue #5, "Chains and schedules"), in UTC. The producer's scheduler
//! adds them for every enabled `partner` integration; a configured or stored schedule of the same
//! chain and mode replaces one (config and stored schedules run incremental), and a stored schedule
//! switched off stops all of its chain's.

use syncfleet_sdk::{DefaultSchedule, chain::Mode};

pub fn defaults() -> Vec<DefaultSchedule> {
    let d = |chain, cron, mode| DefaultSchedule { chain, cron, mode };
    vec![
        // Daily at 02:00: the whole chain (its `impartner_sync` always reads in full).
        d("partner_daily", "0 0 2 * * *", Mode::Incremental),
        // Every 4 h from 06:00: enrollments, then the counts pushed (the chain's second step).
        d("partner_enrollments", "0 0 6,10,14,18,22 * * *", Mode::Incremental),
        d("partner_leads", "0 0 8,14,20 * * *", Mode::Incremental),
        // Weekly: leads in full (conversions and deletions) Sunday 03:00, cleanup Sunday 04:00,
        // the weekly reports Monday 08:00.
        d("partner_leads", "0 0 3 * * Sun", Mode::Full),
        d("partner_cleanup", "0 0 4 * * Sun", Mode::Incremental),
        d("partner_weekly_reports", "0 0 8 * * Mon", Mode::Incremental),
    ]
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use chrono::{Datelike, TimeZone, Timelike, Utc};

    #[test]
    fn defaults_parse_and_fire_when_the_issue_says() {
        let monday = Utc.with_ymd_and_hms(2026, 11, 23, 0, 30, 0).unwrap();
        assert_eq!(monday.weekday(), chrono::Weekday::Mon);
        let next = |cron: &str| cron::Schedule::from_str(cron).unwrap().after(&monday).next().unwrap();
        let d = super::defaults();
        assert_eq!(next(d[0].cron).hour(), 2);
        assert_eq!(next(d[1].cron).hour(), 6);
        assert_eq!((next(d[3].cron).weekday(), next(d[3].cron).hour()), (chrono::Weekday::Sun, 3));
        assert_eq!((next(d[4].cron).weekday(), next(d[4].cron).hour()), (chrono::Weekday::Sun, 4));
        assert_eq!((next(d[5].cron).weekday(), next(d[5].cron).hour()), (chrono::Weekday::Mon, 8));
    }
}
