//! Hive-style partition folders (`name=value/`) read back by hand, for tests that open the
//! store's Parquet files one by one: the partition columns live in the folder names only.
//! Decoded independently of the sink's own code, as Spark's `unescapePathName` does.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

/// Hive's folder value for a null.
pub const NULL_VALUE: &str = "__HIVE_DEFAULT_PARTITION__";

/// The `(name, value)` of each `name=value` folder between `root` and `file`, outermost first,
/// both percent-decoded; a null value as `None`.
///
/// # Panics
/// When a folder between them is not `name=value` or escapes a byte badly.
pub fn partition_values(root: &Path, file: &Path) -> Vec<(String, Option<String>)> {
    let folders = file
        .parent()
        .and_then(|p| p.strip_prefix(root).ok())
        .unwrap_or_else(|| panic!("{file:?} is not under {root:?}"));
    folders
        .iter()
        .map(|part| {
            let part = part.to_str().expect("a UTF-8 folder name");
            let (name, value) = part
                .split_once('=')
                .unwrap_or_else(|| panic!("folder {part:?} of {file:?} is not name=value"));
            let value = (value != NULL_VALUE).then(|| unescape(value));
            (unescape(name), value)
        })
        .collect()
}

/// `batch`, read from `file` under `root`, with its partition columns appended as text.
pub fn with_partition_columns(root: &Path, file: &Path, batch: RecordBatch) -> RecordBatch {
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut columns = batch.columns().to_vec();
    for (name, value) in partition_values(root, file) {
        assert!(
            batch.column_by_name(&name).is_none(),
            "{file:?} also holds partition column {name}"
        );
        fields.push(Field::new(name, DataType::Utf8, true));
        columns.push(Arc::new(StringArray::from(vec![
            value.as_deref();
            batch.num_rows()
        ])));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("a consistent batch")
}

/// Undoes `%XX` escapes.
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).expect("two hex digits after %");
            out.push(u8::from_str_radix(hex, 16).expect("two hex digits after %"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("UTF-8 once unescaped")
}
