//! The pipeline's side of resuming a killed backup (format-spec §12): which chunks are
//! still to do once the snapshot writer (`repo::snapshot_writer`) has adopted a killed
//! run's checkpoint and position.

/// The runs still to do from chunk `start` on.
pub(super) fn runs_from(runs: Vec<(u64, u64, bool)>, start: u64) -> Vec<(u64, u64, bool)> {
    runs.into_iter()
        .filter(|r| r.1 > start)
        .map(|(a, b, zero)| (a.max(start), b, zero))
        .collect()
}

/// Bytes the pipeline will visit (and advance the progress by) for `runs`.
pub(super) fn bytes_to_read(runs: &[(u64, u64, bool)], cs: u64, size: u64, skip_zero: bool) -> u64 {
    runs.iter()
        .filter(|r| !r.2 || !skip_zero)
        .map(|r| ((r.1 * cs).min(size)).saturating_sub(r.0 * cs))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_from_cuts_at_the_position() {
        let runs = vec![(0, 4, false), (4, 8, true), (8, 10, false)];
        assert_eq!(runs_from(runs.clone(), 0), runs);
        assert_eq!(
            runs_from(runs.clone(), 5),
            vec![(5, 8, true), (8, 10, false)]
        );
        assert_eq!(runs_from(runs.clone(), 10), vec![]);
        // The last chunk may be short: bytes stop at the size.
        assert_eq!(bytes_to_read(&runs, 10, 95, false), 95);
        assert_eq!(bytes_to_read(&runs, 10, 95, true), 55);
    }
}
