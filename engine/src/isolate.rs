//! Finds the rows of a batch that make a transform fail, so that one bad row costs a dead letter
//! instead of stopping the stream (a "poison pill": the batch is never committed, every restart
//! replays it and fails again). It knows nothing of SQL: it runs a caller's closure over ranges of
//! row positions.
//!
//! The failed range is split in halves and each half run again, down to single rows. One bad row
//! in `n` costs `2·log2(n)` extra runs; a batch whose every row fails costs `2·(n - 1)`. A range
//! that fails while both its halves succeed cannot be pinned on any row (the error comes from
//! rows together, e.g. an aggregate that overflows only over all of them): that is reported as
//! [`Isolation::Unexplained`], never guessed at.

use std::ops::Range;

/// What bisecting a failed batch found.
#[derive(Debug)]
pub(crate) enum Isolation<E> {
    /// The rows that fail alone, ascending, each with its own error. Every other row ran
    /// without error in some range that held no failing row.
    Rows(Vec<(usize, E)>),
    /// `range` fails as a whole with `error` though each of its halves succeeds alone.
    Unexplained {
        /// The rows that fail together.
        range: Range<usize>,
        /// Their error.
        error: E,
    },
    /// A run failed with an error that is not about the rows (`is_row_error` said no): stop.
    Fatal(E),
}

/// Bisects `0..len`, which failed as a whole with `error`, with `run` (which runs the transform
/// over a range of rows). `is_row_error` tells errors about the rows' values from the others.
pub(crate) async fn isolate<E>(
    len: usize,
    error: E,
    mut run: impl AsyncFnMut(Range<usize>) -> Result<(), E>,
    is_row_error: impl Fn(&E) -> bool,
) -> Isolation<E> {
    let mut failing = Vec::new();
    // Failed ranges still to split, the leftmost on top, so rows come out ascending.
    let mut stack = vec![(0..len, error)];
    while let Some((range, error)) = stack.pop() {
        if range.len() <= 1 {
            if !range.is_empty() {
                failing.push((range.start, error));
            }
            continue;
        }
        let mid = range.start + range.len() / 2;
        let halves = [
            (range.start..mid, run(range.start..mid).await),
            (mid..range.end, run(mid..range.end).await),
        ];
        if halves.iter().all(|(_, result)| result.is_ok()) {
            return Isolation::Unexplained { range, error };
        }
        for (half, result) in halves.into_iter().rev() {
            if let Err(e) = result {
                if !is_row_error(&e) {
                    return Isolation::Fatal(e);
                }
                stack.push((half, e));
            }
        }
    }
    Isolation::Rows(failing)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// Bisects `len` rows where a range fails when `fails` says so; returns the outcome and how
    /// many runs it took.
    fn bisect(
        len: usize,
        fails: impl Fn(&Range<usize>) -> Option<&'static str>,
    ) -> (Isolation<String>, usize) {
        let runs = Cell::new(0);
        let first = fails(&(0..len)).expect("the whole batch fails").to_owned();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let outcome = runtime.block_on(isolate(
            len,
            first,
            async |range: Range<usize>| {
                runs.set(runs.get() + 1);
                match fails(&range) {
                    Some(e) => Err(format!("{e} in {range:?}")),
                    None => Ok(()),
                }
            },
            |e: &String| !e.starts_with("fatal"),
        ));
        (outcome, runs.get())
    }

    fn rows(outcome: Isolation<String>) -> Vec<usize> {
        match outcome {
            Isolation::Rows(rows) => rows.into_iter().map(|(row, _)| row).collect(),
            other => panic!("expected rows, got {other:?}"),
        }
    }

    #[test]
    fn finds_one_bad_row_in_logarithmic_runs() {
        let (outcome, runs) = bisect(1024, |r| r.contains(&700).then_some("overflow"));
        match &outcome {
            Isolation::Rows(rows) => {
                assert_eq!(rows.len(), 1);
                assert_eq!(rows[0].0, 700);
                assert_eq!(rows[0].1, "overflow in 700..701", "the row's own error");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(runs, 2 * 10, "two runs per level of a 1024-row batch");
    }

    #[test]
    fn finds_every_bad_row_in_order() {
        let bad = [0, 3, 4, 9, 10];
        let (outcome, _) = bisect(11, |r| bad.iter().any(|b| r.contains(b)).then_some("cast"));
        assert_eq!(rows(outcome), bad);
    }

    #[test]
    fn a_batch_whose_every_row_fails_costs_two_runs_per_row() {
        let (outcome, runs) = bisect(100, |r| (!r.is_empty()).then_some("division by zero"));
        assert_eq!(rows(outcome), (0..100).collect::<Vec<_>>());
        assert_eq!(runs, 2 * 99);
    }

    #[test]
    fn an_error_of_rows_together_is_unexplained_not_pinned_on_one() {
        // Rows 5 and 6 fail only together (think of a sum that overflows over both).
        let (outcome, _) = bisect(16, |r| {
            (r.contains(&5) && r.contains(&6)).then_some("sum overflow")
        });
        match outcome {
            Isolation::Unexplained { range, error } => {
                assert_eq!(range, 4..8);
                assert_eq!(error, "sum overflow in 4..8");
            }
            other => panic!("{other:?}"),
        }
        // Rows 0 and 15 likewise: the whole batch is the smallest range that fails.
        let (outcome, runs) = bisect(16, |r| {
            (r.contains(&0) && r.contains(&15)).then_some("sum overflow")
        });
        assert!(
            matches!(outcome, Isolation::Unexplained { range, .. } if range == (0..16)),
            "unexplained"
        );
        assert_eq!(runs, 2);
    }

    #[test]
    fn an_error_that_is_not_about_rows_stops_the_bisection() {
        let (outcome, _) = bisect(8, |r| {
            if r.contains(&2) {
                Some(if r.len() == 8 {
                    "overflow"
                } else {
                    "fatal: out of memory"
                })
            } else {
                None
            }
        });
        match outcome {
            Isolation::Fatal(e) => assert_eq!(e, "fatal: out of memory in 0..4"),
            other => panic!("{other:?}"),
        }
    }
}
