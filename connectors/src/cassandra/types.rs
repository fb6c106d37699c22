//! Arrow → CQL: the one table that decides which Arrow type becomes which CQL column type, and the
//! value conversion that follows it. Rows are serialized straight from the Arrow arrays into the
//! driver's request buffer (no per-cell `CqlValue` or `String`).

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, Decimal128Array,
    Float32Array, Float64Array, Int8Array, Int16Array, Int32Array, Int64Array, LargeBinaryArray,
    LargeStringArray, StringArray, StringViewArray,
};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use arrow::record_batch::RecordBatch;
use scylla::frame::response::result::ColumnType;
use scylla::serialize::SerializationError;
use scylla::serialize::row::{RowSerializationContext, SerializeRow};
use scylla::serialize::value::SerializeValue;
use scylla::serialize::writers::{CellWriter, RowWriter, WrittenCellProof};
use scylla::value::{CqlDate, CqlDecimalBorrowed, CqlTimestamp};

/// The CQL column types the sink writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CqlType {
    Boolean,
    TinyInt,
    SmallInt,
    Int,
    BigInt,
    Float,
    Double,
    Decimal,
    Text,
    Blob,
    Timestamp,
    Date,
}

/// The mapping, as documented in the module header of `cassandra`. Every Arrow type not listed here
/// is rejected when the sink is built, naming the column.
const ARROW_TO_CQL: &[(&str, CqlType)] = &[
    ("Boolean", CqlType::Boolean),
    ("Int8", CqlType::TinyInt),
    ("Int16", CqlType::SmallInt),
    ("Int32", CqlType::Int),
    ("Int64", CqlType::BigInt),
    ("Float32", CqlType::Float),
    ("Float64", CqlType::Double),
    ("Decimal128", CqlType::Decimal),
    ("Utf8", CqlType::Text),
    ("LargeUtf8", CqlType::Text),
    ("Utf8View", CqlType::Text),
    ("Binary", CqlType::Blob),
    ("LargeBinary", CqlType::Blob),
    ("Timestamp", CqlType::Timestamp),
    ("Date32", CqlType::Date),
];

impl CqlType {
    /// The CQL type an Arrow column of `data_type` is stored as, if the sink supports it.
    pub fn for_arrow(data_type: &DataType) -> Option<CqlType> {
        let name = match data_type {
            DataType::Boolean => "Boolean",
            DataType::Int8 => "Int8",
            DataType::Int16 => "Int16",
            DataType::Int32 => "Int32",
            DataType::Int64 => "Int64",
            DataType::Float32 => "Float32",
            DataType::Float64 => "Float64",
            DataType::Decimal128(_, _) => "Decimal128",
            DataType::Utf8 => "Utf8",
            DataType::LargeUtf8 => "LargeUtf8",
            DataType::Utf8View => "Utf8View",
            DataType::Binary => "Binary",
            DataType::LargeBinary => "LargeBinary",
            DataType::Timestamp(_, _) => "Timestamp",
            DataType::Date32 => "Date32",
            _ => return None,
        };
        ARROW_TO_CQL
            .iter()
            .find(|(arrow, _)| *arrow == name)
            .map(|(_, cql)| *cql)
    }

    /// The type's name in CQL DDL and in `system_schema.columns.type`.
    pub fn cql_name(self) -> &'static str {
        match self {
            CqlType::Boolean => "boolean",
            CqlType::TinyInt => "tinyint",
            CqlType::SmallInt => "smallint",
            CqlType::Int => "int",
            CqlType::BigInt => "bigint",
            CqlType::Float => "float",
            CqlType::Double => "double",
            CqlType::Decimal => "decimal",
            CqlType::Text => "text",
            CqlType::Blob => "blob",
            CqlType::Timestamp => "timestamp",
            CqlType::Date => "date",
        }
    }

    /// The supported Arrow types, for error messages.
    pub fn supported_arrow_types() -> String {
        ARROW_TO_CQL
            .iter()
            .map(|(arrow, cql)| format!("{arrow} ({})", cql.cql_name()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Quotes a CQL identifier so that any name, mixed case included, means exactly itself.
pub fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// One Arrow column, downcast once per batch.
enum Column<'a> {
    Boolean(&'a BooleanArray),
    Int8(&'a Int8Array),
    Int16(&'a Int16Array),
    Int32(&'a Int32Array),
    Int64(&'a Int64Array),
    Float32(&'a Float32Array),
    Float64(&'a Float64Array),
    Decimal(&'a Decimal128Array, i32),
    Utf8(&'a StringArray),
    LargeUtf8(&'a LargeStringArray),
    Utf8View(&'a StringViewArray),
    Binary(&'a BinaryArray),
    LargeBinary(&'a LargeBinaryArray),
    /// Any timestamp unit (all are i64 underneath), stored as CQL milliseconds.
    Timestamp(&'a dyn Array, &'a [i64], TimeUnit),
    Date32(&'a Date32Array),
}

impl<'a> Column<'a> {
    fn new(array: &'a ArrayRef) -> Option<Self> {
        Some(match array.data_type() {
            DataType::Boolean => Column::Boolean(array.as_boolean()),
            DataType::Int8 => Column::Int8(array.as_primitive::<Int8Type>()),
            DataType::Int16 => Column::Int16(array.as_primitive::<Int16Type>()),
            DataType::Int32 => Column::Int32(array.as_primitive::<Int32Type>()),
            DataType::Int64 => Column::Int64(array.as_primitive::<Int64Type>()),
            DataType::Float32 => Column::Float32(array.as_primitive::<Float32Type>()),
            DataType::Float64 => Column::Float64(array.as_primitive::<Float64Type>()),
            DataType::Decimal128(_, scale) => {
                Column::Decimal(array.as_primitive::<Decimal128Type>(), i32::from(*scale))
            }
            DataType::Utf8 => Column::Utf8(array.as_string::<i32>()),
            DataType::LargeUtf8 => Column::LargeUtf8(array.as_string::<i64>()),
            DataType::Utf8View => Column::Utf8View(array.as_string_view()),
            DataType::Binary => Column::Binary(array.as_binary::<i32>()),
            DataType::LargeBinary => Column::LargeBinary(array.as_binary::<i64>()),
            DataType::Timestamp(unit, _) => {
                let values = match unit {
                    TimeUnit::Second => array.as_primitive::<TimestampSecondType>().values(),
                    TimeUnit::Millisecond => {
                        array.as_primitive::<TimestampMillisecondType>().values()
                    }
                    TimeUnit::Microsecond => {
                        array.as_primitive::<TimestampMicrosecondType>().values()
                    }
                    TimeUnit::Nanosecond => {
                        array.as_primitive::<TimestampNanosecondType>().values()
                    }
                };
                Column::Timestamp(array.as_ref(), values, *unit)
            }
            DataType::Date32 => Column::Date32(array.as_primitive::<Date32Type>()),
            _ => return None,
        })
    }

    fn is_null(&self, row: usize) -> bool {
        match self {
            Column::Boolean(a) => a.is_null(row),
            Column::Int8(a) => a.is_null(row),
            Column::Int16(a) => a.is_null(row),
            Column::Int32(a) => a.is_null(row),
            Column::Int64(a) => a.is_null(row),
            Column::Float32(a) => a.is_null(row),
            Column::Float64(a) => a.is_null(row),
            Column::Decimal(a, _) => a.is_null(row),
            Column::Utf8(a) => a.is_null(row),
            Column::LargeUtf8(a) => a.is_null(row),
            Column::Utf8View(a) => a.is_null(row),
            Column::Binary(a) => a.is_null(row),
            Column::LargeBinary(a) => a.is_null(row),
            Column::Timestamp(a, _, _) => a.is_null(row),
            Column::Date32(a) => a.is_null(row),
        }
    }

    /// Writes the cell; a null becomes "unset", so it writes no tombstone.
    fn serialize<'b>(
        &self,
        row: usize,
        typ: &ColumnType,
        writer: CellWriter<'b>,
    ) -> Result<WrittenCellProof<'b>, SerializationError> {
        if self.is_null(row) {
            return Ok(writer.set_unset());
        }
        match self {
            Column::Boolean(a) => a.value(row).serialize(typ, writer),
            Column::Int8(a) => a.value(row).serialize(typ, writer),
            Column::Int16(a) => a.value(row).serialize(typ, writer),
            Column::Int32(a) => a.value(row).serialize(typ, writer),
            Column::Int64(a) => a.value(row).serialize(typ, writer),
            Column::Float32(a) => a.value(row).serialize(typ, writer),
            Column::Float64(a) => a.value(row).serialize(typ, writer),
            Column::Decimal(a, scale) => {
                let bytes = a.value(row).to_be_bytes();
                CqlDecimalBorrowed::from_signed_be_bytes_slice_and_exponent(
                    minimal_twos_complement(&bytes),
                    *scale,
                )
                .serialize(typ, writer)
            }
            Column::Utf8(a) => a.value(row).serialize(typ, writer),
            Column::LargeUtf8(a) => a.value(row).serialize(typ, writer),
            Column::Utf8View(a) => a.value(row).serialize(typ, writer),
            Column::Binary(a) => a.value(row).serialize(typ, writer),
            Column::LargeBinary(a) => a.value(row).serialize(typ, writer),
            Column::Timestamp(_, values, unit) => {
                CqlTimestamp(timestamp_millis(values[row], *unit)).serialize(typ, writer)
            }
            Column::Date32(a) => CqlDate(date32_to_cql(a.value(row))).serialize(typ, writer),
        }
    }
}

/// The shortest big-endian two's complement form of a value (CQL `varint`'s encoding).
pub fn minimal_twos_complement(bytes: &[u8]) -> &[u8] {
    let mut start = 0;
    while start + 1 < bytes.len() {
        let (b, next) = (bytes[start], bytes[start + 1]);
        let redundant = (b == 0x00 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0);
        if !redundant {
            break;
        }
        start += 1;
    }
    &bytes[start..]
}

/// CQL `timestamp` is milliseconds since the epoch: finer units are floored to the millisecond
/// (so 1.9999 ms stays in the same millisecond, before and after the epoch alike).
pub fn timestamp_millis(value: i64, unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => value.saturating_mul(1_000),
        TimeUnit::Millisecond => value,
        TimeUnit::Microsecond => value.div_euclid(1_000),
        TimeUnit::Nanosecond => value.div_euclid(1_000_000),
    }
}

/// CQL `date` counts days from 2^31 days before the epoch, unsigned.
pub fn date32_to_cql(days_since_epoch: i32) -> u32 {
    (i64::from(days_since_epoch) + (1i64 << 31)) as u32
}

/// One batch's rows, ready to be bound to the INSERT (whose columns are the batch's, in order).
pub struct BatchRows<'a> {
    columns: Vec<Column<'a>>,
    rows: usize,
}

impl<'a> BatchRows<'a> {
    /// Downcasts every column once. Fails (naming the column) only if the batch does not have the
    /// schema the sink was built for, which the runtime guarantees.
    pub fn new(batch: &'a RecordBatch) -> Result<Self, String> {
        let columns = batch
            .columns()
            .iter()
            .zip(batch.schema_ref().fields())
            .map(|(array, field)| {
                Column::new(array).ok_or_else(|| {
                    format!(
                        "column {} has Arrow type {}, which has no CQL mapping",
                        field.name(),
                        field.data_type()
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            columns,
            rows: batch.num_rows(),
        })
    }

    /// How many rows the batch has.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether row `row` has a null in column `column`.
    pub fn is_null(&self, column: usize, row: usize) -> bool {
        self.columns[column].is_null(row)
    }

    /// Row `row`, bindable to the prepared INSERT.
    pub fn row(&self, row: usize) -> RowRef<'_, 'a> {
        RowRef { batch: self, row }
    }
}

/// A borrowed row of a [`BatchRows`].
#[derive(Clone, Copy)]
pub struct RowRef<'r, 'a> {
    batch: &'r BatchRows<'a>,
    row: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("the INSERT has {statement} bind markers but the row has {row} columns")]
struct ColumnCountMismatch {
    statement: usize,
    row: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("column {name}: {source}")]
struct ColumnError {
    name: String,
    #[source]
    source: SerializationError,
}

impl SerializeRow for RowRef<'_, '_> {
    fn serialize(
        &self,
        ctx: &RowSerializationContext<'_>,
        writer: &mut RowWriter,
    ) -> Result<(), SerializationError> {
        let specs = ctx.columns();
        if specs.len() != self.batch.columns.len() {
            return Err(SerializationError::new(ColumnCountMismatch {
                statement: specs.len(),
                row: self.batch.columns.len(),
            }));
        }
        for (spec, column) in specs.iter().zip(&self.batch.columns) {
            column
                .serialize(self.row, spec.typ(), writer.make_cell_writer())
                .map_err(|source| {
                    SerializationError::new(ColumnError {
                        name: spec.name().to_owned(),
                        source,
                    })
                })?;
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.batch.columns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_every_listed_arrow_type() {
        let cases = [
            (DataType::Boolean, "boolean"),
            (DataType::Int8, "tinyint"),
            (DataType::Int16, "smallint"),
            (DataType::Int32, "int"),
            (DataType::Int64, "bigint"),
            (DataType::Float32, "float"),
            (DataType::Float64, "double"),
            (DataType::Decimal128(38, 10), "decimal"),
            (DataType::Utf8, "text"),
            (DataType::LargeUtf8, "text"),
            (DataType::Utf8View, "text"),
            (DataType::Binary, "blob"),
            (DataType::LargeBinary, "blob"),
            (
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                "timestamp",
            ),
            (DataType::Timestamp(TimeUnit::Nanosecond, None), "timestamp"),
            (DataType::Date32, "date"),
        ];
        for (arrow, cql) in cases {
            assert_eq!(
                CqlType::for_arrow(&arrow).map(CqlType::cql_name),
                Some(cql),
                "{arrow}"
            );
        }
        assert_eq!(CqlType::for_arrow(&DataType::UInt64), None);
        assert_eq!(CqlType::for_arrow(&DataType::Date64), None);
    }

    #[test]
    fn trims_decimal_bytes_to_minimal_twos_complement() {
        let cases: [(i128, &[u8]); 7] = [
            (0, &[0x00]),
            (1, &[0x01]),
            (127, &[0x7f]),
            (128, &[0x00, 0x80]),
            (-1, &[0xff]),
            (-128, &[0x80]),
            (-129, &[0xff, 0x7f]),
        ];
        for (value, expected) in cases {
            assert_eq!(
                minimal_twos_complement(&value.to_be_bytes()),
                expected,
                "{value}"
            );
        }
        let max = i128::MAX.to_be_bytes();
        assert_eq!(minimal_twos_complement(&max), &max[..]);
    }

    #[test]
    fn floors_timestamps_to_milliseconds() {
        assert_eq!(timestamp_millis(1_999, TimeUnit::Microsecond), 1);
        assert_eq!(timestamp_millis(-1, TimeUnit::Microsecond), -1);
        assert_eq!(timestamp_millis(-1_000, TimeUnit::Microsecond), -1);
        assert_eq!(timestamp_millis(2_500_000, TimeUnit::Nanosecond), 2);
        assert_eq!(timestamp_millis(3, TimeUnit::Second), 3_000);
        assert_eq!(timestamp_millis(7, TimeUnit::Millisecond), 7);
    }

    #[test]
    fn offsets_dates_by_two_to_the_31() {
        assert_eq!(date32_to_cql(0), 1 << 31);
        assert_eq!(date32_to_cql(-1), (1 << 31) - 1);
        assert_eq!(date32_to_cql(20_000), (1 << 31) + 20_000);
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote("Trade Time"), "\"Trade Time\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }
}
