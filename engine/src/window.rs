//! Event-time windows in SQL: `tumble(ts, width)` and `hop(ts, slide, width)`, as Spark's
//! `window()` and Arroyo's and Flink's `TUMBLE`/`HOP` write them.
//!
//! A window is a struct `{start, end}` of two timestamps of the event-time column's type (unit and
//! time zone), `start` inclusive and `end` exclusive, aligned on the Unix epoch (a 1-minute window
//! starts on a whole minute). Group by it; a query reads its bounds with `w['start']` and
//! `w['end']`:
//! ```sql
//! SELECT symbol, w['start'] AS window_start, w['end'] AS window_end, count(*) AS trades
//! FROM (SELECT symbol, tumble(trade_time, INTERVAL '1 minute') AS w FROM trades)
//! GROUP BY symbol, w
//! ```
//! `hop` returns the list of every window holding the time, oldest first; `unnest` it to group by
//! each (`SELECT unnest(hop(trade_time, INTERVAL '1 minute', INTERVAL '5 minutes')) AS w ...`).
//!
//! Widths and slides are literal intervals of days, hours, minutes, seconds or smaller (not months:
//! their length varies). A null time has a null window. The stateful aggregation
//! ([`crate::stateful`]) recognises the window among an aggregation's keys by this struct's shape and
//! closes it when the watermark passes its `end`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray, StructArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{
    DataType, Field, Fields, Int64Type, IntervalMonthDayNano, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

/// The window struct's field names.
pub const START: &str = "start";
/// See [`START`].
pub const END: &str = "end";

/// Registers `tumble` and `hop` in `session`.
pub fn register(session: &SessionContext) {
    session.register_udf(ScalarUDF::new_from_impl(WindowFunction::new(
        WindowKind::Tumble,
    )));
    session.register_udf(ScalarUDF::new_from_impl(WindowFunction::new(
        WindowKind::Hop,
    )));
}

/// The window struct for timestamps of type `ts`.
pub fn window_type(ts: &DataType) -> DataType {
    DataType::Struct(window_fields(ts))
}

fn window_fields(ts: &DataType) -> Fields {
    Fields::from(vec![
        Field::new(START, ts.clone(), false),
        Field::new(END, ts.clone(), false),
    ])
}

/// Whether `t` is a window struct ([`window_type`] of some timestamp type).
pub fn is_window(t: &DataType) -> bool {
    match t {
        DataType::Struct(fields) => {
            fields.len() == 2
                && fields[0].name() == START
                && fields[1].name() == END
                && matches!(fields[0].data_type(), DataType::Timestamp(..))
                && fields[0].data_type() == fields[1].data_type()
        }
        _ => false,
    }
}

/// The `end` of each window of a window struct array, in nanoseconds since the epoch (null where
/// the window is null).
pub fn window_ends_nanos(windows: &StructArray) -> Result<PrimitiveArray<Int64Type>> {
    timestamps_as_nanos(windows.column(1).as_ref())
}

/// A timestamp array of any unit as nanoseconds since the epoch.
pub fn timestamps_as_nanos(array: &dyn Array) -> Result<PrimitiveArray<Int64Type>> {
    let per_unit = match array.data_type() {
        DataType::Timestamp(unit, _) => nanos_per(*unit),
        other => return exec_err!("expected a timestamp, found {other}"),
    };
    let raw = arrow::compute::cast(array, &DataType::Int64)?;
    let raw = raw.as_primitive::<Int64Type>();
    Ok(raw.try_unary::<_, Int64Type, _>(|v| {
        v.checked_mul(per_unit).ok_or_else(|| {
            arrow::error::ArrowError::ComputeError(
                "a timestamp is out of the range of nanosecond timestamps (1677–2262)".into(),
            )
        })
    })?)
}

fn nanos_per(unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    }
}

/// A literal interval argument as a length in the time unit `unit`.
fn interval_arg(name: &str, what: &str, arg: &ColumnarValue, unit: TimeUnit) -> Result<i64> {
    let ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano {
        months,
        days,
        nanoseconds,
    }))) = arg
    else {
        return exec_err!(
            "{name}: the {what} must be a literal interval, such as INTERVAL '1 minute'"
        );
    };
    if *months != 0 {
        return exec_err!(
            "{name}: the {what} cannot hold months or years (their length varies); use days"
        );
    }
    let nanos = i128::from(*days) * 86_400_000_000_000 + i128::from(*nanoseconds);
    let per = i128::from(nanos_per(unit));
    if nanos <= 0 || nanos % per != 0 {
        return exec_err!(
            "{name}: the {what} must be positive and a whole number of the time column's unit ({unit:?})"
        );
    }
    i64::try_from(nanos / per).or_else(|_| exec_err!("{name}: the {what} is too long"))
}

fn check_args(name: &str, args: &[DataType], intervals: usize) -> Result<DataType> {
    if args.len() != 1 + intervals {
        return plan_err!(
            "{name} takes a timestamp column and {intervals} interval(s), not {} arguments",
            args.len()
        );
    }
    if !matches!(args[0], DataType::Timestamp(..)) {
        return plan_err!(
            "{name}: the first argument must be a timestamp (the event-time column), not {}",
            args[0]
        );
    }
    for t in &args[1..] {
        if !matches!(t, DataType::Interval(_)) {
            return plan_err!("{name}: widths and slides must be intervals, not {t}");
        }
    }
    Ok(args[0].clone())
}

/// The times as raw values of their unit (`i64`), whatever the timestamp unit.
fn raw_times(array: &ArrayRef) -> Result<PrimitiveArray<Int64Type>> {
    Ok(arrow::compute::cast(array, &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .clone())
}

/// Raw values of a timestamp unit back into a timestamp array of type `ts`.
fn to_timestamps(values: PrimitiveArray<Int64Type>, ts: &DataType) -> Result<ArrayRef> {
    let DataType::Timestamp(unit, tz) = ts else {
        return exec_err!("expected a timestamp type, found {ts}");
    };
    let array: ArrayRef = match unit {
        TimeUnit::Second => Arc::new(values.reinterpret_cast::<TimestampSecondType>()),
        TimeUnit::Millisecond => Arc::new(values.reinterpret_cast::<TimestampMillisecondType>()),
        TimeUnit::Microsecond => Arc::new(values.reinterpret_cast::<TimestampMicrosecondType>()),
        TimeUnit::Nanosecond => Arc::new(values.reinterpret_cast::<TimestampNanosecondType>()),
    };
    Ok(arrow::compute::cast(
        &array,
        &DataType::Timestamp(*unit, tz.clone()),
    )?)
}

/// The start of the `width`-long window (aligned on the epoch) that holds `t`.
fn window_start(t: i64, width: i64) -> i64 {
    t - t.rem_euclid(width)
}

/// The window functions: `tumble(ts, width)`, the fixed, non-overlapping window of `width`
/// holding `ts`; `hop(ts, slide, width)`, every window of `width`, one starting each `slide`,
/// that holds `ts`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowFunction {
    kind: WindowKind,
    signature: Signature,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum WindowKind {
    Tumble,
    Hop,
}

impl WindowKind {
    /// The interval arguments after the timestamp: `width`, or `slide` and `width`.
    fn intervals(self) -> usize {
        match self {
            WindowKind::Tumble => 1,
            WindowKind::Hop => 2,
        }
    }
}

impl WindowFunction {
    fn new(kind: WindowKind) -> Self {
        Self {
            kind,
            signature: Signature::any(1 + kind.intervals(), Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for WindowFunction {
    fn name(&self) -> &str {
        match self.kind {
            WindowKind::Tumble => "tumble",
            WindowKind::Hop => "hop",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        let ts = check_args(self.name(), args, self.kind.intervals())?;
        Ok(match self.kind {
            WindowKind::Tumble => window_type(&ts),
            WindowKind::Hop => DataType::List(Arc::new(Field::new("item", window_type(&ts), true))),
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match self.kind {
            WindowKind::Tumble => tumble(args),
            WindowKind::Hop => hop(args),
        }
    }
}

/// `tumble(ts, width)` over a batch: one `{start, end}` struct per row.
fn tumble(args: ScalarFunctionArgs) -> Result<ColumnarValue> {
    let ts = args.arg_fields[0].data_type().clone();
    let DataType::Timestamp(unit, _) = &ts else {
        return exec_err!("tumble: the first argument must be a timestamp");
    };
    let width = interval_arg("tumble", "width", &args.args[1], *unit)?;
    let times = args.args[0].to_array(args.number_rows)?;
    let raw = raw_times(&times)?;
    // The children hold a value under a null window too (the struct's fields are not
    // nullable); only the struct's own null mask says the window is null.
    let starts = PrimitiveArray::<Int64Type>::new(
        raw.values()
            .iter()
            .map(|&t| window_start(t, width))
            .collect(),
        None,
    );
    let ends = starts.try_unary::<_, Int64Type, _>(|s| {
        s.checked_add(width).ok_or_else(|| {
            arrow::error::ArrowError::ComputeError(
                "tumble: a window ends after the largest timestamp".into(),
            )
        })
    })?;
    let nulls: Option<NullBuffer> = raw.nulls().cloned();
    let windows = StructArray::try_new(
        window_fields(&ts),
        vec![to_timestamps(starts, &ts)?, to_timestamps(ends, &ts)?],
        nulls,
    )?;
    Ok(ColumnarValue::Array(Arc::new(windows)))
}

/// `hop(ts, slide, width)` over a batch: a list of `{start, end}` structs per row.
fn hop(args: ScalarFunctionArgs) -> Result<ColumnarValue> {
    let ts = args.arg_fields[0].data_type().clone();
    let DataType::Timestamp(unit, _) = &ts else {
        return exec_err!("hop: the first argument must be a timestamp");
    };
    let slide = interval_arg("hop", "slide", &args.args[1], *unit)?;
    let width = interval_arg("hop", "width", &args.args[2], *unit)?;
    if width < slide {
        return exec_err!(
            "hop: the width must be at least the slide (shorter windows would leave gaps)"
        );
    }
    let times = args.args[0].to_array(args.number_rows)?;
    let raw = raw_times(&times)?;
    // Window bounds as raw values of the column's unit, then typed as the column.
    let (mut starts, mut ends) = (Vec::new(), Vec::new());
    let mut offsets = Vec::with_capacity(raw.len() + 1);
    offsets.push(0i32);
    for t in raw.iter() {
        if let Some(t) = t {
            // The latest window holding t starts at its slide boundary; the earliest is the
            // furthest one a whole number of slides before that still ends after t.
            let latest = window_start(t, slide);
            let before = (latest + width - t - 1) / slide;
            let mut start = latest - before * slide;
            while start <= latest {
                let Some(end) = start.checked_add(width) else {
                    return exec_err!("hop: a window ends after the largest timestamp");
                };
                starts.push(start);
                ends.push(end);
                start += slide;
            }
        }
        let Ok(offset) = i32::try_from(starts.len()) else {
            return exec_err!("hop: too many windows in one batch");
        };
        offsets.push(offset);
    }
    let windows = StructArray::try_new(
        window_fields(&ts),
        vec![
            to_timestamps(PrimitiveArray::<Int64Type>::from(starts), &ts)?,
            to_timestamps(PrimitiveArray::<Int64Type>::from(ends), &ts)?,
        ],
        None,
    )?;
    let list = arrow::array::ListArray::try_new(
        Arc::new(Field::new("item", window_type(&ts), true)),
        arrow::buffer::OffsetBuffer::new(offsets.into()),
        Arc::new(windows),
        raw.nulls().cloned(),
    )?;
    Ok(ColumnarValue::Array(Arc::new(list)))
}

#[cfg(test)]
mod tests {
    use arrow::util::pretty::pretty_format_batches;
    use datafusion::prelude::SessionContext;

    use super::*;

    async fn run(sql: &str) -> String {
        let ctx = SessionContext::new();
        register(&ctx);
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        pretty_format_batches(&batches).unwrap().to_string()
    }

    #[tokio::test]
    async fn tumble_aligns_windows_on_the_epoch_and_keeps_the_columns_type() {
        let out = run("SELECT t, tumble(t, INTERVAL '1 minute') AS w, \
             tumble(t, INTERVAL '1 minute')['end'] AS e, arrow_typeof(tumble(t, INTERVAL '1 minute')) AS ty \
             FROM (VALUES (TIMESTAMP '2026-11-30T10:00:59.999999Z'), (TIMESTAMP '1969-12-31T23:59:30Z'), (NULL)) AS v(t)")
            .await;
        assert!(
            out.contains("{start: 2026-11-30T10:00:00, end: 2026-11-30T10:01:00}"),
            "{out}"
        );
        // Before the epoch, the window still starts on the whole minute below.
        assert!(
            out.contains("{start: 1969-12-31T23:59:00, end: 1970-01-01T00:00:00}"),
            "{out}"
        );
        assert!(out.contains("| 2026-11-30T10:01:00"), "{out}");
        assert!(
            out.contains("Struct(\"start\": non-null Timestamp(ns)"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn hop_lists_every_window_that_holds_the_time() {
        let out = run(
            "SELECT unnest(hop(t, INTERVAL '1 minute', INTERVAL '3 minutes')) AS w \
             FROM (VALUES (TIMESTAMP '2026-11-30T10:02:30Z')) AS v(t)",
        )
        .await;
        for w in [
            "{start: 2026-11-30T10:00:00, end: 2026-11-30T10:03:00}",
            "{start: 2026-11-30T10:01:00, end: 2026-11-30T10:04:00}",
            "{start: 2026-11-30T10:02:00, end: 2026-11-30T10:05:00}",
        ] {
            assert!(out.contains(w), "{w} missing from\n{out}");
        }
        assert_eq!(out.matches("start:").count(), 3, "{out}");
    }

    #[tokio::test]
    async fn months_and_non_literal_widths_are_refused_with_the_reason() {
        let ctx = SessionContext::new();
        register(&ctx);
        let err = ctx
            .sql("SELECT tumble(TIMESTAMP '2026-01-01T00:00:00Z', INTERVAL '1 month')")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cannot hold months"), "{err}");
        let err = ctx
            .sql("SELECT tumble(1, INTERVAL '1 minute')")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("must be a timestamp"), "{err}");
    }
}
