//! `[dead_letter] type = "file"`: one JSON-lines file per batch under a folder, written atomically
//! and named by batch id (a replayed batch rewrites its own file). Each line holds the message's
//! topic, partition, offset, reason, the message as received (`raw`, as text when it is UTF-8,
//! else `raw_base64`) and, when the source converted it (a feed frame made a bus record), the
//! converted record (`record`, likewise or `record_base64`).

use std::path::PathBuf;

use async_trait::async_trait;
use engine::checkpoint::write_atomically;
use engine::{DeadLetter, DeadLetterSink, Error, Result};
use serde::Deserialize;
use serde_json::json;

/// `[dead_letter] type = "file"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDeadLetterConfig {
    /// The folder.
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

/// One dead letter as a JSON object.
pub fn dead_letter_json(letter: &DeadLetter) -> serde_json::Value {
    let mut value = json!({
        "topic": letter.topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "reason": letter.reason,
    });
    put_bytes(&mut value, "raw", &letter.raw);
    if let Some(record) = &letter.record {
        put_bytes(&mut value, "record", record);
    }
    value
}

/// Sets `key` to `bytes` as text when they are UTF-8, else `<key>_base64` to their base64.
fn put_bytes(value: &mut serde_json::Value, key: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => value[key] = json!(text),
        Err(_) => value[format!("{key}_base64")] = json!(base64(bytes)),
    }
}

#[async_trait]
impl DeadLetterSink for FileDeadLetterSink {
    fn description(&self) -> String {
        format!("dead letters in {}", self.config.path.display())
    }

    async fn write(&mut self, batch_id: u64, letters: &[DeadLetter]) -> Result<()> {
        let mut body = Vec::new();
        for letter in letters {
            body.extend_from_slice(dead_letter_json(letter).to_string().as_bytes());
            body.push(b'\n');
        }
        let path = self.config.path.join(format!("batch-{batch_id:010}.jsonl"));
        tokio::task::spawn_blocking(move || write_atomically(&path, &body))
            .await
            .map_err(|e| Error::Internal(format!("dead-letter writer task failed: {e}")))?
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
            topic: "feed".into(),
            partition: 0,
            offset: 3,
            payload: converted.to_vec(),
            rejected: None,
            frame: Some(engine::Bytes::from_static(frame)),
            received_at: std::time::SystemTime::now(),
        };
        let value = dead_letter_json(&DeadLetter::from_record(&record, "price out of range"));
        assert_eq!(
            value,
            json!({
                "topic": "feed",
                "partition": 0,
                "offset": 3,
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
}
