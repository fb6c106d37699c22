//! What the live page needs from a batch besides its progress record: the rows the sink wrote
//! and the messages that went to the dead letters, taken in the binary by wrapping the real sink
//! and dead-letter output (the engine stays free of HTTP and of the page).
//!
//! Each wrapper forwards every call to the real output unchanged; only after a write has
//! succeeded does it hand a bounded extract of the batch to [`Page`], which publishes it with
//! the batch's progress record once the batch is committed. The extract is small whether or not
//! anyone watches: the last row of each chart key (at most [`MAX_KEYS`] keys) or the last
//! [`ROWS_WITHOUT_KEY`] rows, and the last [`LETTERS_PER_BATCH`] dead letters.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, LargeStringArray, StringArray, StringViewArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use engine::sink::{DeadLetter, DeadLetterSink, Sink};
use serde::Serialize;

use super::page::Page;

/// The column whose distinct values are the chart's lines and the P&L table's rows.
pub const CHART_KEY: &str = "symbol";
/// The numeric column the chart plots for each key.
pub const CHART_VALUE: &str = "profit";
/// At most this many keys per batch (and in the page's latest-rows table): a key column with
/// unbounded values (an id) cannot grow the page's memory.
pub const MAX_KEYS: usize = 64;
/// Without a key column, the last this many rows of a batch.
pub const ROWS_WITHOUT_KEY: usize = 20;
/// At most this many dead letters of one batch reach the page (its progress counts them all).
pub const LETTERS_PER_BATCH: usize = 20;
/// A dead letter's message is shown cut to this many bytes.
pub const RAW_PREVIEW_BYTES: usize = 300;
/// The chart's value column (money: a profit) is shown with this many places; other decimal
/// columns (prices, sizes) are shown without their trailing zeros. The exact value travels with
/// either.
pub const DISPLAY_PLACES: usize = 2;

/// The output's columns as the page shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Column {
    pub name: String,
    /// A decimal column (shown right-aligned, and its exact value on hover).
    pub decimal: bool,
}

/// Which columns make the chart, when the output has both [`CHART_KEY`] and a numeric
/// [`CHART_VALUE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chart {
    /// The index of the key column in [`Column`]s.
    pub key: usize,
    /// The index of the value column.
    pub value: usize,
    pub key_name: String,
    pub value_name: String,
}

/// One output row as the page shows it: each cell exact (as Arrow displays it) and for display
/// (the chart's value rounded to [`DISPLAY_PLACES`], other decimals without trailing zeros),
/// `None` for a null.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// The value of [`CHART_KEY`], when the output has that column.
    pub key: Option<String>,
    pub exact: Vec<Option<String>>,
    pub shown: Vec<Option<String>>,
}

/// The rows of one batch that the page gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowsExtract {
    pub columns: Vec<Column>,
    pub chart: Option<Chart>,
    /// In output order (the last row of a key is its latest).
    pub rows: Vec<Row>,
}

/// One dead letter as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Letter {
    pub reason: String,
    /// Where the message came from, in its source's words.
    pub position: serde_json::Value,
    /// The start of the message as received (lossy UTF-8, at most [`RAW_PREVIEW_BYTES`]).
    pub raw: String,
}

/// The columns of `schema` and, when it has them, the chart's.
pub fn columns(schema: &SchemaRef) -> (Vec<Column>, Option<Chart>) {
    let columns: Vec<Column> = schema
        .fields()
        .iter()
        .map(|f| Column {
            name: f.name().clone(),
            decimal: is_decimal(f.data_type()),
        })
        .collect();
    let key = schema.index_of(CHART_KEY).ok();
    let value = schema
        .index_of(CHART_VALUE)
        .ok()
        .filter(|&i| schema.field(i).data_type().is_numeric());
    let chart = key.zip(value).map(|(key, value)| Chart {
        key,
        value,
        key_name: CHART_KEY.to_owned(),
        value_name: CHART_VALUE.to_owned(),
    });
    (columns, chart)
}

fn is_decimal(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..)
    )
}

/// The rows of `batches` the page gets: the last row of each [`CHART_KEY`] value (at most
/// [`MAX_KEYS`], the most recently written), or without that column the last
/// [`ROWS_WITHOUT_KEY`] rows; in output order. `None` for no rows.
///
/// # Errors
/// A column Arrow cannot display (none of the types SQL produces).
pub fn extract_rows(batches: &[RecordBatch]) -> Result<Option<RowsExtract>, ArrowError> {
    let Some(first) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(None);
    };
    let schema = first.schema();
    let (columns, chart) = self::columns(&schema);
    let key_index = schema.index_of(CHART_KEY).ok();
    let options = FormatOptions::default();
    // Newest first: walk the batches and their rows backwards, keeping each key's first sight.
    let mut picked: Vec<(usize, usize, Option<String>)> = Vec::new();
    let mut seen: HashSet<Cow<'_, str>> = HashSet::new();
    'batches: for (b, batch) in batches.iter().enumerate().rev() {
        if batch.num_rows() == 0 {
            continue;
        }
        let keys = match key_index {
            Some(k) => Some((batch.column(k), KeyColumn::new(batch.column(k), &options)?)),
            None => None,
        };
        for r in (0..batch.num_rows()).rev() {
            match &keys {
                Some((column, keys)) => {
                    if column.is_null(r) {
                        continue;
                    }
                    let key = keys.text(r);
                    if !seen.contains(&key) {
                        seen.insert(key.clone());
                        picked.push((b, r, Some(key.into_owned())));
                        if picked.len() == MAX_KEYS {
                            break 'batches;
                        }
                    }
                }
                None => {
                    picked.push((b, r, None));
                    if picked.len() == ROWS_WITHOUT_KEY {
                        break 'batches;
                    }
                }
            }
        }
    }
    picked.reverse();
    let mut rows = Vec::with_capacity(picked.len());
    for (b, r, key) in picked {
        let batch = &batches[b];
        let mut exact = Vec::with_capacity(columns.len());
        let mut shown = Vec::with_capacity(columns.len());
        for (i, (column, meta)) in batch.columns().iter().zip(&columns).enumerate() {
            if column.is_null(r) {
                exact.push(None);
                shown.push(None);
                continue;
            }
            let text = ArrayFormatter::try_new(column.as_ref(), &options)?
                .value(r)
                .to_string();
            shown.push(Some(if chart.as_ref().is_some_and(|c| c.value == i) {
                round_decimal_text(&text, DISPLAY_PLACES)
            } else if meta.decimal && text.contains('.') {
                text.trim_end_matches('0').trim_end_matches('.').to_owned()
            } else {
                text.clone()
            }));
            exact.push(Some(text));
        }
        rows.push(Row { key, exact, shown });
    }
    Ok(Some(RowsExtract {
        columns,
        chart,
        rows,
    }))
}

/// A key column read as text. A text column's values are borrowed: the scan in [`extract_rows`]
/// reads every row until it has seen [`MAX_KEYS`] keys, which a handful of symbols never reaches,
/// and formatting each row's key was a `String` a row (800,000 allocations in a 1M-trade run).
/// Other types are formatted as Arrow displays them.
enum KeyColumn<'a> {
    Utf8(&'a StringArray),
    LargeUtf8(&'a LargeStringArray),
    Utf8View(&'a StringViewArray),
    Formatted(ArrayFormatter<'a>),
}

impl<'a> KeyColumn<'a> {
    fn new(column: &'a ArrayRef, options: &'a FormatOptions) -> Result<Self, ArrowError> {
        Ok(if let Some(a) = column.as_string_opt::<i32>() {
            Self::Utf8(a)
        } else if let Some(a) = column.as_string_opt::<i64>() {
            Self::LargeUtf8(a)
        } else if let Some(a) = column.as_string_view_opt() {
            Self::Utf8View(a)
        } else {
            Self::Formatted(ArrayFormatter::try_new(column.as_ref(), options)?)
        })
    }

    /// Row `r`'s key, as the page shows it.
    fn text(&self, r: usize) -> Cow<'a, str> {
        match self {
            Self::Utf8(a) => Cow::Borrowed(a.value(r)),
            Self::LargeUtf8(a) => Cow::Borrowed(a.value(r)),
            Self::Utf8View(a) => Cow::Borrowed(a.value(r)),
            Self::Formatted(f) => Cow::Owned(f.value(r).to_string()),
        }
    }
}

/// The last [`LETTERS_PER_BATCH`] of `letters`, as the page shows them.
pub fn extract_letters(letters: &[DeadLetter]) -> Vec<Letter> {
    let from = letters.len().saturating_sub(LETTERS_PER_BATCH);
    letters[from..]
        .iter()
        .map(|l| {
            let end = l.raw.len().min(RAW_PREVIEW_BYTES);
            let mut raw = String::from_utf8_lossy(&l.raw[..end]).into_owned();
            if end < l.raw.len() {
                raw.push('…');
            }
            Letter {
                reason: l.reason.clone(),
                position: l.position.clone(),
                raw,
            }
        })
        .collect()
}

/// `text`, a decimal as Arrow displays it (`-12.345678`), rounded half away from zero to
/// `places` places and padded to exactly that many (`-12.35`; `7` → `7.00`). A negative value that
/// rounds to zero loses its sign. Text that is not a plain decimal is returned unchanged.
pub fn round_decimal_text(text: &str, places: usize) -> String {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return text.to_owned();
    }
    // The kept digits, as one digit string, then the carry of the first dropped digit.
    let mut kept: Vec<u8> = int.bytes().collect();
    let mut frac_kept: Vec<u8> = frac.bytes().take(places).collect();
    frac_kept.resize(places, b'0');
    kept.extend_from_slice(&frac_kept);
    if frac.as_bytes().get(places).is_some_and(|&d| d >= b'5') {
        engine::decimal::increment_digits(&mut kept);
    }
    let split = kept.len() - places;
    let (int, frac) = kept.split_at(split);
    let int = std::str::from_utf8(int).unwrap_or("0");
    let int = match int.trim_start_matches('0') {
        "" => "0",
        trimmed => trimmed,
    };
    let frac = std::str::from_utf8(frac).unwrap_or("");
    let zero = int == "0" && frac.bytes().all(|b| b == b'0');
    let sign = if negative && !zero { "-" } else { "" };
    if places == 0 {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

/// The real sink, with every successfully written batch's extract handed to the page.
pub struct PageSink {
    inner: Box<dyn Sink>,
    page: Arc<Page>,
}

impl PageSink {
    pub fn new(inner: Box<dyn Sink>, page: Arc<Page>) -> Self {
        Self { inner, page }
    }
}

#[async_trait]
impl Sink for PageSink {
    fn description(&self) -> String {
        self.inner.description()
    }

    async fn healthcheck(&mut self) -> engine::Result<()> {
        self.inner.healthcheck().await
    }

    async fn bind_query(&mut self, query_id: &str, committed_batches: u64) -> engine::Result<()> {
        self.inner.bind_query(query_id, committed_batches).await
    }

    async fn write(&mut self, batch_id: u64, batches: &[RecordBatch]) -> engine::Result<()> {
        self.inner.write(batch_id, batches).await?;
        // After the write: a batch that failed (and is retried or stops the run) shows nothing.
        match extract_rows(batches) {
            Ok(Some(extract)) => self.page.stage_rows(batch_id, extract),
            Ok(None) => {}
            // Only the page misses the rows; the pipeline goes on.
            Err(e) => tracing::debug!("UI: showing batch {batch_id}'s rows: {e}"),
        }
        Ok(())
    }

    async fn close(&mut self) -> engine::Result<()> {
        self.inner.close().await
    }
}

/// The real dead-letter output, with every successfully stored batch's letters handed to the
/// page.
pub struct PageDeadLetters {
    inner: Box<dyn DeadLetterSink>,
    page: Arc<Page>,
}

impl PageDeadLetters {
    pub fn new(inner: Box<dyn DeadLetterSink>, page: Arc<Page>) -> Self {
        Self { inner, page }
    }
}

#[async_trait]
impl DeadLetterSink for PageDeadLetters {
    fn description(&self) -> String {
        self.inner.description()
    }

    async fn write(&mut self, batch_id: u64, letters: &[DeadLetter]) -> engine::Result<()> {
        self.inner.write(batch_id, letters).await?;
        self.page.stage_letters(batch_id, extract_letters(letters));
        Ok(())
    }

    async fn close(&mut self) -> engine::Result<()> {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use arrow::array::{Decimal128Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    #[test]
    fn decimals_round_half_away_from_zero_to_two_places() {
        for (text, shown) in [
            ("12.345", "12.35"),
            ("12.344999", "12.34"),
            ("-12.345", "-12.35"),
            ("9.995", "10.00"),
            ("-99.999", "-100.00"),
            ("7", "7.00"),
            ("0.1", "0.10"),
            ("-0.004", "0.00"),
            ("0.005", "0.01"),
            (
                "1234567890123456789.12345678901234567890",
                "1234567890123456789.12",
            ),
            ("n/a", "n/a"),
        ] {
            assert_eq!(round_decimal_text(text, 2), shown, "{text}");
        }
        // Agrees with an exact decimal library wherever both apply.
        for text in ["2.675", "-0.125", "123.455000001", "0.994999"] {
            let expected = rust_decimal::Decimal::from_str(text)
                .unwrap()
                .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
            assert_eq!(
                round_decimal_text(text, 2),
                format!("{expected:.2}"),
                "{text}"
            );
        }
    }

    fn batch(symbols: &[&str], profits: &[i128]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, true),
            Field::new("trade_id", DataType::Int64, false),
            Field::new("price", DataType::Decimal128(20, 4), true),
            Field::new("profit", DataType::Decimal128(20, 4), true),
        ]));
        let decimals = || {
            Arc::new(
                Decimal128Array::from(profits.to_vec())
                    .with_precision_and_scale(20, 4)
                    .unwrap(),
            )
        };
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(symbols.to_vec())),
                Arc::new(Int64Array::from_iter_values(0..symbols.len() as i64)),
                decimals(),
                decimals(),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_batch_gives_each_keys_last_row_in_output_order() {
        let batches = [
            batch(
                &["BTC-USD", "ETH-USD", "BTC-USD"],
                &[10_000, 20_000, 12_345],
            ),
            batch(&["SOL-USD", "ETH-USD"], &[-5, 20_055]),
        ];
        let extract = extract_rows(&batches).unwrap().unwrap();
        assert_eq!(
            extract.chart,
            Some(Chart {
                key: 0,
                value: 3,
                key_name: "symbol".into(),
                value_name: "profit".into()
            })
        );
        assert_eq!(
            extract
                .columns
                .iter()
                .map(|c| c.decimal)
                .collect::<Vec<_>>(),
            [false, false, true, true]
        );
        type Cells<'a> = Vec<Option<&'a str>>;
        let rows: Vec<(Option<&str>, Cells, Cells)> = extract
            .rows
            .iter()
            .map(|r| {
                (
                    r.key.as_deref(),
                    r.exact.iter().map(Option::as_deref).collect(),
                    r.shown.iter().map(Option::as_deref).collect(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                // The profit to the cent, the price without trailing zeros.
                (
                    Some("BTC-USD"),
                    vec![Some("BTC-USD"), Some("2"), Some("1.2345"), Some("1.2345")],
                    vec![Some("BTC-USD"), Some("2"), Some("1.2345"), Some("1.23")]
                ),
                (
                    Some("SOL-USD"),
                    vec![Some("SOL-USD"), Some("0"), Some("-0.0005"), Some("-0.0005")],
                    vec![Some("SOL-USD"), Some("0"), Some("-0.0005"), Some("0.00")]
                ),
                (
                    Some("ETH-USD"),
                    vec![Some("ETH-USD"), Some("1"), Some("2.0055"), Some("2.0055")],
                    vec![Some("ETH-USD"), Some("1"), Some("2.0055"), Some("2.01")]
                ),
            ]
        );
        assert_eq!(extract_rows(&[batch(&[], &[])]).unwrap(), None);
        let whole = extract_rows(&[batch(&["ETH-USD"], &[20_000])])
            .unwrap()
            .unwrap();
        assert_eq!(whole.rows[0].shown[2].as_deref(), Some("2"));
        assert_eq!(whole.rows[0].shown[3].as_deref(), Some("2.00"));
    }

    #[test]
    fn keys_and_rows_without_a_key_are_bounded() {
        let symbols: Vec<String> = (0..MAX_KEYS + 10).map(|i| format!("C{i}")).collect();
        let refs: Vec<&str> = symbols.iter().map(String::as_str).collect();
        let extract = extract_rows(&[batch(&refs, &vec![1; refs.len()])])
            .unwrap()
            .unwrap();
        // The most recently written keys.
        let keys: Vec<_> = extract
            .rows
            .iter()
            .map(|r| r.key.clone().unwrap())
            .collect();
        assert_eq!(keys, symbols[10..]);

        let plain = batch(&refs, &vec![1; refs.len()]).project(&[1, 2]).unwrap();
        let extract = extract_rows(&[plain]).unwrap().unwrap();
        assert_eq!(extract.chart, None);
        assert_eq!(extract.rows.len(), ROWS_WITHOUT_KEY);
        assert_eq!(
            extract.rows.last().unwrap().exact[0].as_deref(),
            Some((MAX_KEYS + 9).to_string().as_str())
        );
        assert!(extract.rows.iter().all(|r| r.key.is_none()));
    }

    #[test]
    fn keys_of_every_type_are_their_displayed_text() {
        let keys = |symbol: ArrayRef| {
            let field = Field::new("symbol", symbol.data_type().clone(), true);
            let batch = RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![symbol]);
            let extract = extract_rows(&[batch.unwrap()]).unwrap().unwrap();
            extract
                .rows
                .iter()
                .map(|r| r.key.clone().unwrap())
                .collect::<Vec<_>>()
        };
        let symbols = vec!["BTC-USD", "ETH-USD", "BTC-USD"];
        let newest = ["ETH-USD", "BTC-USD"];
        assert_eq!(keys(Arc::new(StringArray::from(symbols.clone()))), newest);
        assert_eq!(
            keys(Arc::new(LargeStringArray::from(symbols.clone()))),
            newest
        );
        assert_eq!(keys(Arc::new(StringViewArray::from(symbols))), newest);
        assert_eq!(keys(Arc::new(Int64Array::from(vec![7, 8, 7]))), ["8", "7"]);
    }

    #[test]
    fn a_profit_that_is_not_numeric_makes_no_chart() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("profit", DataType::Utf8, false),
        ]));
        assert_eq!(columns(&schema).1, None);
    }
}
