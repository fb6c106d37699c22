//! `[dead_letter] type = "file"`: one JSON-lines file per batch under a folder, written atomically
//! and named by batch id (a replayed batch rewrites its own file). Each line is one JSON object
//! ([`dead_letter_json`]):
//! - `position`: where the message came from, as its source describes it: a Kafka record
//!   `{"topic":"t","partition":0,"offset":5}`, a capture line `{"file":"/data/feed.jsonl","line":12}`
//!   (lines counted from 1), a Coinbase trade `{"product":"BTC-USD","trade_id":42}` or frame
//!   `{"url":"wss://…","frame":7}`, a generated trade `{"trade":99}`;
//! - `topic`, `partition`, `offset`: for a Kafka record, its position again, at the top level as
//!   letters had it before positions were per source (absent for other sources);
//! - `reason`: why it was rejected;
//! - `raw`: the message as received, as text when it is UTF-8, else `raw_base64`;
//! - `record`: when the source converted the message (a feed frame made a bus record), the
//!   converted record, likewise or `record_base64`.
//!
//! [`truncated_dead_letter_json`] is the cut-down form an output that limits message sizes (the
//! Kafka one) falls back to; the file output always writes letters whole.

use std::path::PathBuf;

use async_trait::async_trait;
use engine::checkpoint::write_atomically;
use engine::{DeadLetter, DeadLetterSink, Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::common::files::io_retry;

/// `[dead_letter] type = "file"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDeadLetterConfig {
    /// The folder, relative to the config file.
    #[serde(deserialize_with = "crate::common::config::path")]
    pub path: PathBuf,
}

/// The file dead-letter output.
pub struct FileDeadLetterSink {
    config: FileDeadLetterConfig,
}

impl FileDeadLetterSink {
    /// Builds the output; the folder is created now.
    pub fn new(config: FileDeadLetterConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.path).map_err(|e| Error::io(&config.path, e))?;
        Ok(Self { config })
    }
}

/// The fields of a Kafka record's position, which its letters also carry at the top level.
const KAFKA_POSITION_FIELDS: [&str; 3] = ["topic", "partition", "offset"];

/// The letter's `position` and, when it is a Kafka record's (it has `topic`, `partition` and
/// `offset`), those three at the top level too.
fn position_fields(letter: &DeadLetter) -> serde_json::Value {
    let mut value = json!({ "position": letter.position });
    if KAFKA_POSITION_FIELDS
        .iter()
        .all(|k| letter.position.get(k).is_some())
    {
        for k in KAFKA_POSITION_FIELDS {
            value[k] = letter.position[k].clone();
        }
    }
    value
}

/// One dead letter as a JSON object (the shape is in the module docs).
pub fn dead_letter_json(letter: &DeadLetter) -> serde_json::Value {
    serde_json::to_value(Letter::of(letter)).unwrap_or_else(|_| json!({}))
}

/// A dead letter as [`dead_letter_json`] makes it, serialised straight from the letter: the file
/// output writes tens of megabytes of letters per capture, and building a JSON tree per letter
/// first cost more than writing them. Keys in alphabetical order, as `serde_json::Value`'s.
#[derive(Serialize)]
struct Letter<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<&'a serde_json::Value>,
    position: &'a serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_base64: Option<String>,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    record_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a serde_json::Value>,
}

impl<'a> Letter<'a> {
    fn of(letter: &'a DeadLetter) -> Self {
        let kafka = KAFKA_POSITION_FIELDS
            .iter()
            .all(|k| letter.position.get(k).is_some());
        let top = |k: &str| kafka.then(|| &letter.position[k]);
        let (raw, raw_base64) = text_or_base64(&letter.raw);
        let (record, record_base64) = match &letter.record {
            Some(record) => text_or_base64(record),
            None => (None, None),
        };
        Self {
            offset: top("offset"),
            partition: top("partition"),
            position: &letter.position,
            raw,
            raw_base64,
            reason: &letter.reason,
            record,
            record_base64,
            topic: top("topic"),
        }
    }
}

/// `bytes` as text when they are UTF-8, else as base64.
fn text_or_base64(bytes: &[u8]) -> (Option<&str>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text), None),
        Err(_) => (None, Some(base64(bytes))),
    }
}

/// The most of `reason` a truncated dead letter keeps, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;

/// The dead letter as JSON cut down for an output that refused it whole: `raw` and `record` keep
/// at most their first `max_bytes` bytes and `reason` at most its first
/// `min(max_bytes, MAX_REASON_BYTES)`, each cut at a character boundary when it is text (bytes
/// that are not UTF-8 stay `_base64`, of the kept prefix). `truncated: true` marks it, and
/// `raw_bytes` (`record_bytes`, `reason_bytes` when those were cut) give the original sizes;
/// the position is always whole. `None` when nothing is longer than the limits
/// (the letter is already as small as this form would make it).
pub fn truncated_dead_letter_json(
    letter: &DeadLetter,
    max_bytes: usize,
) -> Option<serde_json::Value> {
    let reason_max = max_bytes.min(MAX_REASON_BYTES);
    let record_len = letter.record.as_ref().map_or(0, Vec::len);
    if letter.raw.len() <= max_bytes && record_len <= max_bytes && letter.reason.len() <= reason_max
    {
        return None;
    }
    let reason = text_prefix(&letter.reason, reason_max);
    let mut value = position_fields(letter);
    value["reason"] = json!(reason);
    value["truncated"] = json!(true);
    value["raw_bytes"] = json!(letter.raw.len());
    if reason.len() < letter.reason.len() {
        value["reason_bytes"] = json!(letter.reason.len());
    }
    put_prefix(&mut value, "raw", &letter.raw, max_bytes);
    if let Some(record) = &letter.record {
        value["record_bytes"] = json!(record.len());
        put_prefix(&mut value, "record", record, max_bytes);
    }
    Some(value)
}

/// As [`put_bytes`] with at most the first `max` bytes; text or base64 as the whole would be.
fn put_prefix(value: &mut serde_json::Value, key: &str, bytes: &[u8], max: usize) {
    match std::str::from_utf8(bytes) {
        Ok(text) => value[key] = json!(text_prefix(text, max)),
        Err(_) => value[format!("{key}_base64")] = json!(base64(&bytes[..bytes.len().min(max)])),
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends at a character boundary.
fn text_prefix(text: &str, max: usize) -> &str {
    &text[..text.floor_char_boundary(max)]
}

#[async_trait]
impl DeadLetterSink for FileDeadLetterSink {
    fn description(&self) -> String {
        format!("dead letters in {}", self.config.path.display())
    }

    async fn write(&mut self, batch_id: u64, letters: &[DeadLetter]) -> Result<()> {
        let mut body = Vec::new();
        for letter in letters {
            serde_json::to_writer(&mut body, &Letter::of(letter))
                .map_err(|e| Error::Internal(format!("a dead letter did not serialise: {e}")))?;
            body.push(b'\n');
        }
        let path = self.config.path.join(format!("batch-{batch_id:010}.jsonl"));
        let written = tokio::task::spawn_blocking(move || write_atomically(&path, &body))
            .await
            .map_err(|e| Error::Internal(format!("dead-letter writer task failed: {e}")))?;
        // An output's failure is a sink error with its class, so the runtime retries what may
        // clear (a full disk) and stops on what cannot (a folder that became a file).
        written.map_err(|e| match e {
            Error::Io { path, source } => Error::sink_failed(
                self.description(),
                format!("cannot write {}", path.display()),
                io_retry(&source),
            )
            .caused_by(source),
            other => other,
        })
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE=");
        assert_eq!(base64(b"M"), "TQ==");
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }

    #[test]
    fn a_dead_letter_holds_the_frame_as_received_and_the_converted_record() {
        let frame = br#"{"type":"match","side":"sell","price":"1e999"}"#;
        let converted = br#"{"side":"buy","price":"1e999"}"#;
        let record = engine::RawRecord {
            position: engine::RecordPosition::new(0, 3),
            payload: converted.to_vec(),
            rejected: None,
            frame: Some(engine::Bytes::from_static(frame)),
            received_at: std::time::SystemTime::now(),
        };
        let mut letter = DeadLetter::from_record(&record, "price out of range");
        // As the runtime sets it: the source's description.
        letter.position = json!({"file": "/data/feed.jsonl", "line": 4});
        let value = dead_letter_json(&letter);
        assert_eq!(
            value,
            json!({
                "position": {"file": "/data/feed.jsonl", "line": 4},
                "reason": "price out of range",
                "raw": std::str::from_utf8(frame).unwrap(),
                "record": std::str::from_utf8(converted).unwrap(),
            })
        );
        // A message the source passed on unchanged has no separate record; bytes that are not
        // UTF-8 are kept as base64.
        let record = engine::RawRecord {
            payload: vec![0xff, 0xfe],
            frame: None,
            ..record
        };
        let value = dead_letter_json(&DeadLetter::from_record(&record, "not JSON"));
        assert_eq!(value["raw_base64"], "//4=");
        assert!(value.get("record").is_none() && value.get("raw").is_none());
    }

    #[tokio::test]
    async fn the_file_holds_one_line_per_letter_with_its_json() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileDeadLetterSink::new(FileDeadLetterConfig {
            path: dir.path().to_owned(),
        })
        .unwrap();
        let mut capture_line = letter(b"not json", None, "invalid JSON: \"quoted\"");
        capture_line.position = json!({"file": "/data/feed.jsonl", "line": 2});
        let letters = [
            letter(b"{\"a\":1}", Some(b"{\"b\":2}"), "kafka"),
            letter(&[0xff, 0x00], Some(&[0xfe]), "binary"),
            capture_line,
        ];
        sink.write(7, &letters).await.unwrap();
        let text = std::fs::read_to_string(dir.path().join("batch-0000000007.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["topic"], "trades");
        assert_eq!(lines[0]["offset"], 1_234_567);
        assert_eq!(lines[0]["record"], "{\"b\":2}");
        assert_eq!(lines[1]["raw_base64"], "/wA=");
        assert_eq!(lines[1]["record_base64"], "/g==");
        assert_eq!(
            lines[2],
            json!({
                "position": {"file": "/data/feed.jsonl", "line": 2},
                "reason": "invalid JSON: \"quoted\"",
                "raw": "not json",
            })
        );
        for (line, letter) in lines.iter().zip(&letters) {
            assert_eq!(line, &dead_letter_json(letter));
        }
    }

    fn letter(raw: &[u8], record: Option<&[u8]>, reason: &str) -> DeadLetter {
        DeadLetter {
            position: json!({"topic": "trades", "partition": 4, "offset": 1_234_567}),
            record_position: engine::RecordPosition::new(0, 1_234_567),
            raw: raw.to_vec(),
            record: record.map(<[u8]>::to_vec),
            reason: reason.into(),
        }
    }

    #[test]
    fn a_truncated_dead_letter_keeps_a_prefix_and_the_original_sizes() {
        let raw = "x".repeat(100_000);
        let value = truncated_dead_letter_json(&letter(raw.as_bytes(), None, "not JSON"), 256)
            .expect("cut");
        assert_eq!(
            value,
            json!({
                "position": {"topic": "trades", "partition": 4, "offset": 1_234_567},
                "topic": "trades",
                "partition": 4,
                "offset": 1_234_567,
                "reason": "not JSON",
                "truncated": true,
                "raw_bytes": 100_000,
                "raw": "x".repeat(256),
            })
        );
        // The 256-byte prefix, the position (whole, and once more at the top level for a Kafka
        // record) and the markers.
        assert!(value.to_string().len() < 500, "{}", value.to_string().len());
    }

    #[test]
    fn a_letter_within_the_limits_is_not_truncated() {
        let small = letter(b"{\"price\":1}", Some(b"{}"), "bad price");
        assert_eq!(truncated_dead_letter_json(&small, 256), None);
        // At the limit exactly: still whole.
        let exact = letter(&[b'a'; 256], None, "r");
        assert_eq!(truncated_dead_letter_json(&exact, 256), None);
        assert!(truncated_dead_letter_json(&exact, 255).is_some());
    }

    #[test]
    fn truncation_cuts_text_at_a_character_boundary() {
        // "€" is 3 bytes and "é" 2: cuts at 256 and 1024 bytes would fall inside a character.
        let raw = "€".repeat(1000);
        let value = truncated_dead_letter_json(&letter(raw.as_bytes(), None, "r"), 256).unwrap();
        let kept = value["raw"].as_str().unwrap();
        assert_eq!(kept.len(), 255, "85 whole euro signs");
        assert!(raw.starts_with(kept));
        assert_eq!(value["raw_bytes"], 3000);
        let reason = format!("a{}", "é".repeat(600));
        let value = truncated_dead_letter_json(&letter(b"{}", None, &reason), 4096).unwrap();
        let kept = value["reason"].as_str().unwrap();
        assert_eq!(
            (kept.len(), value["reason_bytes"].as_u64()),
            (1023, Some(1201))
        );
        assert!(reason.starts_with(kept));
        assert_eq!(value["raw"], "{}", "the raw message was not cut");
    }

    #[test]
    fn truncation_keeps_bytes_that_are_not_utf8_as_base64_of_the_prefix() {
        // Invalid UTF-8 only after the cut: the letter still says base64, as the whole would.
        let mut raw = vec![b'a'; 300];
        raw.push(0xff);
        let converted = "é".repeat(200);
        let value =
            truncated_dead_letter_json(&letter(&raw, Some(converted.as_bytes()), "overflow"), 256)
                .unwrap();
        assert_eq!(value["raw_base64"], base64(&[b'a'; 256]));
        assert!(value.get("raw").is_none());
        assert_eq!(value["raw_bytes"], 301);
        assert_eq!(value["record"], "é".repeat(128));
        assert_eq!(value["record_bytes"], 400);
        assert_eq!(
            (
                &value["topic"],
                &value["partition"],
                &value["offset"],
                &value["reason"]
            ),
            (
                &json!("trades"),
                &json!(4),
                &json!(1_234_567),
                &json!("overflow")
            )
        );
    }
}
