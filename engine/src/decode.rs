//! Turns raw messages into an Arrow `RecordBatch` of a declared schema with arrow's JSON decoder.
//! Messages that do not decode become dead letters with their reason; the rest of the batch still
//! flows. It knows nothing of where the bytes came from.
//!
//! Three tries, each only when the one before failed, so clean batches pay nothing for the
//! dead-letter policy:
//! 1. [`FlatDecoder`](crate::flat_json), for batches of flat objects in the plain shape
//!    connectors write (no escapes, no nesting), straight into the columns;
//! 2. arrow's decoder over the whole batch, each message checked to hold exactly one complete
//!    object;
//! 3. each message alone, to find the bad ones and their reasons.
//!
//! The decoder is kept from batch to batch: it owns buffers sized for a whole batch, and building
//! a new one per batch spent more time in page faults than in parsing.

use arrow::datatypes::SchemaRef;
use arrow::json::ReaderBuilder;
use arrow::json::reader::Decoder;
use arrow::record_batch::RecordBatch;

use crate::error::Result;
use crate::flat_json::FlatDecoder;
use crate::sink::DeadLetter;
use crate::source::RawRecord;

/// The result of decoding one batch.
#[derive(Debug)]
pub struct Decoded {
    /// The rows of every message that decoded, in input order.
    pub batch: RecordBatch,
    /// The messages that did not.
    pub dead_letters: Vec<DeadLetter>,
}

/// Decodes JSON messages into a declared schema.
pub struct RecordDecoder {
    schema: SchemaRef,
    /// The fast path for flat records, when the schema's types allow it.
    flat: Option<FlatDecoder>,
    /// The reusable decoder and the most rows it takes per batch; dropped after any error, since
    /// a failed decoder may hold part of a row.
    decoder: Option<(Decoder, usize)>,
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
        Self {
            flat: FlatDecoder::new(schema.clone()),
            schema,
            decoder: None,
        }
    }

    /// The schema rows are decoded into.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes `records`; see the module docs.
    pub fn decode(&mut self, records: &[RawRecord]) -> Result<Decoded> {
        let all_clean = records.iter().all(|r| r.rejected.is_none());
        if all_clean
            && let Some(flat) = &self.flat
            && let Some(batch) = flat.decode(records.iter().map(|r| r.payload.as_slice()))
        {
            return Ok(Decoded {
                batch,
                dead_letters: Vec::new(),
            });
        }
        if all_clean && let Some(batch) = self.decode_all(records.iter())? {
            return Ok(Decoded {
                batch,
                dead_letters: Vec::new(),
            });
        }
        let mut good = Vec::with_capacity(records.len());
        let mut dead_letters = Vec::new();
        for record in records {
            let reason = match &record.rejected {
                Some(reason) => Some(reason.clone()),
                None => self.reject_reason(&record.payload),
            };
            match reason {
                None => good.push(record),
                Some(reason) => dead_letters.push(DeadLetter::from_record(record, reason)),
            }
        }
        let batch = match self.decode_all(good.iter().copied())? {
            Some(batch) => batch,
            None => {
                return Err(crate::Error::Internal(
                    "messages that decoded one by one failed to decode together".into(),
                ));
            }
        };
        Ok(Decoded {
            batch,
            dead_letters,
        })
    }

    /// Decodes every record in one pass; `None` if any record failed or did not hold exactly one
    /// JSON object.
    fn decode_all<'a>(
        &mut self,
        records: impl ExactSizeIterator<Item = &'a RawRecord>,
    ) -> Result<Option<RecordBatch>> {
        let expected = records.len();
        if expected == 0 {
            return Ok(Some(RecordBatch::new_empty(self.schema.clone())));
        }
        let mut decoder = match self.decoder.take() {
            Some((decoder, rows)) if rows >= expected => (decoder, rows),
            _ => (
                ReaderBuilder::new(self.schema.clone())
                    .with_batch_size(expected)
                    .build_decoder()?,
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
        let mut decoder = match ReaderBuilder::new(self.schema.clone()).build_decoder() {
            Ok(d) => d,
            Err(e) => return Some(e.to_string()),
        };
        let result = decoder.decode(payload).and_then(|_| decoder.flush());
        match result {
            Ok(Some(batch)) if batch.num_rows() == 1 => None,
            Ok(_) => Some("expected exactly one JSON object".into()),
            Err(e) => Some(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use arrow::array::{Array, Decimal128Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};

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
            topic: "t".into(),
            partition: 0,
            offset,
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
        let prices = out
            .batch
            .column(1)
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .unwrap();
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
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
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
        let offsets: Vec<i64> = out.dead_letters.iter().map(|l| l.offset).collect();
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
        let ids = out
            .batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids.values().to_vec(), vec![1, 8]);
        let reasons: Vec<(i64, &str)> = out
            .dead_letters
            .iter()
            .map(|l| (l.offset, l.reason.as_str()))
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

    #[test]
    fn empty_input_gives_empty_batch() {
        let mut d = RecordDecoder::new(schema());
        let out = d.decode(&[]).unwrap();
        assert_eq!(out.batch.num_rows(), 0);
    }
}
