//! CQL → Arrow for the query table: rows as the driver returns them, into a `RecordBatch` of
//! the columns' exact Arrow types (the transform's output types, the inverse of `types.rs`).
//! A value that does not fit its Arrow type exactly is an error naming the column and the value:
//! a decimal with more digits or a finer scale than the column declares, a timestamp finer than
//! the column's unit. Nothing is rounded.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array,
    Int8Array, Int16Array, Int32Array, Int64Array, LargeBinaryArray, LargeStringArray,
    PrimitiveArray, RecordBatch, RecordBatchOptions, StringArray, StringViewArray,
};
use arrow::datatypes::{
    DataType, Field, SchemaRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use scylla::value::{CqlDecimal, CqlValue, Row};

use super::types::quote;

/// `rows` (their cells in `schema`'s column order) as one batch of `schema`. An error names
/// the column and says what did not fit.
pub fn batch(schema: &SchemaRef, rows: Vec<Row>) -> Result<RecordBatch, String> {
    let count = rows.len();
    let mut cells: Vec<Vec<Option<CqlValue>>> = (0..schema.fields().len())
        .map(|_| Vec::with_capacity(count))
        .collect();
    for row in rows {
        if row.columns.len() != cells.len() {
            return Err(format!(
                "a row has {} columns, the SELECT asked for {}",
                row.columns.len(),
                cells.len()
            ));
        }
        for (column, cell) in cells.iter_mut().zip(row.columns) {
            column.push(cell);
        }
    }
    let columns = schema
        .fields()
        .iter()
        .zip(cells)
        .map(|(field, cells)| {
            array(field, cells).map_err(|m| format!("column {}: {m}", quote(field.name())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // A projection without columns (`count(*)`) still carries its row count.
    let options = RecordBatchOptions::new().with_row_count(Some(count));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options).map_err(|e| e.to_string())
}

/// Every cell through `f`, nulls kept.
fn each<T>(
    cells: Vec<Option<CqlValue>>,
    f: impl Fn(CqlValue) -> Result<T, String>,
) -> Result<Vec<Option<T>>, String> {
    cells.into_iter().map(|c| c.map(&f).transpose()).collect()
}

fn unexpected(want: &str, got: &CqlValue) -> String {
    format!("expected a CQL {want}, the table holds {got:?}")
}

fn array(field: &Field, cells: Vec<Option<CqlValue>>) -> Result<ArrayRef, String> {
    let text = |v| match v {
        CqlValue::Text(s) | CqlValue::Ascii(s) => Ok(s),
        other => Err(unexpected("text", &other)),
    };
    let blob = |v| match v {
        CqlValue::Blob(b) => Ok(b),
        other => Err(unexpected("blob", &other)),
    };
    // An Arrow array of the values of one CQL variant (the CQL type's name for the error).
    macro_rules! one_variant {
        ($array:ty, $variant:ident, $cql:literal) => {
            Arc::new(<$array>::from(each(cells, |v| match v {
                CqlValue::$variant(x) => Ok(x),
                other => Err(unexpected($cql, &other)),
            })?))
        };
    }
    Ok(match field.data_type() {
        DataType::Utf8 => Arc::new(StringArray::from(each(cells, text)?)),
        DataType::LargeUtf8 => Arc::new(LargeStringArray::from(each(cells, text)?)),
        DataType::Utf8View => Arc::new(StringViewArray::from(each(cells, text)?)),
        DataType::Binary => {
            let values = each(cells, blob)?;
            Arc::new(BinaryArray::from_iter(values))
        }
        DataType::LargeBinary => {
            let values = each(cells, blob)?;
            Arc::new(LargeBinaryArray::from_iter(values))
        }
        DataType::Boolean => one_variant!(BooleanArray, Boolean, "boolean"),
        DataType::Int8 => one_variant!(Int8Array, TinyInt, "tinyint"),
        DataType::Int16 => one_variant!(Int16Array, SmallInt, "smallint"),
        DataType::Int32 => one_variant!(Int32Array, Int, "int"),
        DataType::Int64 => one_variant!(Int64Array, BigInt, "bigint"),
        DataType::Float32 => one_variant!(Float32Array, Float, "float"),
        DataType::Float64 => one_variant!(Float64Array, Double, "double"),
        DataType::Decimal128(precision, scale) => {
            let values = each(cells, |v| match v {
                CqlValue::Decimal(d) => decimal128(&d, *precision, *scale),
                other => Err(unexpected("decimal", &other)),
            })?;
            Arc::new(
                Decimal128Array::from(values)
                    .with_precision_and_scale(*precision, *scale)
                    .map_err(|e| e.to_string())?,
            )
        }
        DataType::Date32 => Arc::new(Date32Array::from(each(cells, |v| match v {
            // CQL counts days from 2^31 days before the epoch; every such count fits in i32.
            CqlValue::Date(d) => Ok((i64::from(d.0) - (1i64 << 31)) as i32),
            other => Err(unexpected("date", &other)),
        })?)),
        DataType::Timestamp(unit, zone) => {
            let values = each(cells, |v| match v {
                CqlValue::Timestamp(t) => timestamp(t.0, *unit),
                other => Err(unexpected("timestamp", &other)),
            })?;
            let zone = zone.clone();
            match unit {
                TimeUnit::Second => Arc::new(
                    PrimitiveArray::<TimestampSecondType>::from(values).with_timezone_opt(zone),
                ),
                TimeUnit::Millisecond => Arc::new(
                    PrimitiveArray::<TimestampMillisecondType>::from(values)
                        .with_timezone_opt(zone),
                ),
                TimeUnit::Microsecond => Arc::new(
                    PrimitiveArray::<TimestampMicrosecondType>::from(values)
                        .with_timezone_opt(zone),
                ),
                TimeUnit::Nanosecond => Arc::new(
                    PrimitiveArray::<TimestampNanosecondType>::from(values).with_timezone_opt(zone),
                ),
            }
        }
        other => return Err(format!("has Arrow type {other}, which has no CQL mapping")),
    })
}

/// CQL milliseconds in `unit`; a second column refuses a value that is not a whole second.
fn timestamp(millis: i64, unit: TimeUnit) -> Result<i64, String> {
    let scaled = match unit {
        TimeUnit::Second if millis % 1_000 != 0 => {
            return Err(format!(
                "timestamp {millis} ms is not a whole second, as the column's unit is"
            ));
        }
        TimeUnit::Second => Some(millis / 1_000),
        TimeUnit::Millisecond => Some(millis),
        TimeUnit::Microsecond => millis.checked_mul(1_000),
        TimeUnit::Nanosecond => millis.checked_mul(1_000_000),
    };
    scaled.ok_or_else(|| format!("timestamp {millis} ms is out of range in {unit:?}"))
}

/// A CQL decimal as the unscaled value of a `Decimal128(precision, scale)`, exactly: a value
/// with a finer scale is accepted only when the extra digits are zeros, and one with more than
/// `precision` digits is refused.
pub fn decimal128(d: &CqlDecimal, precision: u8, scale: i8) -> Result<i128, String> {
    let (bytes, exponent) = d.as_signed_be_bytes_slice_and_exponent();
    let shown = || show_decimal(bytes, exponent);
    if bytes.len() > 16 {
        return Err(format!(
            "decimal {} has more than {precision} digits",
            shown()
        ));
    }
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut unscaled: i128 = if negative { -1 } else { 0 };
    for b in bytes {
        unscaled = (unscaled << 8) | i128::from(*b);
    }
    let target = i32::from(scale);
    let value = if exponent <= target {
        u32::try_from(target - exponent)
            .ok()
            .and_then(|n| 10i128.checked_pow(n))
            .and_then(|f| unscaled.checked_mul(f))
    } else {
        let divisor = u32::try_from(exponent - target)
            .ok()
            .and_then(|n| 10i128.checked_pow(n));
        match divisor {
            Some(d) if unscaled % d == 0 => Some(unscaled / d),
            // More than 38 extra digits of scale: only zero has them all zero.
            None if unscaled == 0 => Some(0),
            _ => {
                return Err(format!(
                    "decimal {} has more than {scale} digits after the point; it would have to \
                     be rounded to fit the column's Decimal128({precision}, {scale})",
                    shown()
                ));
            }
        }
    };
    let limit = 10i128.checked_pow(u32::from(precision));
    match (value, limit) {
        (Some(v), Some(limit)) if v.unsigned_abs() < limit.unsigned_abs() => Ok(v),
        (Some(v), None) => Ok(v),
        _ => Err(format!(
            "decimal {} does not fit the column's Decimal128({precision}, {scale})",
            shown()
        )),
    }
}

/// The decimal as text, for errors: its unscaled value (any length) and scale.
fn show_decimal(bytes: &[u8], exponent: i32) -> String {
    if bytes.len() <= 16 {
        let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
        let mut v: i128 = if negative { -1 } else { 0 };
        for b in bytes {
            v = (v << 8) | i128::from(*b);
        }
        format!("{v}E{}", -exponent)
    } else {
        format!("of {} bytes (scale {exponent})", bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::Schema;
    use scylla::value::{CqlDate, CqlTimestamp};

    use super::*;
    use crate::cassandra::types::minimal_twos_complement;

    fn cql(unscaled: i128, scale: i32) -> CqlDecimal {
        CqlDecimal::from_signed_be_bytes_and_exponent(
            minimal_twos_complement(&unscaled.to_be_bytes()).to_vec(),
            scale,
        )
    }

    #[test]
    fn decimals_keep_the_declared_scale_exactly() {
        assert_eq!(decimal128(&cql(-12_345, 2), 38, 10), Ok(-1_234_500_000_000));
        assert_eq!(decimal128(&cql(1_500_000, 6), 10, 1), Ok(15));
        assert_eq!(decimal128(&cql(7, -3), 10, 2), Ok(700_000));
        let err = decimal128(&cql(1_234_567, 6), 38, 4).unwrap_err();
        assert!(err.contains("would have to be rounded"), "{err}");
        let err = decimal128(&cql(123_456, 0), 5, 0).unwrap_err();
        assert!(
            err.contains("does not fit the column's Decimal128(5, 0)"),
            "{err}"
        );
        assert_eq!(decimal128(&cql(99_999, 0), 5, 0), Ok(99_999));
        let big = CqlDecimal::from_signed_be_bytes_and_exponent(vec![1; 17], 0);
        assert!(
            decimal128(&big, 38, 0)
                .unwrap_err()
                .contains("more than 38 digits")
        );
        assert_eq!(
            decimal128(&cql(i128::MIN / 10, 10), 38, 10),
            Ok(i128::MIN / 10)
        );
    }

    #[test]
    fn builds_a_batch_of_the_exact_types_and_names_a_bad_column() {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let schema = Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8View, true),
            Field::new("trade_time", ts, true),
            Field::new("trade_date", DataType::Date32, true),
            Field::new("profit", DataType::Decimal128(38, 10), true),
        ]));
        let rows = vec![
            Row {
                columns: vec![
                    Some(CqlValue::Text("BTC-USD".into())),
                    Some(CqlValue::Timestamp(CqlTimestamp(1_795_000_000_123))),
                    Some(CqlValue::Date(CqlDate((1 << 31) + 20_415))),
                    Some(CqlValue::Decimal(cql(-5, 1))),
                ],
            },
            Row {
                columns: vec![None, None, None, None],
            },
        ];
        let batch = batch(&schema, rows).unwrap();
        let shown = arrow::util::pretty::pretty_format_batches(&[batch])
            .unwrap()
            .to_string();
        assert_eq!(
            shown,
            "+---------+--------------------------+------------+---------------+\n\
             | symbol  | trade_time               | trade_date | profit        |\n\
             +---------+--------------------------+------------+---------------+\n\
             | BTC-USD | 2026-11-18T11:06:40.123Z | 2025-11-23 | -0.5000000000 |\n\
             |         |                          |            |               |\n\
             +---------+--------------------------+------------+---------------+"
        );

        let bad = vec![Row {
            columns: vec![Some(CqlValue::Int(1)), None, None, None],
        }];
        let err = super::batch(&schema, bad).unwrap_err();
        assert!(
            err.starts_with("column \"symbol\": expected a CQL text"),
            "{err}"
        );
    }

    #[test]
    fn a_projection_without_columns_keeps_the_row_count() {
        let schema = Arc::new(Schema::empty());
        let rows = (0..3).map(|_| Row { columns: vec![] }).collect();
        assert_eq!(batch(&schema, rows).unwrap().num_rows(), 3);
    }
}
