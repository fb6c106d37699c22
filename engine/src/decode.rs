//! Turns raw messages into an Arrow `RecordBatch` of a declared schema with arrow's JSON decoder.
//! Messages that do not decode become dead letters with their reason; the rest of the batch still
//! flows. It knows nothing of where the bytes came from.
//!
//! Three tries, each only for the messages the one before passed over, so clean batches pay
//! nothing for the dead-letter policy and a bad message costs only itself:
//! 1. [`FlatDecoder`](crate::flat_json), for flat objects in the plain shape connectors write
//!    (no escapes, no nesting), straight into the columns; messages a source already rejected
//!    and messages outside that shape are passed over, one by one. A batch of at least
//!    2 × 8,192 messages is read in parts, one per processor, on scoped threads, and the
//!    parts' columns are concatenated;
//! 2. arrow's decoder over all the messages passed over, each checked to hold exactly one
//!    complete object;
//! 3. each of those alone, to find the bad ones and their reasons.
//!
//! A source that parses its messages itself may hand over some of them as rows it built with
//! [`RowLayout`]'s builder, converted exactly as this path converts the same values in JSON
//! ([`RecordDecoder::decode_with`]); only the other messages are decoded.
//!
//! The decoder is kept from batch to batch: it owns buffers sized for a whole batch, and building
//! a new one per batch spent more time in page faults than in parsing.
//!
//! # Decimals
//! Every top-level `Decimal128` column is parsed by the one checked parser, [`crate::decimal`], on
//! every path, from a JSON string or a JSON number alike, so a value never depends on the path a
//! batch took. Arrow's decoder reads such a column as text (a number kept exactly as written), and
//! the text is then converted; a value that does not convert (or that the
//! [`DecimalPolicy`] refuses) makes its message a dead letter whose reason names the column and
//! the value. Values rounded to the column's scale are counted in [`Decoded::rounded_decimals`].
//! One side effect of reading decimals as text: arrow's decoder then takes a JSON number or
//! boolean in any string column as its text (as Spark's `from_json` does for a `StringType`).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Decimal128Builder, StringArray};
use arrow::compute::interleave;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::json::ReaderBuilder;
use arrow::json::reader::Decoder;
use arrow::record_batch::RecordBatch;

use crate::decimal::{DecimalPolicy, parse_decimal};
use crate::error::Result;
use crate::flat_json::FlatDecoder;
pub use crate::flat_json::{FlatRows, RowBuilder, RowLayout, in_parts};
use crate::sink::DeadLetter;
use crate::source::RawRecord;

/// The result of decoding one batch.
#[derive(Debug)]
pub struct Decoded {
    /// The rows of every message that decoded, in input order.
    pub batch: RecordBatch,
    /// The messages that did not.
    pub dead_letters: Vec<DeadLetter>,
    /// For each row of `batch`, the position of its message in the decoded slice (so a row that
    /// later fails in a transform can be dead-lettered with its message).
    pub rows: Vec<usize>,
    /// Decimal values rounded to their column's scale (under [`DecimalPolicy::RoundHalfUp`]).
    pub rounded_decimals: usize,
}

/// A decimal column arrow's decoder reads as text.
#[derive(Debug, Clone)]
struct DecimalColumn {
    index: usize,
    precision: u8,
    scale: i8,
}

/// The fewest messages a part of a batch decoded on its own thread has: below it, starting a
/// thread and copying the part's columns into the batch cost more than the part's share of the
/// parsing saves.
const PART_ROWS: usize = 8_192;

/// Values longer than this are cut in dead-letter reasons.
const MAX_VALUE_IN_REASON: usize = 40;

/// Decodes JSON messages into a declared schema.
pub struct RecordDecoder {
    schema: SchemaRef,
    /// `schema` with every decimal column as text: what arrow's decoder reads.
    text_schema: SchemaRef,
    decimals: Vec<DecimalColumn>,
    decimal_policy: DecimalPolicy,
    /// The fast path for flat records, when the schema's types allow it.
    flat: Option<Arc<FlatDecoder>>,
    /// The reusable decoder and the most rows it takes per batch; dropped after any error, since
    /// a failed decoder may hold part of a row.
    decoder: Option<(Decoder, usize)>,
    /// The processors a large batch is decoded on.
    cores: usize,
}

impl std::fmt::Debug for RecordDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordDecoder")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl RecordDecoder {
    /// A decoder for `schema` (fields missing from a message are null; non-nullable ones are then
    /// an error; fields not in the schema are ignored).
    pub fn new(schema: SchemaRef) -> Self {
        let mut decimals = Vec::new();
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(index, field)| match field.data_type() {
                DataType::Decimal128(precision, scale) => {
                    decimals.push(DecimalColumn {
                        index,
                        precision: *precision,
                        scale: *scale,
                    });
                    field.as_ref().clone().with_data_type(DataType::Utf8)
                }
                _ => field.as_ref().clone(),
            })
            .collect();
        let text_schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
        let decimal_policy = DecimalPolicy::default();
        Self {
            flat: FlatDecoder::new(schema.clone(), decimal_policy).map(Arc::new),
            schema,
            text_schema,
            decimals,
            decimal_policy,
            decoder: None,
            cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        }
    }

    /// What happens to decimals with more fractional digits than their column's scale (default:
    /// round half up, as Spark).
    pub fn with_decimal_policy(mut self, policy: DecimalPolicy) -> Self {
        self.decimal_policy = policy;
        self.flat = FlatDecoder::new(self.schema.clone(), policy).map(Arc::new);
        self
    }

    /// The schema rows are decoded into.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes `records`; see the module docs.
    pub fn decode(&mut self, records: &[RawRecord]) -> Result<Decoded> {
        self.decode_with(records, None)
    }

    /// The columns a source may build rows in itself ([`crate::Source::build_rows`]); `None`
    /// when the schema has a column type only arrow's decoder reads.
    pub fn row_layout(&self) -> Option<RowLayout> {
        self.flat.clone().map(RowLayout::new)
    }

    /// Decodes `records`, of which those at [`FlatRows::accepted`] of `built` already are rows
    /// (built by their source with [`Self::row_layout`]'s builder): only the others are decoded,
    /// and all rows come back in input order.
    ///
    /// # Errors
    /// As [`Self::decode`], and [`crate::Error::Internal`] when `built` is not of this
    /// decoder's schema or its positions are not ascending positions in `records` (a bug of the
    /// source).
    pub fn decode_with(
        &mut self,
        records: &[RawRecord],
        built: Option<&FlatRows>,
    ) -> Result<Decoded> {
        let built = built.filter(|b| !b.accepted.is_empty());
        if let Some(b) = built
            && (b.batch.schema() != self.schema
                || b.accepted.len() != b.batch.num_rows()
                || !b.accepted.windows(2).all(|w| w[0] < w[1])
                || b.accepted.last().is_some_and(|&last| last >= records.len()))
        {
            return Err(crate::Error::Internal(
                "a source built rows that are not of the input table's schema, or not one per \
                 record of the batch in order"
                    .into(),
            ));
        }
        let taken: Option<Vec<bool>> = built.map(|b| {
            let mut taken = vec![false; records.len()];
            for &i in &b.accepted {
                taken[i] = true;
            }
            taken
        });
        let rest = self.decode_rest(records, taken.as_deref())?;
        let Some(built) = built else {
            return Ok(rest);
        };
        let (batch, rows) = if rest.rows.is_empty() {
            (built.batch.clone(), built.accepted.clone())
        } else {
            merge_in_order((&built.batch, &built.accepted), (&rest.batch, &rest.rows))?
        };
        Ok(Decoded {
            batch,
            rows,
            rounded_decimals: built.rounded + rest.rounded_decimals,
            ..rest
        })
    }

    /// Decodes the records not `taken` (one flag per record: a row of its source), flat path
    /// first.
    fn decode_rest(&mut self, records: &[RawRecord], taken: Option<&[bool]>) -> Result<Decoded> {
        let taken = |i: usize| taken.is_some_and(|t| t[i]);
        let Some(flat) = &self.flat else {
            let all: Vec<usize> = (0..records.len()).filter(|&i| !taken(i)).collect();
            return self.decode_slowly(records, &all);
        };
        let payloads: Vec<Option<&[u8]>> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.rejected.is_none() && !taken(i)).then_some(r.payload.as_slice()))
            .collect();
        let wanted = payloads.iter().filter(|p| p.is_some()).count();
        let taken_count = (0..records.len()).filter(|&i| taken(i)).count();
        // A large batch is read on every core, in parts of at least PART_ROWS messages.
        let parts = self.cores.min(wanted / PART_ROWS).max(1);
        let read = flat
            .decode_in_parts(&payloads, parts)
            .ok_or_else(|| crate::Error::Internal("the flat decoder lost its columns".into()))?;
        if read.accepted.len() + taken_count == records.len() {
            return Ok(Decoded {
                batch: read.batch,
                dead_letters: Vec::new(),
                rows: read.accepted,
                rounded_decimals: read.rounded,
            });
        }
        // Only the messages the flat path passed over take the slow paths; the two sets of rows
        // are then put back in input order.
        let mut accepted = read.accepted.iter().copied().peekable();
        let rest: Vec<usize> = (0..records.len())
            .filter(|&i| accepted.next_if_eq(&i).is_none() && !taken(i))
            .collect();
        let slow = self.decode_slowly(records, &rest)?;
        if read.accepted.is_empty() {
            return Ok(slow);
        }
        let (batch, rows) =
            merge_in_order((&read.batch, &read.accepted), (&slow.batch, &slow.rows))?;
        Ok(Decoded {
            batch,
            dead_letters: slow.dead_letters,
            rows,
            rounded_decimals: read.rounded + slow.rounded_decimals,
        })
    }

    /// Decodes the messages of `records` at positions `subset` (ascending) with arrow's decoder:
    /// all together when that works, else each alone to find the dead letters and their reasons.
    /// [`Decoded::rows`] are positions in `records`.
    fn decode_slowly(&mut self, records: &[RawRecord], subset: &[usize]) -> Result<Decoded> {
        let all_clean = subset.iter().all(|&i| records[i].rejected.is_none());
        if all_clean
            && let Some(text) = self.decode_all(subset.iter().map(|&i| &records[i]))?
            && let Ok((batch, rounded_decimals)) = self.convert_decimals(&text)
        {
            return Ok(Decoded {
                batch,
                dead_letters: Vec::new(),
                rows: subset.to_vec(),
                rounded_decimals,
            });
        }
        let mut good = Vec::with_capacity(subset.len());
        let mut rows = Vec::with_capacity(subset.len());
        let mut dead_letters = Vec::new();
        for &i in subset {
            let record = &records[i];
            let reason = match &record.rejected {
                Some(reason) => Some(reason.clone()),
                None => self.reject_reason(&record.payload),
            };
            match reason {
                None => {
                    good.push(record);
                    rows.push(i);
                }
                Some(reason) => dead_letters.push(DeadLetter::from_record(record, reason)),
            }
        }
        let together = || {
            crate::Error::Internal(
                "messages that decoded one by one failed to decode together".into(),
            )
        };
        let text = self
            .decode_all(good.iter().copied())?
            .ok_or_else(together)?;
        let (batch, rounded_decimals) = self.convert_decimals(&text).map_err(|_| together())?;
        Ok(Decoded {
            batch,
            dead_letters,
            rows,
            rounded_decimals,
        })
    }

    /// `text` (a batch of [`Self::text_schema`]) with its decimal columns parsed, and how many
    /// values were rounded; or why the first value that does not convert does not.
    fn convert_decimals(
        &self,
        text: &RecordBatch,
    ) -> std::result::Result<(RecordBatch, usize), String> {
        if self.decimals.is_empty() {
            return Ok((text.clone(), 0));
        }
        let mut columns: Vec<ArrayRef> = text.columns().to_vec();
        let mut rounded = 0;
        for d in &self.decimals {
            let name = self.schema.field(d.index).name();
            let values = text
                .column(d.index)
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| format!("column {name}: not read as text"))?;
            let mut builder = Decimal128Builder::with_capacity(values.len());
            for value in values {
                let Some(value) = value else {
                    builder.append_null();
                    continue;
                };
                match parse_decimal(value, d.precision, d.scale, self.decimal_policy) {
                    Ok(parsed) => {
                        rounded += usize::from(parsed.rounded);
                        builder.append_value(parsed.value);
                    }
                    Err(e) => {
                        return Err(format!("column {name}: {} {e}", quoted(value)));
                    }
                }
            }
            let array = builder
                .finish()
                .with_precision_and_scale(d.precision, d.scale)
                .map_err(|e| format!("column {name}: {e}"))?;
            columns[d.index] = Arc::new(array);
        }
        RecordBatch::try_new(self.schema.clone(), columns)
            .map(|batch| (batch, rounded))
            .map_err(|e| e.to_string())
    }

    /// Arrow's decoder as configured for [`Self::text_schema`]: JSON numbers in a text column
    /// are kept as written (`1.10` stays `1.10`), for the decimal parser to read.
    fn reader(&self) -> ReaderBuilder {
        ReaderBuilder::new(self.text_schema.clone()).with_coerce_primitive(true)
    }

    /// Decodes every record in one pass into [`Self::text_schema`]; `None` if any record failed
    /// or did not hold exactly one JSON object.
    fn decode_all<'a>(
        &mut self,
        records: impl ExactSizeIterator<Item = &'a RawRecord>,
    ) -> Result<Option<RecordBatch>> {
        let expected = records.len();
        if expected == 0 {
            return Ok(Some(RecordBatch::new_empty(self.text_schema.clone())));
        }
        let mut decoder = match self.decoder.take() {
            Some((decoder, rows)) if rows >= expected => (decoder, rows),
            _ => (
                self.reader().with_batch_size(expected).build_decoder()?,
                expected,
            ),
        };
        for (i, r) in records.enumerate() {
            // A message must be consumed whole and end exactly one row later: this catches a
            // truncated object that would otherwise run on into the next message, and a message
            // holding two objects.
            match decoder.0.decode(&r.payload) {
                Ok(used) if used == r.payload.len() => {}
                _ => return Ok(None),
            }
            if decoder.0.has_partial_record() || decoder.0.len() != i + 1 {
                return Ok(None);
            }
        }
        match decoder.0.flush() {
            Ok(Some(batch)) if batch.num_rows() == expected => {
                self.decoder = Some(decoder);
                Ok(Some(batch))
            }
            _ => Ok(None),
        }
    }

    /// Why one message does not decode, or `None` if it does.
    fn reject_reason(&self, payload: &[u8]) -> Option<String> {
        let value: serde_json::Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => return Some(format!("invalid JSON: {e}")),
        };
        let Some(object) = value.as_object() else {
            return Some("not a JSON object".into());
        };
        for field in self.schema.fields() {
            if !field.is_nullable() && object.get(field.name()).is_none_or(|v| v.is_null()) {
                return Some(format!("missing required field {}", field.name()));
            }
        }
        let mut decoder = match self.reader().build_decoder() {
            Ok(d) => d,
            Err(e) => return Some(e.to_string()),
        };
        let result = decoder.decode(payload).and_then(|_| decoder.flush());
        match result {
            Ok(Some(batch)) if batch.num_rows() == 1 => self.convert_decimals(&batch).err(),
            Ok(_) => Some("expected exactly one JSON object".into()),
            Err(e) => Some(e.to_string()),
        }
    }

    /// This decoder without its flat fast path: the reference the fast path is checked and
    /// fuzzed against (`engine/src/fuzz.rs`).
    #[cfg(test)]
    pub(crate) fn without_fast_path(mut self) -> Self {
        self.flat = None;
        self
    }
}

/// Two batches of one schema whose rows come from the messages at positions `a.1` and `b.1`
/// (each ascending, no position in both), as one batch in message order, with its positions.
fn merge_in_order(
    a: (&RecordBatch, &[usize]),
    b: (&RecordBatch, &[usize]),
) -> Result<(RecordBatch, Vec<usize>)> {
    let mut order = Vec::with_capacity(a.1.len() + b.1.len());
    let mut rows = Vec::with_capacity(order.capacity());
    let (mut i, mut j) = (0, 0);
    while i < a.1.len() || j < b.1.len() {
        if j == b.1.len() || (i < a.1.len() && a.1[i] < b.1[j]) {
            order.push((0, i));
            rows.push(a.1[i]);
            i += 1;
        } else {
            order.push((1, j));
            rows.push(b.1[j]);
            j += 1;
        }
    }
    let columns = (0..a.0.num_columns())
        .map(|c| interleave(&[a.0.column(c).as_ref(), b.0.column(c).as_ref()], &order))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((RecordBatch::try_new(a.0.schema(), columns)?, rows))
}

/// `value` quoted for a reason, cut after [`MAX_VALUE_IN_REASON`] characters.
fn quoted(value: &str) -> String {
    match value.char_indices().nth(MAX_VALUE_IN_REASON) {
        None => format!("{value:?}"),
        Some((end, _)) => format!(
            "{:?}… ({} characters)",
            &value[..end],
            value.chars().count()
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::datatypes::{Decimal128Type, Int64Type};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("trade_id", DataType::Int64, false),
            Field::new("price", DataType::Decimal128(28, 10), false),
            Field::new("side", DataType::Utf8, true),
        ]))
    }

    fn record(offset: i64, payload: &str) -> RawRecord {
        RawRecord {
            position: crate::RecordPosition::new(0, offset),
            payload: payload.as_bytes().to_vec(),
            rejected: None,
            frame: None,
            received_at: SystemTime::now(),
        }
    }

    #[test]
    fn decodes_clean_batch_exactly() {
        let mut d = RecordDecoder::new(schema());
        let out = d
            .decode(&[
                record(
                    0,
                    r#"{"trade_id":1,"price":"64000.12345678","side":"buy","extra":true}"#,
                ),
                record(1, r#"{"trade_id":2,"price":"0.0000123400"}"#),
            ])
            .unwrap();
        assert!(out.dead_letters.is_empty());
        let prices = out.batch.column(1).as_primitive::<Decimal128Type>();
        assert_eq!(prices.value_as_string(0), "64000.1234567800");
        assert_eq!(prices.value_as_string(1), "0.0000123400");
        assert!(out.batch.column(2).is_null(1));
    }

    #[test]
    fn a_message_never_runs_on_into_the_next_and_the_decoder_recovers() {
        let mut d = RecordDecoder::new(schema());
        let ids = |batch: &RecordBatch| {
            batch
                .column(0)
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        };
        // Glued together, the first two messages would be one valid object.
        let out = d
            .decode(&[
                record(0, r#"{"trade_id":1,"price":"1.5""#),
                record(1, r#","side":"buy"}"#),
                record(2, r#"{"trade_id":3,"price":"2"}"#),
            ])
            .unwrap();
        assert_eq!(ids(&out.batch), vec![3]);
        assert_eq!(out.rows, vec![2], "the row's message");
        let offsets: Vec<i64> = out
            .dead_letters
            .iter()
            .map(|l| l.record_position.offset)
            .collect();
        assert_eq!(offsets, vec![0, 1]);
        // The same decoder, after that failure and with a larger batch, still decodes exactly.
        let out = d
            .decode(&[
                record(3, r#"{"trade_id":4,"price":"3"}"#),
                record(4, r#"{"trade_id":5,"price":"4","side":"sell"}"#),
                record(5, r#"{"trade_id":6,"price":"5"}"#),
                record(6, r#"{"trade_id":7,"price":"6"}"#),
            ])
            .unwrap();
        assert!(out.dead_letters.is_empty());
        assert_eq!(ids(&out.batch), vec![4, 5, 6, 7]);
        let out = d
            .decode(&[record(7, r#"{"trade_id":8,"price":"7"}"#)])
            .unwrap();
        assert_eq!(ids(&out.batch), vec![8]);
        assert!(out.batch.column(2).is_null(0), "nothing left from before");
    }

    #[test]
    fn dead_letters_hostile_messages_and_keeps_the_rest() {
        let mut d = RecordDecoder::new(schema());
        let mut rejected = record(6, "whatever");
        rejected.rejected = Some("not a trade".into());
        let out = d
            .decode(&[
                record(0, r#"{"trade_id":1,"price":"1.5"}"#),
                record(1, r#"{"trade_id":2,"price":"#),
                record(2, r#"{"trade_id":3,"price":"abc"}"#),
                record(3, r#"{"price":"2.5"}"#),
                record(4, r#"{"trade_id":5,"price":"3"}{"trade_id":6,"price":"4"}"#),
                record(5, r#"[1,2]"#),
                rejected,
                record(7, r#"{"trade_id":8,"price":"9.25"}"#),
            ])
            .unwrap();
        let ids = out.batch.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids.values().to_vec(), vec![1, 8]);
        assert_eq!(out.rows, vec![0, 7], "each row's message");
        let reasons: Vec<(i64, &str)> = out
            .dead_letters
            .iter()
            .map(|l| (l.record_position.offset, l.reason.as_str()))
            .collect();
        assert_eq!(reasons.len(), 6, "{reasons:?}");
        assert!(reasons[0].1.starts_with("invalid JSON: EOF"), "{reasons:?}");
        assert!(reasons[1].1.contains("abc"), "{reasons:?}");
        assert_eq!(reasons[2].1, "missing required field trade_id");
        assert!(
            reasons[3]
                .1
                .starts_with("invalid JSON: trailing characters"),
            "{reasons:?}"
        );
        assert_eq!(reasons[4].1, "not a JSON object");
        assert_eq!(reasons[5], (6, "not a trade"));
        assert_eq!(
            out.dead_letters[1].raw,
            br#"{"trade_id":3,"price":"abc"}"#.to_vec()
        );
    }

    /// Each message's decimal as stored (or its dead-letter reason), and the roundings counted.
    fn decimals(
        d: &mut RecordDecoder,
        messages: &[String],
    ) -> (Vec<Result<String, String>>, usize) {
        let records: Vec<RawRecord> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| record(i as i64, m))
            .collect();
        let out = d.decode(&records).unwrap();
        let prices = out.batch.column(1).as_primitive::<Decimal128Type>();
        let ids = out.batch.column(0).as_primitive::<Int64Type>();
        let mut values = vec![None; messages.len()];
        for row in 0..out.batch.num_rows() {
            values[ids.value(row) as usize] = Some(Ok(prices.value_as_string(row)));
        }
        for letter in &out.dead_letters {
            values[letter.record_position.offset as usize] = Some(Err(letter.reason.clone()));
        }
        let values = values.into_iter().map(Option::unwrap).collect();
        (values, out.rounded_decimals)
    }

    /// Hostile decimal texts (as JSON strings, or JSON numbers where JSON allows) with what
    /// the round-half-up policy makes of them: a value, or the dead-letter reason.
    const DECIMAL_CASES: &[(&str, Result<&str, &str>)] = &[
        // The decimal-excess-scale case.
        (r#""0.79600000009""#, Ok("0.7960000001")),
        (r#""0.00000000019""#, Ok("0.0000000002")),
        (r#""0.742100000051""#, Ok("0.7421000001")),
        (r#""1.99999999999""#, Ok("2.0000000000")),
        ("0.79600000009", Ok("0.7960000001")),
        ("-0.00000000005", Ok("-0.0000000001")),
        (r#""-0.00000000004999""#, Ok("0.0000000000")),
        ("1.10", Ok("1.1000000000")),
        ("1e5", Ok("100000.0000000000")),
        (r#""1.5E+4""#, Ok("15000.0000000000")),
        ("1.5E+4", Ok("15000.0000000000")),
        (r#""25e-3""#, Ok("0.0250000000")),
        (r#""+2.5""#, Ok("2.5000000000")),
        (r#"".5""#, Ok("0.5000000000")),
        (r#""5.""#, Ok("5.0000000000")),
        (
            r#""0.500000000000000000000000000000000000000000000000""#,
            Ok("0.5000000000"),
        ),
        (
            r#""0.123456789049999999999999999999999999999999999999""#,
            Ok("0.1234567890"),
        ),
        ("123456789012345678", Ok("123456789012345678.0000000000")),
        (
            r#""NaN""#,
            Err(
                r#"column price: "NaN" is not a decimal: NaN and infinities are not finite decimals"#,
            ),
        ),
        (
            r#""-Infinity""#,
            Err(
                r#"column price: "-Infinity" is not a decimal: NaN and infinities are not finite decimals"#,
            ),
        ),
        (r#""Infinity""#, Err("is not a decimal: NaN and infinities")),
        (
            r#"" 1.5""#,
            Err(r#"column price: " 1.5" is not a decimal: contains spaces"#),
        ),
        (r#""1.5 ""#, Err("contains spaces")),
        (r#""1 000""#, Err("contains spaces")),
        (
            r#""1,000.5""#,
            Err(r#"column price: "1,000.5" is not a decimal"#),
        ),
        (r#""0x10""#, Err("is not a decimal")),
        (r#""""#, Err(r#"column price: "" is not a decimal: empty"#)),
        ("true", Err(r#"column price: "true" is not a decimal"#)),
        (
            "1234567890123456789",
            Err(
                r#"column price: "1234567890123456789" does not fit decimal(28,10): more than 18 integer digits"#,
            ),
        ),
        ("1e18", Err("does not fit decimal(28,10)")),
        (
            r#""999999999999999999.99999999995""#,
            Err("does not fit decimal(28,10)"),
        ),
        (
            r#""11111111111111111111111111111111111111111111111111111111111111111""#,
            Err(
                r#"column price: "1111111111111111111111111111111111111111"… (65 characters) does not fit"#,
            ),
        ),
    ];

    fn decimal_messages() -> Vec<String> {
        DECIMAL_CASES
            .iter()
            .enumerate()
            .map(|(i, (price, _))| format!(r#"{{"trade_id":{i},"price":{price},"side":"buy"}}"#))
            .collect()
    }

    fn check_decimal_case(case: usize, got: &Result<String, String>) {
        let (input, expected) = &DECIMAL_CASES[case];
        match (expected, got) {
            (Ok(want), Ok(got)) => assert_eq!(want, got, "{input}"),
            (Err(want), Err(got)) => assert!(got.contains(want), "{input}: {got:?}"),
            _ => panic!("{input}: expected {expected:?}, got {got:?}"),
        }
    }

    #[test]
    fn decimals_become_the_policys_value_or_a_dead_letter_naming_column_and_value() {
        let messages = decimal_messages();
        let (values, rounded) = decimals(&mut RecordDecoder::new(schema()), &messages);
        assert_eq!(values.len(), DECIMAL_CASES.len());
        for (case, got) in values.iter().enumerate() {
            check_decimal_case(case, got);
        }
        // 0.79600000009 (twice), 0.00000000019, 0.742100000051, 1.99999999999, -0.00000000005,
        // -0.00000000004999, 0.1234567890499…
        assert_eq!(rounded, 8);
    }

    #[test]
    fn both_decoder_paths_give_the_same_decimals() {
        let messages = decimal_messages();
        let mut fast = RecordDecoder::new(schema());
        let mut arrow = RecordDecoder::new(schema()).without_fast_path();
        // Whole batches, and each message alone (so the clean ones take the fast path).
        assert_eq!(
            decimals(&mut fast, &messages),
            decimals(&mut arrow, &messages)
        );
        for (i, m) in messages.iter().enumerate() {
            let m = [m.replace(&format!(r#""trade_id":{i}"#), r#""trade_id":0"#)];
            let (values, rounded) = decimals(&mut fast, &m);
            assert_eq!((values.clone(), rounded), decimals(&mut arrow, &m), "{m:?}");
            check_decimal_case(i, &values[0]);
        }
    }

    #[test]
    fn a_batch_the_fast_path_declines_gives_the_values_the_fast_path_gives() {
        let clean: Vec<String> = DECIMAL_CASES
            .iter()
            .enumerate()
            .filter(|(_, (_, expected))| expected.is_ok())
            .map(|(i, (price, _))| format!(r#"{{"trade_id":{i},"price":{price},"side":"buy"}}"#))
            .collect();
        let flat = FlatDecoder::new(schema(), DecimalPolicy::RoundHalfUp).unwrap();
        assert!(flat.decode(clean.iter().map(|m| m.as_bytes())).is_some());
        // An escape in one message sends that message to arrow's decoder.
        let mut escaped = clean.clone();
        escaped[0] = escaped[0].replace(r#""buy""#, r#""b\u0075y""#);
        assert!(flat.decode(escaped.iter().map(|m| m.as_bytes())).is_none());
        let mut d = RecordDecoder::new(schema());
        let (fast_values, fast_rounded) = decimals(&mut d, &clean);
        let (arrow_values, arrow_rounded) = decimals(&mut d, &escaped);
        assert_eq!(fast_values, arrow_values);
        assert_eq!(fast_rounded, arrow_rounded);
        assert!(fast_rounded > 0);
    }

    /// Batches mixing plain messages, messages only arrow's decoder reads, dead letters and
    /// messages a source already rejected decode exactly as the decoder without its fast path
    /// decodes them: the same rows in the same order, the same dead letters with the same
    /// reasons, the same count of rounded decimals.
    #[test]
    fn mixed_batches_decode_as_without_the_fast_path() {
        let kinds = [
            r#"{"trade_id":ID,"price":"64000.12","side":"buy"}"#,
            r#"{"trade_id":ID,"price":1.123456789012,"side":"sell"}"#,
            r#"{"trade_id":ID,"price":"7","side":"b\u0075y"}"#,
            r#"{"trade_id":ID,"price":"8","side":{"nested":1}}"#,
            r#"{"trade_id":ID,"price":"abc"}"#,
            r#"{"price":"2.5","side":"buy"}"#,
            r#"{"trade_id":ID,"price":"#,
            r#"{"trade_id":ID,"price":"1"}{"trade_id":0,"price":"2"}"#,
            r#"{"trade_id":ID,"price":"3","price":"4"}"#,
            r#"REJECTED"#,
        ];
        let mut fast = RecordDecoder::new(schema());
        let mut reference = RecordDecoder::new(schema()).without_fast_path();
        let mut seed: u64 = 0x5eed;
        let mut took_both_paths = 0;
        for batch in 0..300 {
            let len = 1 + batch % 17;
            let records: Vec<RawRecord> = (0..len)
                .map(|i| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    // Mostly plain messages, as a real stream has.
                    let pick = (seed >> 33) as usize % (kinds.len() * 2);
                    let kind = kinds[pick.saturating_sub(kinds.len())];
                    let offset = (batch * 100 + i) as i64;
                    let mut r = record(offset, &kind.replace("ID", &offset.to_string()));
                    if kind == "REJECTED" {
                        r.rejected = Some("not a trade".into());
                    }
                    r
                })
                .collect();
            let got = fast.decode(&records).unwrap();
            let want = reference.decode(&records).unwrap();
            let letters = |d: &Decoded| -> Vec<(i64, String)> {
                d.dead_letters
                    .iter()
                    .map(|l| (l.record_position.offset, l.reason.clone()))
                    .collect()
            };
            assert_eq!(got.batch, want.batch, "batch {batch}");
            assert_eq!(got.rows, want.rows, "batch {batch}");
            assert_eq!(letters(&got), letters(&want), "batch {batch}");
            assert_eq!(got.rounded_decimals, want.rounded_decimals, "batch {batch}");
            if !got.dead_letters.is_empty() && got.rows.len() > 1 {
                took_both_paths += 1;
            }
        }
        assert!(took_both_paths > 50, "{took_both_paths}");
    }

    #[test]
    fn reject_policy_dead_letters_values_that_would_change_and_keeps_exact_ones() {
        let messages: Vec<String> = [
            r#""0.79600000009""#,
            "1.10",
            r#""2.50000000000000""#,
            "0.00000000019",
        ]
        .iter()
        .enumerate()
        .map(|(i, price)| format!(r#"{{"trade_id":{i},"price":{price}}}"#))
        .collect();
        let reject = || RecordDecoder::new(schema()).with_decimal_policy(DecimalPolicy::Reject);
        for mut d in [reject(), reject().without_fast_path()] {
            let (values, rounded) = decimals(&mut d, &messages);
            assert_eq!(rounded, 0);
            assert_eq!(
                values,
                vec![
                    Err(r#"column price: "0.79600000009" has non-zero digits beyond the scale 10 (decimal policy reject)"#.to_owned()),
                    Ok("1.1000000000".to_owned()),
                    Ok("2.5000000000".to_owned()),
                    Err(r#"column price: "0.00000000019" has non-zero digits beyond the scale 10 (decimal policy reject)"#.to_owned()),
                ]
            );
        }
    }

    #[test]
    fn arrows_decoder_keeps_a_json_numbers_text_for_the_decimal_parser() {
        let mut d = RecordDecoder::new(schema());
        let texts = [
            "1.10",
            "1e5",
            "0.79600000009",
            "-0.0",
            "123456789012345678901234567890",
            "1.5E+4",
        ];
        let records: Vec<RawRecord> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| record(i as i64, &format!(r#"{{"trade_id":{i},"price":{t}}}"#)))
            .collect();
        let text = d.decode_all(records.iter()).unwrap().expect("decodes");
        let prices = text.column(1).as_string::<i32>();
        let got: Vec<&str> = prices.iter().map(Option::unwrap).collect();
        assert_eq!(got, texts);
    }

    #[test]
    fn empty_input_gives_empty_batch() {
        let mut d = RecordDecoder::new(schema());
        let out = d.decode(&[]).unwrap();
        assert_eq!(out.batch.num_rows(), 0);
        let mut rejected = record(0, "whatever");
        rejected.rejected = Some("not a trade".into());
        for mut d in [
            RecordDecoder::new(schema()),
            RecordDecoder::new(schema()).without_fast_path(),
        ] {
            let out = d.decode(std::slice::from_ref(&rejected)).unwrap();
            assert_eq!(out.batch.num_rows(), 0);
            assert_eq!(out.batch.schema(), schema());
            assert_eq!(out.dead_letters.len(), 1);
        }
    }
}
