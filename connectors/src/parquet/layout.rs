//! The store's file layout, the one Hive and Spark write and every reader expects: one folder per
//! partition value, `name=value`, outermost column first, holding files that lack the partition
//! columns (`symbol=BTC-USD/trade_date=2026-11-30/part-0000000042-0000.parquet`). Owns folder
//! and file names only; knows nothing of Arrow or of writing files.

/// The folder value of a null, as Hive and Spark write it; pyarrow, DuckDB and Spark read it back
/// as null.
pub const NULL_VALUE: &str = "__HIVE_DEFAULT_PARTITION__";

/// A character Hive percent-escapes in a folder name: the ASCII controls, `"#%'*/:=?\{[]^` and
/// DEL, as Spark's `ExternalCatalogUtils.escapePathName` does off Windows. Everything else,
/// non-ASCII included, is kept as it is.
fn needs_escaping(c: char) -> bool {
    c < ' ' || c == '\u{7f}' || "\"#%'*/:=?\\{[]^".contains(c)
}

/// `text` as a folder name part: every character of [`needs_escaping`] as `%XX` (upper-case hex),
/// so a reader that unescapes gets `text` back exactly.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if needs_escaping(c) {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// The folder of one partition value: `name=value` with both escaped, a null as [`NULL_VALUE`].
///
/// # Errors
/// A value that readers could not tell from another one: the empty string (Hive and Spark read
/// `name=` as null) and the text of [`NULL_VALUE`] itself. The message names the column.
pub fn folder(name: &str, value: Option<&str>) -> Result<String, String> {
    let value = match value {
        None => NULL_VALUE.to_owned(),
        Some("") => {
            return Err(format!(
                "partition column {name} holds an empty string, which readers take for null; \
                 partition by a column without empty values"
            ));
        }
        Some(NULL_VALUE) => {
            return Err(format!(
                "partition column {name} holds the text {NULL_VALUE}, which readers take for \
                 null; partition by another column"
            ));
        }
        Some(text) => escape(text),
    };
    Ok(format!("{}={value}", escape(name)))
}

/// The finished file of part `part` of batch `batch_id`: named by the batch, so a batch replayed
/// after a crash overwrites its own files instead of adding rows.
pub fn file_name(batch_id: u64, part: usize) -> String {
    format!("part-{batch_id:010}-{part:04}.parquet")
}

/// Where `file_name` is written before it is complete. The leading dot hides it from pyarrow and
/// Spark (they skip names starting with `.` or `_`), and the `.tmp` ending from DuckDB's
/// `**/*.parquet` glob and DataFusion's `.parquet` listing.
pub fn temp_name(file_name: &str) -> String {
    format!(".{file_name}.tmp")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_hive_escapes_and_nothing_else() {
        assert_eq!(escape("BTC-USD"), "BTC-USD");
        assert_eq!(escape("2026-11-30"), "2026-11-30");
        assert_eq!(escape("a/b=c%d"), "a%2Fb%3Dc%25d");
        assert_eq!(escape("2026-11-30T12:00:00.5"), "2026-11-30T12%3A00%3A00.5");
        assert_eq!(escape("x\u{1}y\u{7f}"), "x%01y%7F");
        assert_eq!(escape(r##""#'*?\{[]^"##), "%22%23%27%2A%3F%5C%7B%5B%5D%5E");
        // Spark keeps these on Linux; so do we.
        assert_eq!(escape("a b<c>|d_é.~"), "a b<c>|d_é.~");
    }

    #[test]
    fn names_null_as_hive_does_and_rejects_values_readers_would_take_for_null() {
        assert_eq!(folder("symbol", Some("BTC-USD")).unwrap(), "symbol=BTC-USD");
        assert_eq!(
            folder("symbol", None).unwrap(),
            "symbol=__HIVE_DEFAULT_PARTITION__"
        );
        assert!(folder("symbol", Some("")).unwrap_err().contains("symbol"));
        assert!(
            folder("symbol", Some(NULL_VALUE))
                .unwrap_err()
                .contains("symbol")
        );
    }

    #[test]
    fn temp_names_are_hidden_from_readers() {
        let name = file_name(42, 3);
        assert_eq!(name, "part-0000000042-0003.parquet");
        let temp = temp_name(&name);
        assert!(
            temp.starts_with('.') && !temp.ends_with(".parquet"),
            "{temp}"
        );
    }
}
