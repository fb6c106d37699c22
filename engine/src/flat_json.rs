//! A fast path for the usual shape of bus records: one flat JSON object per message whose keys and
//! strings have no escapes and whose values are strings, numbers, booleans or null. It writes each
//! value straight into its column, where arrow's JSON decoder first records every token on a tape
//! and copies every string twice.
//!
//! Anything outside that shape (an escape, a nested value, a duplicate key, a value of the wrong
//! kind, a missing required field, trailing bytes) makes it give up on that message alone, and the
//! caller decodes the messages it gave up on with arrow's decoder instead (one bad message does
//! not send its whole batch down the slow path). So the rows it does produce are exactly what the
//! arrow path makes of the same messages: decimals go through the one checked parser
//! ([`crate::decimal`]) on both paths (a decimal it refuses sends the message to the arrow path,
//! which dead-letters it), zoned timestamps through arrow's parsing function, and only the plain
//! UTC form of a timestamp has its own, checked, path.

use std::sync::Arc;

use arrow::array::timezone::Tz;
use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanArray, BooleanBuilder, Float64Builder, Int32Builder,
    Int64Builder, PrimitiveBuilder, StringBuilder, make_array,
};
use arrow::compute::filter;
use arrow::compute::kernels::cast_utils::string_to_datetime;
use arrow::datatypes::{DataType, Decimal128Type, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::decimal::{DecimalPolicy, parse_decimal};

/// How one declared column is read.
#[derive(Debug, Clone)]
enum Kind {
    Utf8,
    Int64,
    Int32,
    Float64,
    Boolean,
    Decimal(u8, i8),
    Timestamp(TimeUnit, Tz),
}

/// One column being filled.
enum Column {
    Utf8(StringBuilder),
    Int64(Int64Builder),
    Int32(Int32Builder),
    Float64(Float64Builder),
    Boolean(BooleanBuilder),
    Decimal(PrimitiveBuilder<Decimal128Type>),
    /// Timestamps of any unit, as their i64 values; typed when the batch is finished.
    Timestamp(Int64Builder),
}

impl Column {
    fn new(kind: &Kind, rows: usize) -> Self {
        match kind {
            Kind::Utf8 => Self::Utf8(StringBuilder::with_capacity(rows, rows * 16)),
            Kind::Int64 => Self::Int64(Int64Builder::with_capacity(rows)),
            Kind::Int32 => Self::Int32(Int32Builder::with_capacity(rows)),
            Kind::Float64 => Self::Float64(Float64Builder::with_capacity(rows)),
            Kind::Boolean => Self::Boolean(BooleanBuilder::with_capacity(rows)),
            Kind::Decimal(..) => Self::Decimal(PrimitiveBuilder::with_capacity(rows)),
            Kind::Timestamp(..) => Self::Timestamp(Int64Builder::with_capacity(rows)),
        }
    }

    fn append_null(&mut self) {
        match self {
            Self::Utf8(b) => b.append_null(),
            Self::Int64(b) | Self::Timestamp(b) => b.append_null(),
            Self::Int32(b) => b.append_null(),
            Self::Float64(b) => b.append_null(),
            Self::Boolean(b) => b.append_null(),
            Self::Decimal(b) => b.append_null(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Utf8(b) => b.len(),
            Self::Int64(b) | Self::Timestamp(b) => b.len(),
            Self::Int32(b) => b.len(),
            Self::Float64(b) => b.len(),
            Self::Boolean(b) => b.len(),
            Self::Decimal(b) => b.len(),
        }
    }

    fn finish(self, data_type: &DataType) -> Option<ArrayRef> {
        let array: ArrayRef = match self {
            Self::Utf8(mut b) => Arc::new(b.finish()),
            Self::Int64(mut b) => Arc::new(b.finish()),
            Self::Int32(mut b) => Arc::new(b.finish()),
            Self::Float64(mut b) => Arc::new(b.finish()),
            Self::Boolean(mut b) => Arc::new(b.finish()),
            Self::Decimal(mut b) => Arc::new(b.finish()),
            Self::Timestamp(mut b) => Arc::new(b.finish()),
        };
        if array.data_type() == data_type {
            return Some(array);
        }
        // Decimals and timestamps are built as their storage type (i128, i64); the declared type
        // only adds precision and scale, or unit and zone.
        let data = array.to_data().into_builder().data_type(data_type.clone());
        data.build().ok().map(make_array)
    }
}

/// `work` over `parts` consecutive slices of `items` at once, each but the first on a scoped
/// thread of its own: the outputs in order, one per slice. The slices are
/// `items.len().div_ceil(parts)` long (the last may be shorter); `parts` is clamped to between 1
/// and the number of items, and one part runs on the calling thread alone.
pub fn in_parts<T: Sync, R: Send>(
    items: &[T],
    parts: usize,
    work: impl Fn(&[T]) -> R + Sync,
) -> Vec<R> {
    let parts = parts.clamp(1, items.len().max(1));
    if parts == 1 {
        return vec![work(items)];
    }
    let chunk = items.len().div_ceil(parts);
    let work = &work;
    std::thread::scope(|scope| {
        let others: Vec<_> = items[chunk..]
            .chunks(chunk)
            .map(|part| scope.spawn(move || work(part)))
            .collect();
        std::iter::once(work(&items[..chunk]))
            .chain(others.into_iter().map(|part| {
                part.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            }))
            .collect()
    })
}

/// What [`FlatDecoder::decode_each`] read of a batch, or what a [`RowBuilder`] built.
#[derive(Debug, Clone)]
pub struct FlatRows {
    /// The rows of the accepted messages, in input order.
    pub batch: RecordBatch,
    /// The position of each row's message in the input, ascending.
    pub accepted: Vec<usize>,
    /// Decimal values rounded to their column's scale, in the accepted rows.
    pub rounded: usize,
}

impl FlatRows {
    /// `parts` (rows of `schema`, each part's positions after the previous part's) as one.
    ///
    /// # Errors
    /// [`crate::Error::Arrow`] when a part is not of `schema` (a bug).
    pub fn concat(schema: &SchemaRef, parts: Vec<FlatRows>) -> crate::Result<FlatRows> {
        if parts.len() == 1 {
            return Ok(parts.into_iter().next().expect("one part"));
        }
        let batches: Vec<&RecordBatch> = parts.iter().map(|p| &p.batch).collect();
        let batch = arrow::compute::concat_batches(schema, batches)?;
        Ok(FlatRows {
            batch,
            rounded: parts.iter().map(|p| p.rounded).sum(),
            accepted: parts.into_iter().flat_map(|p| p.accepted).collect(),
        })
    }
}

/// Decodes batches of flat JSON objects into a declared schema; see the module docs.
#[derive(Debug)]
pub struct FlatDecoder {
    schema: SchemaRef,
    names: Vec<Box<[u8]>>,
    kinds: Vec<Kind>,
    nullable: Vec<bool>,
    decimal_policy: DecimalPolicy,
}

impl FlatDecoder {
    /// A decoder for `schema` whose decimals follow `decimal_policy`, or `None` when a column's
    /// type is not one this path reads (such schemas always take arrow's decoder).
    pub fn new(schema: SchemaRef, decimal_policy: DecimalPolicy) -> Option<Self> {
        if schema.fields().len() > 64 {
            return None;
        }
        let mut kinds = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            kinds.push(match field.data_type() {
                DataType::Utf8 => Kind::Utf8,
                DataType::Int64 => Kind::Int64,
                DataType::Int32 => Kind::Int32,
                DataType::Float64 => Kind::Float64,
                DataType::Boolean => Kind::Boolean,
                DataType::Decimal128(p, s) => Kind::Decimal(*p, *s),
                DataType::Timestamp(unit, Some(zone)) => {
                    Kind::Timestamp(*unit, zone.parse::<Tz>().ok()?)
                }
                _ => return None,
            });
        }
        Some(Self {
            names: schema
                .fields()
                .iter()
                .map(|f| f.name().as_bytes().into())
                .collect(),
            nullable: schema.fields().iter().map(|f| f.is_nullable()).collect(),
            kinds,
            schema,
            decimal_policy,
        })
    }

    /// The batch of `payloads`, one row each, and how many decimal values were rounded, or
    /// `None` if any of them is outside this path's shape (see the module docs). The
    /// all-or-nothing form the tests compare against arrow's decoder.
    #[cfg(test)]
    pub fn decode<'a>(
        &self,
        payloads: impl ExactSizeIterator<Item = &'a [u8]>,
    ) -> Option<(RecordBatch, usize)> {
        let rows = payloads.len();
        let read = self.decode_each(payloads.map(Some))?;
        (read.accepted.len() == rows).then_some((read.batch, read.rounded))
    }

    /// [`FlatDecoder::decode_each`] over `parts` consecutive slices of `payloads` at once, each
    /// but the first on a thread of its own, then the rows put together in input order (the
    /// same rows, positions and count of rounded decimals as one `decode_each`). Pays off for
    /// large batches only: each part costs a thread start, and the parts' columns are copied
    /// into one batch. `None` as `decode_each`.
    pub fn decode_in_parts(&self, payloads: &[Option<&[u8]>], parts: usize) -> Option<FlatRows> {
        let parts = parts.clamp(1, payloads.len().max(1));
        if parts == 1 {
            return self.decode_each(payloads.iter().copied());
        }
        let chunk = payloads.len().div_ceil(parts);
        let reads = in_parts(payloads, parts, |part| {
            self.decode_each(part.iter().copied())
        });
        let reads = reads
            .into_iter()
            .enumerate()
            .map(|(part, read)| {
                let mut read = read?;
                read.accepted.iter_mut().for_each(|i| *i += part * chunk);
                Some(read)
            })
            .collect::<Option<Vec<_>>>()?;
        FlatRows::concat(&self.schema, reads).ok()
    }

    /// Reads every message it can: the rows of the `Some` payloads in this path's shape, in
    /// order, which ones those were ([`FlatRows::accepted`], positions in `payloads`), and the
    /// decimals rounded in them. `None` payloads (messages already rejected) are passed over, and
    /// so is every message outside the shape, without costing the others anything: the caller
    /// decodes those the slow way. `None` only if the columns cannot be assembled (a bug).
    pub fn decode_each<'a>(
        &self,
        payloads: impl ExactSizeIterator<Item = Option<&'a [u8]>>,
    ) -> Option<FlatRows> {
        let mut rows = Rows::new(&self.kinds, payloads.len());
        for (i, payload) in payloads.enumerate() {
            let Some(payload) = payload else { continue };
            let mut row_rounded = 0;
            let ok = self
                .row(payload, &mut rows.columns, &mut row_rounded)
                .is_some();
            rows.end(i, ok.then_some(row_rounded));
        }
        rows.finish(&self.schema)
    }

    /// Appends one message's row: exactly one value (or null) to every column.
    fn row(&self, payload: &[u8], columns: &mut [Column], rounded: &mut usize) -> Option<()> {
        let mut cur = Cursor { b: payload, i: 0 };
        let mut seen: u64 = 0;
        // Records usually list their keys in the declared order: try the next field first.
        let mut next = 0;
        cur.ws();
        cur.expect(b'{')?;
        cur.ws();
        if cur.peek() == Some(b'}') {
            cur.i += 1;
        } else {
            loop {
                cur.expect(b'"')?;
                let key = cur.string()?;
                cur.ws();
                cur.expect(b':')?;
                cur.ws();
                match self.field_index(key.as_bytes(), next) {
                    Some(f) => {
                        if seen & (1 << f) != 0 {
                            return None;
                        }
                        seen |= 1 << f;
                        self.value(&mut cur, f, &mut columns[f], rounded)?;
                        next = f + 1;
                    }
                    None => cur.skip_scalar()?,
                }
                cur.ws();
                match cur.byte()? {
                    b',' => cur.ws(),
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        cur.ws();
        if cur.i != payload.len() {
            return None;
        }
        for (f, column) in columns.iter_mut().enumerate() {
            if seen & (1 << f) == 0 {
                if !self.nullable[f] {
                    return None;
                }
                column.append_null();
            }
        }
        Some(())
    }

    fn field_index(&self, key: &[u8], hint: usize) -> Option<usize> {
        if self.names.get(hint).is_some_and(|n| **n == *key) {
            return Some(hint);
        }
        self.names.iter().position(|n| **n == *key)
    }

    /// Reads the value of field `f` into its column, counting a rounded decimal in `rounded`.
    fn value(
        &self,
        cur: &mut Cursor<'_>,
        f: usize,
        column: &mut Column,
        rounded: &mut usize,
    ) -> Option<()> {
        if cur.peek()? == b'n' {
            cur.literal(b"null")?;
            if !self.nullable[f] {
                return None;
            }
            column.append_null();
            return Some(());
        }
        match (column, &self.kinds[f]) {
            (Column::Utf8(b), _) => {
                cur.expect(b'"')?;
                b.append_value(cur.string()?);
            }
            (Column::Int64(b), _) => b.append_value(cur.integer()?.parse().ok()?),
            (Column::Int32(b), _) => b.append_value(cur.integer()?.parse().ok()?),
            (Column::Float64(b), _) => {
                // Out of range (1e400) is left to arrow's decoder to judge.
                let value: f64 = cur.number()?.parse().ok()?;
                b.append_value(value.is_finite().then_some(value)?);
            }
            (Column::Boolean(b), _) => match cur.peek()? {
                b't' => {
                    cur.literal(b"true")?;
                    b.append_value(true);
                }
                _ => {
                    cur.literal(b"false")?;
                    b.append_value(false);
                }
            },
            (Column::Decimal(b), Kind::Decimal(precision, scale)) => {
                let text = if cur.peek()? == b'"' {
                    cur.i += 1;
                    cur.string()?
                } else {
                    cur.number()?
                };
                let parsed = parse_decimal(text, *precision, *scale, self.decimal_policy).ok()?;
                *rounded += usize::from(parsed.rounded);
                b.append_value(parsed.value);
            }
            (Column::Timestamp(b), Kind::Timestamp(unit, zone)) => {
                cur.expect(b'"')?;
                b.append_value(timestamp(cur.string()?, *unit, zone)?);
            }
            _ => return None,
        }
        Some(())
    }
}

/// The columns of the rows being built, and which messages they came from.
struct Rows {
    columns: Vec<Column>,
    /// Rows built so far, kept or not.
    built: usize,
    /// Which built rows to keep; `None` while every row so far is kept, so a clean batch is
    /// never filtered.
    keep: Option<Vec<bool>>,
    accepted: Vec<usize>,
    rounded: usize,
}

impl Rows {
    fn new(kinds: &[Kind], capacity: usize) -> Self {
        Self {
            columns: kinds.iter().map(|k| Column::new(k, capacity)).collect(),
            built: 0,
            keep: None,
            accepted: Vec::with_capacity(capacity),
            rounded: 0,
        }
    }

    /// Ends the row of message `position`: kept with its count of rounded decimals, or dropped.
    fn end(&mut self, position: usize, kept: Option<usize>) {
        self.built += 1;
        match kept {
            Some(rounded) => {
                self.accepted.push(position);
                self.rounded += rounded;
                if let Some(keep) = &mut self.keep {
                    keep.push(true);
                }
            }
            None => {
                // A declined message may have filled some columns before the value that
                // stopped it: fill the rest with nulls so the columns stay aligned, and drop the
                // row when finishing (arrow's builders cannot take a value back).
                for column in &mut self.columns {
                    if column.len() < self.built {
                        column.append_null();
                    }
                }
                self.keep
                    .get_or_insert_with(|| vec![true; self.built - 1])
                    .push(false);
            }
        }
    }

    /// The kept rows as a batch of `schema`; `None` only if the columns cannot be assembled (a
    /// bug).
    fn finish(self, schema: &SchemaRef) -> Option<FlatRows> {
        let mut arrays = self
            .columns
            .into_iter()
            .zip(schema.fields())
            .map(|(c, f)| c.finish(f.data_type()))
            .collect::<Option<Vec<_>>>()?;
        if let Some(keep) = self.keep {
            let keep = BooleanArray::from(keep);
            arrays = arrays
                .iter()
                .map(|a| filter(a, &keep).ok())
                .collect::<Option<Vec<_>>>()?;
        }
        let batch = RecordBatch::try_new(schema.clone(), arrays).ok()?;
        Some(FlatRows {
            batch,
            accepted: self.accepted,
            rounded: self.rounded,
        })
    }
}

/// The declared input table's columns, for a source that parses its messages itself and can
/// hand over rows instead of JSON for the engine to parse again
/// ([`crate::Source::build_rows`]). Cheap to clone.
#[derive(Debug, Clone)]
pub struct RowLayout(Arc<FlatDecoder>);

impl RowLayout {
    /// The layout of `decoder`'s schema.
    pub(crate) fn new(decoder: Arc<FlatDecoder>) -> Self {
        Self(decoder)
    }

    /// The schema rows are built in.
    pub fn schema(&self) -> &SchemaRef {
        &self.0.schema
    }

    /// The index of the column `name`, if the table has it.
    pub fn field(&self, name: &str) -> Option<usize> {
        self.0.field_index(name.as_bytes(), 0)
    }

    /// An empty builder with room for `capacity` rows.
    pub fn builder(&self, capacity: usize) -> RowBuilder {
        RowBuilder {
            rows: Rows::new(&self.0.kinds, capacity),
            layout: self.clone(),
            seen: 0,
            refused: false,
            rounded: 0,
        }
    }
}

/// Builds rows from values a source parsed out of its messages, one message at a time: set the
/// columns the message has ([`RowBuilder::text`], [`RowBuilder::integer`], [`RowBuilder::null`];
/// columns not set are null), then [`RowBuilder::end_row`].
///
/// A value is converted exactly as the same value written in a JSON message is on the decoder's
/// flat path (text as a JSON string, an integer as a JSON number: decimals through the one
/// checked parser, timestamps through the same parsing), so a row built here is the row that
/// message decodes into. A value that path would pass over (text in an integer column, a null in
/// a NOT NULL column, a decimal the policy refuses, a column set twice) makes `end_row` refuse
/// the row: the source then hands that message over as JSON, and the decoder judges it (a dead
/// letter with its reason, or a row).
pub struct RowBuilder {
    layout: RowLayout,
    rows: Rows,
    /// The columns set in the current row.
    seen: u64,
    /// The current row has a value the flat path would pass over.
    refused: bool,
    /// Decimals rounded in the current row.
    rounded: usize,
}

impl std::fmt::Debug for RowBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowBuilder")
            .field("rows", &self.rows.built)
            .finish_non_exhaustive()
    }
}

impl RowBuilder {
    /// Marks column `f` set in this row; `false` (and the row refused) when it already was.
    fn set(&mut self, f: usize) -> bool {
        if self.refused || f >= self.rows.columns.len() || self.seen & (1 << f) != 0 {
            self.refused = true;
            return false;
        }
        self.seen |= 1 << f;
        true
    }

    /// Column `f` holds `value`, as a JSON string would.
    pub fn text(&mut self, f: usize, value: &str) {
        self.put(f, |column, kind, policy, rounded| match (column, kind) {
            (Column::Utf8(b), _) => {
                b.append_value(value);
                true
            }
            (Column::Decimal(b), Kind::Decimal(precision, scale)) => {
                append_decimal(b, value, (*precision, *scale, policy), rounded)
            }
            (Column::Timestamp(b), Kind::Timestamp(unit, zone)) => timestamp(value, *unit, zone)
                .map(|v| b.append_value(v))
                .is_some(),
            // A string in a number or boolean column: the flat path passes it over.
            _ => false,
        });
    }

    /// Column `f` holds `value`, as a JSON integer would.
    pub fn integer(&mut self, f: usize, value: i64) {
        self.put(f, |column, kind, policy, rounded| match (column, kind) {
            (Column::Int64(b), _) => {
                b.append_value(value);
                true
            }
            (Column::Int32(b), _) => i32::try_from(value).map(|v| b.append_value(v)).is_ok(),
            // Both round to the nearest double, as parsing the integer's text does.
            (Column::Float64(b), _) => {
                b.append_value(value as f64);
                true
            }
            (Column::Decimal(b), Kind::Decimal(precision, scale)) => {
                append_decimal(b, &value.to_string(), (*precision, *scale, policy), rounded)
            }
            // A number in a text, boolean or timestamp column: the flat path passes it over.
            _ => false,
        });
    }

    /// Sets column `f` of the row with `append` (given the column, its kind, the decimal policy
    /// and the row's count of rounded decimals), which says whether the value converted.
    fn put(
        &mut self,
        f: usize,
        append: impl FnOnce(&mut Column, &Kind, DecimalPolicy, &mut usize) -> bool,
    ) {
        if !self.set(f) {
            return;
        }
        let decoder = &self.layout.0;
        let ok = append(
            &mut self.rows.columns[f],
            &decoder.kinds[f],
            decoder.decimal_policy,
            &mut self.rounded,
        );
        self.refused |= !ok;
    }

    /// Column `f` is null, as a JSON null would make it (refused in a NOT NULL column).
    pub fn null(&mut self, f: usize) {
        if !self.set(f) {
            return;
        }
        if self.layout.0.nullable[f] {
            self.rows.columns[f].append_null();
        } else {
            self.refused = true;
        }
    }

    /// Ends the row of the batch's message at `position` (its index in
    /// [`crate::SourceBatch::records`], ascending from row to row): `true` if the row was
    /// kept, `false` if it was refused (see the type's docs) and the message has to be handed
    /// over as JSON.
    pub fn end_row(&mut self, position: usize) -> bool {
        let decoder = &self.layout.0;
        for (f, column) in self.rows.columns.iter_mut().enumerate() {
            if self.seen & (1 << f) == 0 {
                if !decoder.nullable[f] {
                    self.refused = true;
                    break;
                }
                column.append_null();
            }
        }
        let kept = !self.refused;
        self.rows.end(position, kept.then_some(self.rounded));
        self.seen = 0;
        self.refused = false;
        self.rounded = 0;
        kept
    }

    /// Rows built so far, kept or not.
    pub fn len(&self) -> usize {
        self.rows.built
    }

    /// Whether no row was built.
    pub fn is_empty(&self) -> bool {
        self.rows.built == 0
    }

    /// The kept rows, for [`crate::SourceBatch::rows`].
    ///
    /// # Errors
    /// [`crate::Error::Internal`] if the columns cannot be assembled (a bug).
    pub fn finish(self) -> crate::Result<FlatRows> {
        self.rows
            .finish(&self.layout.0.schema)
            .ok_or_else(|| crate::Error::Internal("built rows lost their columns".into()))
    }
}

/// Appends the decimal `text` reads as under `(precision, scale, policy)`, counting it in
/// `rounded` if it was rounded; `false` (nothing appended) if it does not convert.
fn append_decimal(
    column: &mut PrimitiveBuilder<Decimal128Type>,
    text: &str,
    (precision, scale, policy): (u8, i8, DecimalPolicy),
    rounded: &mut usize,
) -> bool {
    match parse_decimal(text, precision, scale, policy) {
        Ok(parsed) => {
            *rounded += usize::from(parsed.rounded);
            column.append_value(parsed.value);
            true
        }
        Err(_) => false,
    }
}

/// A timestamp string as a count of `unit` since the epoch, as arrow's JSON decoder computes it.
fn timestamp(text: &str, unit: TimeUnit, zone: &Tz) -> Option<i64> {
    let (seconds, nanos) = match plain_utc(text.as_bytes()) {
        Some(parsed) => parsed,
        None => {
            let at = string_to_datetime(zone, text).ok()?;
            (at.timestamp(), at.timestamp_subsec_nanos() as i64)
        }
    };
    match unit {
        TimeUnit::Second => Some(seconds),
        TimeUnit::Millisecond => seconds.checked_mul(1_000)?.checked_add(nanos / 1_000_000),
        TimeUnit::Microsecond => seconds.checked_mul(1_000_000)?.checked_add(nanos / 1_000),
        TimeUnit::Nanosecond => seconds.checked_mul(1_000_000_000)?.checked_add(nanos),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, the form the connectors and exchanges write, as seconds since
/// the epoch and nanoseconds; `None` for anything else (an invalid date included).
fn plain_utc(b: &[u8]) -> Option<(i64, i64)> {
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || *b.last()? != b'Z' {
        return None;
    }
    let digits = |from: usize, to: usize| -> Option<i64> {
        b[from..to].iter().try_fold(0i64, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + (c - b'0') as i64)
        })
    };
    let (year, month, day) = (digits(0, 4)?, digits(5, 7)?, digits(8, 10)?);
    let (hour, minute, second) = (digits(11, 13)?, digits(14, 16)?, digits(17, 19)?);
    let nanos = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', fraction @ ..] if (1..=9).contains(&fraction.len()) => {
            digits(20, b.len() - 1)? * 10i64.pow(9 - fraction.len() as u32)
        }
        _ => return None,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month) || day < 1 || day > month_days[month as usize - 1] {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    Some((
        days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second,
        nanos,
    ))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A position in one message.
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn byte(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.byte()? == c).then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// The rest of a string whose opening quote was read; `None` on an escape, a control
    /// character or invalid UTF-8.
    fn string(&mut self) -> Option<&'a str> {
        let start = self.i;
        loop {
            match self.byte()? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => {}
            }
        }
        std::str::from_utf8(&self.b[start..self.i - 1]).ok()
    }

    /// A JSON number's text: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<&'a str> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.byte()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.digit()?;
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.digit()?;
            self.digits();
        }
        // Only ASCII was consumed.
        std::str::from_utf8(&self.b[start..self.i]).ok()
    }

    /// A number with neither fraction nor exponent.
    fn integer(&mut self) -> Option<&'a str> {
        let text = self.number()?;
        (!text.contains(['.', 'e', 'E'])).then_some(text)
    }

    fn digit(&mut self) -> Option<()> {
        self.byte()?.is_ascii_digit().then_some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
    }

    /// Skips the value of a key not in the schema; only scalars are skipped.
    fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                self.string().map(drop)
            }
            b'n' => self.literal(b"null"),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            _ => self.number().map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{Field, Schema};

    use super::*;
    use crate::decode::RecordDecoder;
    use crate::source::RawRecord;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("trade_id", DataType::Int64, false),
            Field::new("seq", DataType::Int32, true),
            Field::new("price", DataType::Decimal128(28, 10), false),
            Field::new("ratio", DataType::Float64, true),
            Field::new("maker", DataType::Boolean, true),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new(
                "at_ns",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                true,
            ),
            Field::new(
                "at_ms",
                DataType::Timestamp(TimeUnit::Millisecond, Some("+02:00".into())),
                true,
            ),
        ]))
    }

    /// What the decoder's arrow path makes of the same messages (with the decimals read by the
    /// same checked parser), and its count of rounded decimals; `None` if any is a dead letter.
    fn arrow_decode_counted(
        schema: &SchemaRef,
        messages: &[String],
        policy: DecimalPolicy,
    ) -> Option<(RecordBatch, usize)> {
        let records: Vec<RawRecord> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| RawRecord {
                position: crate::RecordPosition::new(0, i as i64),
                payload: m.as_bytes().to_vec(),
                frame: None,
                rejected: None,
                received_at: std::time::SystemTime::UNIX_EPOCH,
            })
            .collect();
        let out = RecordDecoder::new(schema.clone())
            .with_decimal_policy(policy)
            .without_fast_path()
            .decode(&records)
            .ok()?;
        out.dead_letters
            .is_empty()
            .then_some((out.batch, out.rounded_decimals))
    }

    fn arrow_decode(schema: &SchemaRef, messages: &[String]) -> Option<RecordBatch> {
        arrow_decode_counted(schema, messages, DecimalPolicy::RoundHalfUp).map(|(b, _)| b)
    }

    fn flat_decode_counted(
        schema: &SchemaRef,
        messages: &[String],
        policy: DecimalPolicy,
    ) -> Option<(RecordBatch, usize)> {
        FlatDecoder::new(schema.clone(), policy)
            .unwrap()
            .decode(messages.iter().map(|m| m.as_bytes()))
    }

    fn flat_decode(schema: &SchemaRef, messages: &[String]) -> Option<RecordBatch> {
        flat_decode_counted(schema, messages, DecimalPolicy::RoundHalfUp).map(|(b, _)| b)
    }

    /// A small deterministic generator, so a failure can be replayed.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    /// A message with random values, key order, spacing, nulls, missing and unknown keys.
    fn random_message(rng: &mut Lcg) -> String {
        let digits = |rng: &mut Lcg, n: u64| -> String {
            (0..1 + rng.next(n))
                .map(|_| rng.next(10).to_string())
                .collect()
        };
        let stamp = |rng: &mut Lcg| -> String {
            let fraction = match rng.next(4) {
                0 => String::new(),
                _ => format!(".{}", digits(rng, 9)),
            };
            let zone = ["Z", "Z", "Z", "+01:00", "-05:30"][rng.next(5) as usize];
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{fraction}{zone}",
                1950 + rng.next(150),
                1 + rng.next(12),
                1 + rng.next(28),
                rng.next(24),
                rng.next(60),
                rng.next(60),
            )
        };
        let mut pairs = vec![
            format!(
                "\"symbol\":\"{}\"",
                ["BTC-USD", "ETH-USD", "ÉTÉ-€", "", "A\\\"B"][match rng.next(10) {
                    9 => 4,
                    n => n as usize % 4,
                }]
            ),
            format!("\"trade_id\":{}", rng.next(1 << 62) as i64 - (1 << 61)),
            format!(
                "\"price\":{}",
                match rng.next(6) {
                    0 => format!("{}.{}", 1 + rng.next(9), digits(rng, 12)),
                    1 => format!("\"{}\"", digits(rng, 8)),
                    2 => [
                        "\"1.5E+4\"",
                        "1.5e-11",
                        "\"+2.5\"",
                        "\".5\"",
                        "\"-0.00000000005\"",
                        "\"NaN\"",
                        "\"1e30\"",
                        "\" 1\"",
                    ][rng.next(8) as usize]
                        .to_owned(),
                    _ => format!("\"{}.{}\"", digits(rng, 10), digits(rng, 14)),
                }
            ),
        ];
        let optional = [
            ("seq", format!("{}", rng.next(1 << 31) as i64 - (1 << 30))),
            (
                "ratio",
                format!("{}.{}e-{}", 1 + rng.next(9), digits(rng, 6), rng.next(5)),
            ),
            ("maker", ["true", "false"][rng.next(2) as usize].to_owned()),
            ("at", format!("\"{}\"", stamp(rng))),
            ("at_ns", format!("\"{}\"", stamp(rng))),
            ("at_ms", format!("\"{}\"", stamp(rng))),
            (
                "extra",
                ["1", "\"x\"", "null", "true", "-2.5e3"][rng.next(5) as usize].into(),
            ),
        ];
        for (key, value) in optional {
            match rng.next(5) {
                0 => {}
                1 => pairs.push(format!("\"{key}\":null")),
                _ => pairs.push(format!("\"{key}\":{value}")),
            }
        }
        if rng.next(3) == 0 {
            for i in (1..pairs.len()).rev() {
                pairs.swap(i, rng.next(i as u64 + 1) as usize);
            }
        }
        let gap = [" ", "", "\n", "\t "][rng.next(4) as usize];
        format!("{{{gap}{}{gap}}}", pairs.join(&format!(",{gap}")))
    }

    #[test]
    fn matches_arrows_decoder_on_every_batch_it_takes() {
        let schema = schema();
        let mut rng = Lcg(7);
        let (mut taken, mut total) = (0, 0);
        for _ in 0..400 {
            let messages: Vec<String> = (0..1 + rng.next(8))
                .map(|_| random_message(&mut rng))
                .collect();
            total += 1;
            let policy = [DecimalPolicy::RoundHalfUp, DecimalPolicy::Reject][rng.next(2) as usize];
            if let Some(flat) = flat_decode_counted(&schema, &messages, policy) {
                taken += 1;
                let arrow = arrow_decode_counted(&schema, &messages, policy).unwrap_or_else(|| {
                    panic!("arrow rejects what the fast path took: {messages:#?}")
                });
                assert_eq!(flat, arrow, "{messages:#?}");
            }
        }
        // Escapes and the odd out-of-range date send some batches to arrow's decoder; most
        // must stay on the fast path, or it serves no purpose.
        assert!(
            taken * 3 > total,
            "fast path took {taken} of {total} batches"
        );
    }

    #[test]
    fn decoding_in_parts_gives_what_one_pass_gives() {
        let decoder = FlatDecoder::new(schema(), DecimalPolicy::RoundHalfUp).unwrap();
        let mut rng = Lcg(11);
        let messages: Vec<String> = (0..1_000).map(|_| random_message(&mut rng)).collect();
        // Some messages already rejected by the source (`None`), the rest read or declined.
        let payloads: Vec<Option<&[u8]>> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| (i % 7 != 3).then_some(m.as_bytes()))
            .collect();
        let whole = decoder.decode_each(payloads.iter().copied()).unwrap();
        assert!(
            whole.accepted.len() > 100 && whole.accepted.len() < 900,
            "a mix of read and declined messages: {}",
            whole.accepted.len()
        );
        for parts in [1, 2, 3, 7, 1_000, 5_000] {
            let split = decoder.decode_in_parts(&payloads, parts).unwrap();
            assert_eq!(split.batch, whole.batch, "{parts} parts");
            assert_eq!(split.accepted, whole.accepted, "{parts} parts");
            assert_eq!(split.rounded, whole.rounded, "{parts} parts");
        }
    }

    #[test]
    fn gives_up_on_what_it_does_not_read() {
        let schema = schema();
        let base = r#""symbol":"BTC-USD","trade_id":1,"price":"2.5""#;
        for message in [
            format!("{{{base},\"nested\":{{\"a\":1}}}}"),
            format!("{{{base},\"symbol\":\"again\"}}"),
            format!("{{{base}}}{{{base}}}"),
            format!("{{{base}"),
            format!("{{{base},\"trade_id\":2}}"),
            r#"{"symbol":"BTC-USD","trade_id":"1","price":"2.5"}"#.into(),
            r#"{"symbol":"BTC\nUSD","trade_id":1,"price":"2.5"}"#.into(),
            r#"{"symbol":"BTC-USD","trade_id":1.0,"price":"2.5"}"#.into(),
            r#"{"symbol":"BTC-USD","trade_id":01,"price":"2.5"}"#.into(),
            r#"{"symbol":"BTC-USD","trade_id":1,"price":"abc"}"#.into(),
            r#"{"symbol":"BTC-USD","trade_id":1}"#.into(),
            r#"{"symbol":null,"trade_id":1,"price":"2.5"}"#.into(),
            format!("{{{base},\"at\":\"2026-02-30T00:00:00Z\"}}"),
            format!("{{{base},\"at\":1700000000}}"),
            format!("[{base}]"),
        ] {
            assert!(
                flat_decode(&schema, std::slice::from_ref(&message)).is_none(),
                "{message}"
            );
        }
        let clean = format!("{{{base},\"at\":\"2026-11-20T14:00:00.123456Z\"}}");
        let batch =
            flat_decode(&schema, std::slice::from_ref(&clean)).expect("a clean message is taken");
        assert_eq!(batch, arrow_decode(&schema, &[clean]).unwrap());
    }

    #[test]
    fn decimals_round_half_up_and_count_or_give_up_under_reject() {
        let schema = schema();
        let message = |price: &str| {
            vec![format!(
                r#"{{"symbol":"ADA-USD","trade_id":1,"price":{price}}}"#
            )]
        };
        let price = |batch: &RecordBatch| {
            batch
                .column(3)
                .as_any()
                .downcast_ref::<arrow::array::Decimal128Array>()
                .unwrap()
                .value_as_string(0)
        };
        for (text, stored, rounded) in [
            (r#""0.79600000009""#, "0.7960000001", 1),
            ("0.79600000009", "0.7960000001", 1),
            (r#""1.5E+4""#, "15000.0000000000", 0),
            ("1.5e4", "15000.0000000000", 0),
            (r#""+.5""#, "0.5000000000", 0),
            (r#""-1.99999999999""#, "-2.0000000000", 1),
        ] {
            let (batch, n) =
                flat_decode_counted(&schema, &message(text), DecimalPolicy::RoundHalfUp)
                    .unwrap_or_else(|| panic!("{text} is taken"));
            assert_eq!((price(&batch), n), (stored.to_owned(), rounded), "{text}");
            let reject = flat_decode_counted(&schema, &message(text), DecimalPolicy::Reject);
            assert_eq!(reject.is_none(), rounded == 1, "{text} under reject");
        }
        // What the parser refuses is left to the arrow path, which dead-letters it with a reason.
        for text in [r#""NaN""#, r#""Infinity""#, r#"" 1""#, r#""1e40""#, r#""""#] {
            assert!(flat_decode(&schema, &message(text)).is_none(), "{text}");
        }
    }

    #[test]
    fn plain_utc_timestamps_agree_with_arrows_parser() {
        let mut rng = Lcg(11);
        for _ in 0..20_000 {
            let text = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{}Z",
                rng.next(10_000),
                1 + rng.next(12),
                1 + rng.next(31),
                rng.next(24),
                rng.next(60),
                rng.next(60),
                match rng.next(10) as usize {
                    0 => String::new(),
                    n => format!(".{}", &format!("{:09}", rng.next(1_000_000_000))[..n]),
                },
            );
            let ours = plain_utc(text.as_bytes());
            let arrow = string_to_datetime(&chrono::Utc, &text)
                .ok()
                .map(|t| (t.timestamp(), t.timestamp_subsec_nanos() as i64));
            match ours {
                Some(ours) => assert_eq!(Some(ours), arrow, "{text}"),
                // The only dates refused are ones that do not exist.
                None => assert!(arrow.is_none() || text.len() < 20, "{text}: {arrow:?}"),
            }
        }
    }

    fn raw(i: usize, payload: &str, rejected: Option<&str>) -> RawRecord {
        RawRecord {
            position: crate::RecordPosition::new(0, i as i64),
            payload: payload.as_bytes().to_vec(),
            frame: None,
            rejected: rejected.map(str::to_owned),
            received_at: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    /// [`random_message`] without its booleans and fractional numbers (which no builder method
    /// takes) and with its spacing and key order normalised.
    fn random_typed_message(rng: &mut Lcg) -> String {
        let message = random_message(rng);
        let mut object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&message).unwrap();
        object.retain(|_, v| !v.is_boolean() && (!v.is_number() || v.is_i64()));
        serde_json::to_string(&object).unwrap()
    }

    /// Builds `message`'s row from its parsed values, as a source that parsed it itself would;
    /// `None` when it has a value no builder method takes (a fraction, a boolean), `Some(kept)`
    /// otherwise.
    fn build(rows: &mut RowBuilder, layout: &RowLayout, message: &str, at: usize) -> Option<bool> {
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(message).ok()?;
        if object
            .values()
            .any(|v| v.is_boolean() || (v.is_number() && !v.is_i64()))
        {
            return None;
        }
        for (key, value) in &object {
            let Some(f) = layout.field(key) else { continue };
            match value {
                serde_json::Value::String(text) => rows.text(f, text),
                serde_json::Value::Null => rows.null(f),
                number => rows.integer(f, number.as_i64()?),
            }
        }
        Some(rows.end_row(at))
    }

    #[test]
    fn rows_built_from_parsed_values_are_the_rows_their_messages_decode_into() {
        let schema = schema();
        let mut rng = Lcg(23);
        for policy in [DecimalPolicy::RoundHalfUp, DecimalPolicy::Reject] {
            let layout =
                RowLayout::new(Arc::new(FlatDecoder::new(schema.clone(), policy).unwrap()));
            let messages: Vec<String> =
                (0..2_000).map(|_| random_typed_message(&mut rng)).collect();
            let mut rows = layout.builder(16);
            let (mut given, mut refused) = (0, 0);
            for (i, m) in messages.iter().enumerate() {
                match build(&mut rows, &layout, m, i) {
                    Some(true) => given += 1,
                    Some(false) => (given, refused) = (given + 1, refused + 1),
                    None => {}
                }
            }
            let built = rows.finish().unwrap();
            // The same messages as JSON, through the whole decoder (arrow's path included).
            let kept: Vec<RawRecord> = built
                .accepted
                .iter()
                .map(|&i| raw(i, &messages[i], None))
                .collect();
            let decoded = RecordDecoder::new(schema.clone())
                .with_decimal_policy(policy)
                .decode(&kept)
                .unwrap();
            assert!(
                decoded.dead_letters.is_empty(),
                "{:?}",
                decoded.dead_letters
            );
            assert_eq!(built.batch, decoded.batch, "{policy:?}");
            assert_eq!(built.rounded, decoded.rounded_decimals, "{policy:?}");
            // Most rows are built; the refused ones (a decimal out of range or refused by the
            // policy, a zoned time out of range) are left to the decoder.
            assert!(
                built.accepted.len() * 2 > given,
                "{} of {given}",
                built.accepted.len()
            );
            assert!(refused > 0, "{policy:?}: nothing refused of {given}");
        }
    }

    #[test]
    fn a_batch_with_built_rows_decodes_as_the_same_batch_all_in_json() {
        let schema = schema();
        let layout = RowLayout::new(Arc::new(
            FlatDecoder::new(schema.clone(), DecimalPolicy::RoundHalfUp).unwrap(),
        ));
        let mut rng = Lcg(29);
        let messages: Vec<String> = (0..600).map(|_| random_typed_message(&mut rng)).collect();
        let rejected = |i: usize| (i % 5 == 1).then_some("refused by the source");
        let json: Vec<RawRecord> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| raw(i, m, rejected(i)))
            .collect();
        // Every third message that the source did not reject, as a built row where it can be.
        let mut rows = layout.builder(16);
        let mut mixed = json.clone();
        for (i, m) in messages.iter().enumerate() {
            if i % 3 == 0 && rejected(i).is_none() && build(&mut rows, &layout, m, i) == Some(true)
            {
                mixed[i].payload.clear();
            }
        }
        let built = rows.finish().unwrap();
        assert!(built.accepted.len() > 50, "{}", built.accepted.len());
        let expected = RecordDecoder::new(schema.clone()).decode(&json).unwrap();
        let got = RecordDecoder::new(schema)
            .decode_with(&mixed, Some(&built))
            .unwrap();
        assert_eq!(got.batch, expected.batch);
        assert_eq!(got.rows, expected.rows);
        assert_eq!(got.dead_letters, expected.dead_letters);
        assert_eq!(got.rounded_decimals, expected.rounded_decimals);
        assert!(
            expected.dead_letters.len() > 120,
            "rejected and bad messages"
        );
    }
}
