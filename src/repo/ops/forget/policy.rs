//! The retention policy of `forget`, as restic defines it: snapshots are taken newest
//! first; `keep_last` keeps the N newest; `keep_daily` keeps the newest snapshot of each of
//! the N most recent days that have one (likewise ISO weeks and calendar months, all in
//! UTC). A snapshot is kept if any rule keeps it, and every rule that does is its reason.
//! Pure function of (id, created) pairs, so it is tested against a model.

use time::OffsetDateTime;

/// How many snapshots each rule keeps (0 = the rule is off).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForgetPolicy {
    /// Keep the N newest snapshots (`--keep-last`).
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the N most recent UTC days that have one
    /// (`--keep-daily`).
    pub keep_daily: u32,
    /// Keep the newest snapshot of each of the N most recent ISO weeks that have one
    /// (`--keep-weekly`).
    pub keep_weekly: u32,
    /// Keep the newest snapshot of each of the N most recent calendar months (UTC) that
    /// have one (`--keep-monthly`).
    pub keep_monthly: u32,
}

impl ForgetPolicy {
    /// True when the policy would keep nothing (forget refuses such a policy).
    pub fn keeps_nothing(&self) -> bool {
        self.keep_last == 0
            && self.keep_daily == 0
            && self.keep_weekly == 0
            && self.keep_monthly == 0
    }
}

/// Period of a snapshot under each calendar rule: (year, day of year), ISO (year, week),
/// (year, month).
fn periods(t: OffsetDateTime) -> [(i32, u16); 3] {
    let t = t.to_offset(time::UtcOffset::UTC);
    let (wy, ww, _) = t.to_iso_week_date();
    [
        (t.year(), t.ordinal()),
        (wy, u16::from(ww)),
        (t.year(), u16::from(u8::from(t.month()))),
    ]
}

/// Decide for each snapshot (`id`, created time) whether to keep it; returns, in input
/// order, the reasons it is kept (empty = remove). Ties in time are broken by id, so the
/// decision does not depend on input order.
pub(super) fn decide(
    policy: &ForgetPolicy,
    snaps: &[(String, OffsetDateTime)],
) -> Vec<Vec<String>> {
    let mut order: Vec<usize> = (0..snaps.len()).collect();
    order.sort_by(|&a, &b| (snaps[b].1, &snaps[b].0).cmp(&(snaps[a].1, &snaps[a].0)));
    let mut out = vec![Vec::new(); snaps.len()];
    let mut last_left = policy.keep_last;
    let names = ["daily", "weekly", "monthly"];
    let mut left = [policy.keep_daily, policy.keep_weekly, policy.keep_monthly];
    let mut seen: [Option<(i32, u16)>; 3] = [None; 3];
    for i in order {
        if last_left > 0 {
            last_left -= 1;
            out[i].push("last".to_string());
        }
        let p = periods(snaps[i].1);
        for r in 0..3 {
            if left[r] > 0 && seen[r] != Some(p[r]) {
                left[r] -= 1;
                seen[r] = Some(p[r]);
                out[i].push(names[r].to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// Independent model: per rule, group by period, take the newest snapshot of each of
    /// the N newest periods.
    fn model(policy: &ForgetPolicy, snaps: &[(String, OffsetDateTime)]) -> Vec<BTreeSet<String>> {
        let key = |i: usize| (snaps[i].1, snaps[i].0.clone());
        let mut out = vec![BTreeSet::new(); snaps.len()];
        let mut all: Vec<usize> = (0..snaps.len()).collect();
        all.sort_by_key(|&i| std::cmp::Reverse(key(i)));
        for &i in all.iter().take(policy.keep_last as usize) {
            out[i].insert("last".to_string());
        }
        let rules = [
            ("daily", policy.keep_daily, 0usize),
            ("weekly", policy.keep_weekly, 1),
            ("monthly", policy.keep_monthly, 2),
        ];
        for (name, n, r) in rules {
            let mut newest: BTreeMap<(i32, u16), usize> = BTreeMap::new();
            for (i, snap) in snaps.iter().enumerate() {
                let p = periods(snap.1)[r];
                let e = newest.entry(p).or_insert(i);
                if key(i) > key(*e) {
                    *e = i;
                }
            }
            for (_, &i) in newest.iter().rev().take(n as usize) {
                out[i].insert(name.to_string());
            }
        }
        out
    }

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(secs).unwrap()
    }

    proptest! {
        #[test]
        fn policy_matches_model(
            times in proptest::collection::vec(1_600_000_000i64..1_700_000_000, 0..60),
            dense in proptest::collection::vec(0i64..400_000, 0..40),
            last in 0u32..5, daily in 0u32..8, weekly in 0u32..6, monthly in 0u32..6,
        ) {
            let policy = ForgetPolicy { keep_last: last, keep_daily: daily, keep_weekly: weekly, keep_monthly: monthly };
            // Spread-out times plus clusters within a few days (same-day and same-week ties).
            let snaps: Vec<(String, OffsetDateTime)> = times
                .iter()
                .chain(dense.iter().map(|d| 1_650_000_000 + d).collect::<Vec<_>>().iter())
                .enumerate()
                .map(|(i, t)| (format!("s{i:03}"), at(*t)))
                .collect();
            let got: Vec<BTreeSet<String>> = decide(&policy, &snaps).into_iter().map(|v| v.into_iter().collect()).collect();
            prop_assert_eq!(got, model(&policy, &snaps));
        }
    }

    #[test]
    fn nightly_history_keeps_the_expected_snapshots() {
        // 60 nightly snapshots at 01:00 UTC from 2026-01-01 (a Thursday).
        let day = 86_400;
        let start = 1_767_229_200; // 2026-01-01T01:00:00Z
        let snaps: Vec<(String, OffsetDateTime)> = (0..60)
            .map(|i| (format!("d{i:02}"), at(start + i * day)))
            .collect();
        let policy = ForgetPolicy {
            keep_last: 2,
            keep_daily: 7,
            keep_weekly: 3,
            keep_monthly: 2,
        };
        let d = decide(&policy, &snaps);
        let kept: Vec<usize> = (0..60).filter(|&i| !d[i].is_empty()).collect();
        // Day 59 is Sunday 2026-03-01. daily: days 53..59; weekly (ISO weeks end on
        // Sunday): days 59, 52, 45; monthly: March (59) and February's newest (58).
        assert_eq!(kept, vec![45, 52, 53, 54, 55, 56, 57, 58, 59]);
        assert_eq!(d[59], vec!["last", "daily", "weekly", "monthly"]);
        assert_eq!(d[58], vec!["last", "daily", "monthly"]);
        assert_eq!(d[45], vec!["weekly"]);
    }
}
