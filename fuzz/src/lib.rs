//! coinstream's fuzz harness, shared by the fuzz targets of every crate (`engine/src/fuzz.rs`,
//! `connectors/src/fuzz.rs`, `src/fuzz.rs`). It knows nothing of what the targets parse: it loads
//! their seed corpora, makes hostile variants of the seeds, keeps the time budget and counts.
//!
//! # How one target runs
//! 1. Every seed in `fuzz/corpus/<target>/` (checked in: real frames, bodies and configs, and every
//!    input that once broke a target) is checked as it is, on every run.
//! 2. Then, for [`budget`] (`COINSTREAM_FUZZ_SECS`, default 2 s): inputs made by
//!    [`Harness::mutate`] from bytes that [bolero](https://camshaft.github.io/bolero) chooses. The
//!    bytes pick a seed and a few structure-aware steps: a JSON or TOML token replaced by a hostile
//!    value from a dictionary (`NaN`, `1e400`, excess decimal digits, out-of-range ids and dates,
//!    wrong types), a member deleted or repeated, a number stretched, signed or quoted, another
//!    seed spliced in, bytes flipped, cut or inserted; one input in 32 is the raw bytes alone.
//!    Under `cargo test` bolero picks the bytes at random; under `cargo bolero test` with
//!    libFuzzer (nightly) it picks them by coverage, which is the long run (see `fuzz/README.md`).
//!
//! A target checks properties of each input (not only that nothing panics); a failure is
//! reported by bolero with the input and the seed to replay it (`BOLERO_RANDOM_SEED=`).
//!
//! Each target prints one line to stderr that `cargo test` does not capture:
//! `fuzz <target>: <n> executions (<s> seeds, <m> mutated) in <t> s`.

use std::fmt;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use bolero;

/// Runs `$check` (a closure over `&[u8]`) on mutated inputs of `$harness` (a `&Harness`) for
/// [`budget`], counting each. A macro, not a function: bolero names a target after the function
/// its `check!` is in, and `cargo bolero` selects targets by that name.
#[macro_export]
macro_rules! mutate_for_budget {
    ($harness:expr, $check:expr) => {{
        let harness: &$crate::Harness = $harness;
        let mut check = $check;
        $crate::bolero::check!()
            .with_test_time($crate::budget())
            .with_type::<Vec<u8>>()
            .map(|driver| harness.mutate(&driver))
            .for_each(|input| {
                harness.count();
                check(&input.0);
            });
    }};
}

/// Seconds each target spends on mutated inputs after its seeds, unless `COINSTREAM_FUZZ_SECS`
/// says otherwise: short, so the test command stays fast.
pub const DEFAULT_BUDGET_SECS: f64 = 2.0;

/// The time each target spends on mutated inputs: `COINSTREAM_FUZZ_SECS` (fractional seconds),
/// default [`DEFAULT_BUDGET_SECS`].
///
/// # Panics
/// If `COINSTREAM_FUZZ_SECS` is set but is not a non-negative number of seconds: a typo must not
/// silently give the default.
pub fn budget() -> Duration {
    match std::env::var("COINSTREAM_FUZZ_SECS") {
        Err(_) => Duration::from_secs_f64(DEFAULT_BUDGET_SECS),
        Ok(text) => match text.trim().parse::<f64>() {
            Ok(secs) if secs.is_finite() && (0.0..1e9).contains(&secs) => {
                Duration::from_secs_f64(secs)
            }
            _ => panic!("COINSTREAM_FUZZ_SECS={text:?} is not a number of seconds (e.g. 2 or 600)"),
        },
    }
}

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default()
}

/// Hostile JSON values every JSON target's mutator may put in place of a token: the edges of
/// decimals, integers, timestamps and strings that outside input has been seen to carry, or that
/// parsers are known to treat differently.
pub const HOSTILE_JSON: &[&str] = &[
    // Not finite, or not plain decimals.
    r#""NaN""#,
    "NaN",
    r#""Infinity""#,
    r#""-Infinity""#,
    "Infinity",
    "1e400",
    "-1e400",
    r#""1e400""#,
    r#""1.5E+4""#,
    "1.5E+4",
    r#""1e-7""#,
    r#""+1""#,
    r#"" 1""#,
    r#""1 ""#,
    r#""1_000""#,
    r#""1,5""#,
    r#""0x1F""#,
    r#"".5""#,
    r#""5.""#,
    r#""-.5""#,
    r#""1.2.3""#,
    r#""--1""#,
    r#""١٢٣""#,
    r#""１""#,
    // Signs and zeros.
    "0",
    "-0",
    r#""-0""#,
    r#""0""#,
    r#""-1""#,
    "-1",
    r#""-0.00000000001""#,
    // Excess scale (the bus columns keep 10 fractional digits) and its rounding edges.
    r#""0.00000000005""#,
    r#""0.000000000049999""#,
    r#""-0.00000000005""#,
    r#""1.00000000005""#,
    r#""2.99999999995""#,
    r#""0.1234567890123456789012345678901234567890""#,
    // Too many digits for decimal(28,10) or decimal(38,20).
    r#""999999999999999999.99999999995""#,
    r#""99999999999999999999999999999""#,
    r#""12345678901234567890.1234567890123""#,
    r#""100000000000000000000000000000000000000""#,
    // Integers at the edges of i32, i64 and u64.
    "2147483647",
    "2147483648",
    "-2147483649",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    r#""9223372036854775808""#,
    r#""-1""#,
    "1.0",
    "1.5",
    "1e3",
    "1E-7",
    // Other kinds.
    "null",
    "true",
    "false",
    "[]",
    "{}",
    "[1]",
    r#"{"a":1}"#,
    r#"[["1"]]"#,
    r#"[{"a":[]}]"#,
    // Timestamps: invalid, out of range, other forms.
    r#""2024-02-30T00:00:00Z""#,
    r#""2024-01-01T00:00:00Z""#,
    r#""2024-01-01T00:00:00.1234567891Z""#,
    r#""9999-12-31T23:59:59.999999999Z""#,
    r#""0000-01-01T00:00:00Z""#,
    r#""+275760-09-13T00:00:00Z""#,
    r#""2024-01-01T24:00:00Z""#,
    r#""2024-01-01 00:00:00""#,
    r#""2024-01-01T00:00:00+14:00""#,
    r#""2024-01-01T00:00:00-25:00""#,
    r#""1717246800""#,
    r#""-62135596801""#,
    r#""99999999999999""#,
    r#""9223372036854775807""#,
    // Strings: escapes, controls, lone surrogates, non-ASCII, a BOM.
    r#""""#,
    r#""\u0000""#,
    r#""\"""#,
    r#""\ud800""#,
    r#""é€😀""#,
    r#""a\nb""#,
    "\"\u{feff}\"",
];

/// Bytes bolero chose, read front to back; zeros once they run out.
struct Driver<'a> {
    bytes: &'a [u8],
}

impl Driver<'_> {
    fn u8(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((first, rest)) => {
                self.bytes = rest;
                *first
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> usize {
        usize::from(self.u8()) << 8 | usize::from(self.u8())
    }

    /// An index below `n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { self.u16() % n }
    }
}

/// A mutated input, shown as text when bolero reports a failure.
pub struct Input(pub Vec<u8>);

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// One fuzz target's seeds, dictionary and counters. See the crate docs.
pub struct Harness {
    name: String,
    seeds: Vec<(String, Vec<u8>)>,
    dictionary: Vec<&'static str>,
    started: Instant,
    seeds_run: AtomicU64,
    mutated_run: AtomicU64,
}

impl Harness {
    /// The harness of `target`, with its checked-in seeds (`fuzz/corpus/<target>/*`, by name) and
    /// `dictionary` (target-specific tokens, e.g. field names, on top of [`HOSTILE_JSON`]).
    ///
    /// # Panics
    /// If the corpus folder is missing or empty: a target without seeds fuzzes nothing real.
    pub fn new(target: &str, dictionary: &[&'static str]) -> Self {
        let dir = repo_root().join("fuzz/corpus").join(target);
        let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("fuzz corpus {}: {e}", dir.display()))
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.is_file())
            .map(|path| {
                let bytes = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("fuzz seed {}: {e}", path.display()));
                (path.display().to_string(), bytes)
            })
            .collect();
        assert!(!seeds.is_empty(), "fuzz corpus {} is empty", dir.display());
        seeds.sort();
        let mut all = HOSTILE_JSON.to_vec();
        all.extend_from_slice(dictionary);
        Self {
            name: target.to_owned(),
            seeds,
            dictionary: all,
            started: Instant::now(),
            seeds_run: AtomicU64::new(0),
            mutated_run: AtomicU64::new(0),
        }
    }

    /// Adds files of the repository (paths relative to its root) as seeds, e.g. the shipped
    /// configs, so the corpus never holds a stale copy of them.
    ///
    /// # Panics
    /// If one cannot be read.
    pub fn with_repo_files(mut self, paths: &[&str]) -> Self {
        for path in paths {
            let path = repo_root().join(path);
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("fuzz seed {}: {e}", path.display()));
            self.seeds.push((path.display().to_string(), bytes));
        }
        self
    }

    /// Checks every seed as it is; a failing seed's path is in the panic message.
    pub fn replay_seeds(&self, mut check: impl FnMut(&[u8])) {
        for (path, bytes) in &self.seeds {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(bytes)));
            if let Err(panic) = result {
                eprintln!("fuzz {}: seed {path} failed", self.name);
                std::panic::resume_unwind(panic);
            }
            self.seeds_run.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one mutated input checked (call it from the target's `for_each`).
    pub fn count(&self) {
        self.mutated_run.fetch_add(1, Ordering::Relaxed);
    }

    /// The input that `driver` (bytes bolero chose) makes; see the crate docs.
    pub fn mutate(&self, driver: &[u8]) -> Input {
        let mut d = Driver { bytes: driver };
        let pick = d.u16();
        if pick % 32 == 31 {
            return Input(d.bytes.to_vec());
        }
        let mut data = self.seeds[pick % self.seeds.len()].1.clone();
        let steps = 1 + d.u8() % 4;
        for _ in 0..steps {
            self.step(&mut data, &mut d);
        }
        Input(data)
    }

    fn step(&self, data: &mut Vec<u8>, d: &mut Driver<'_>) {
        let tokens = tokens(data);
        let token = |d: &mut Driver<'_>| tokens.get(d.below(tokens.len())).cloned();
        match d.u8() % 16 {
            // Most steps replace a token: that keeps the input well formed, so it gets past the
            // syntax check to the checks that matter.
            0..=4 => {
                if let Some(t) = token(d) {
                    let word = self.dictionary[d.below(self.dictionary.len())];
                    data.splice(t, word.bytes());
                }
            }
            5 => {
                if let (Some(t), Some(u)) = (token(d), token(d)) {
                    let other = data[u].to_vec();
                    data.splice(t, other);
                }
            }
            6 => {
                if let Some(t) = token(d) {
                    let text = data[t.clone()].to_vec();
                    data.splice(t, stretch(&text, d));
                }
            }
            7 => {
                // A run of digits anywhere, inside strings too (`"interval:5m"`, `"400.23"`),
                // becomes 1 to 40 nines or a zero: the edges of every integer type.
                let runs = digit_runs(data);
                if let Some(run) = runs.get(d.below(runs.len())).cloned() {
                    let nines = usize::from(d.u8() % 41);
                    let digits = if nines == 0 {
                        vec![b'0']
                    } else {
                        vec![b'9'; nines]
                    };
                    data.splice(run, digits);
                }
            }
            8 => {
                // Delete a member: a key, its value and the separator after it.
                if let Some(k) = token(d).filter(|k| is_key(data, k)) {
                    let end = value_end(data, &tokens, &k);
                    let end = if data.get(end) == Some(&b',') {
                        end + 1
                    } else {
                        end
                    };
                    data.drain(k.start..end);
                }
            }
            9 => {
                // Repeat a member right after itself.
                if let Some(k) = token(d).filter(|k| is_key(data, k)) {
                    let end = value_end(data, &tokens, &k);
                    let mut member = data[k.start..end].to_vec();
                    member.push(b',');
                    data.splice(k.start..k.start, member);
                }
            }
            10 => {
                // Splice in another seed's line, at a line start (a second message in a batch).
                let other = &self.seeds[d.below(self.seeds.len())].1;
                let lines: Vec<&[u8]> = other.split(|b| *b == b'\n').collect();
                let mut line = lines[d.below(lines.len())].to_vec();
                line.push(b'\n');
                let starts: Vec<usize> = std::iter::once(0)
                    .chain(
                        data.iter()
                            .enumerate()
                            .filter(|(_, b)| **b == b'\n')
                            .map(|(i, _)| i + 1),
                    )
                    .collect();
                let at = starts[d.below(starts.len())];
                data.splice(at..at, line);
            }
            11 => {
                let at = d.below(data.len() + 1);
                let word = self.dictionary[d.below(self.dictionary.len())];
                data.splice(at..at, word.bytes());
            }
            12 => {
                if !data.is_empty() {
                    let at = d.below(data.len());
                    data[at] ^= 1 << (d.u8() % 8);
                }
            }
            13 => {
                let at = d.below(data.len() + 1);
                let len = usize::from(d.u8() % 8) + 1;
                data.drain(at..(at + len).min(data.len()));
            }
            14 => {
                let at = d.below(data.len() + 1);
                data.truncate(at);
            }
            _ => {
                let at = d.below(data.len() + 1);
                let len = usize::from(d.u8() % 8) + 1;
                let bytes: Vec<u8> = (0..len).map(|_| d.u8()).collect();
                data.splice(at..at, bytes);
            }
        }
    }

    /// Prints the target's line (see the crate docs) where `cargo test` does not capture it,
    /// with `extra` (what the target counted, e.g. how many inputs reached a deep check) at its end.
    pub fn report(&self, extra: &str) {
        let seeds = self.seeds_run.load(Ordering::Relaxed);
        let mutated = self.mutated_run.load(Ordering::Relaxed);
        let line = format!(
            "fuzz {}: {} executions ({seeds} seeds, {mutated} mutated) in {:.1} s{}{extra}\n",
            self.name,
            seeds + mutated,
            self.started.elapsed().as_secs_f64(),
            if extra.is_empty() { "" } else { "; " },
        );
        // Straight to the file descriptor: the test harness captures only `eprint!`.
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    /// Inputs checked so far, seeds and mutated.
    pub fn executions(&self) -> u64 {
        self.seeds_run.load(Ordering::Relaxed) + self.mutated_run.load(Ordering::Relaxed)
    }
}

/// A numeric or string token made longer, signed, quoted or unquoted: the ways decimals and ids
/// go wrong in the field.
fn stretch(token: &[u8], d: &mut Driver<'_>) -> Vec<u8> {
    let quoted = token.len() >= 2 && token[0] == b'"' && token[token.len() - 1] == b'"';
    let inner = if quoted {
        &token[1..token.len() - 1]
    } else {
        token
    };
    let mut out = inner.to_vec();
    match d.u8() % 10 {
        0 => out.push(b'5'),
        1 => {
            if !out.contains(&b'.') {
                out.push(b'.');
            }
            out.extend(std::iter::repeat_n(b'9', 1 + usize::from(d.u8() % 24)));
        }
        2 => out.extend_from_slice(b"00000000000000000000001"),
        3 => out.insert(0, b'-'),
        4 => out.insert(0, b'+'),
        5 => out.extend_from_slice(b"e5"),
        6 => {
            let digits = out.clone();
            for _ in 0..1 + d.u8() % 8 {
                out.extend_from_slice(&digits);
            }
        }
        7 => out.insert(0, b' '),
        8 => out.extend_from_slice("\u{0}".as_bytes()),
        _ => {
            // Quote an unquoted token, unquote a quoted one.
            return if quoted {
                out
            } else {
                [b"\"".as_slice(), &out, b"\""].concat()
            };
        }
    }
    if quoted {
        [b"\"".as_slice(), &out, b"\""].concat()
    } else {
        out
    }
}

/// The spans of JSON or TOML tokens in `data`: strings (with their quotes), numbers and bare
/// words (`true`, `null`, TOML keys).
fn tokens(data: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let start = i;
        match data[i] {
            b'"' => {
                i += 1;
                while i < data.len() {
                    match data[i] {
                        b'\\' => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
                out.push(start..i.min(data.len()));
                i = i.min(data.len());
            }
            b'-' | b'0'..=b'9' => {
                i += 1;
                while i < data.len()
                    && matches!(data[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                out.push(start..i);
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < data.len() && (data[i].is_ascii_alphanumeric() || data[i] == b'_') {
                    i += 1;
                }
                out.push(start..i);
            }
            _ => i += 1,
        }
    }
    out
}

/// The spans of ASCII digit runs in `data`.
fn digit_runs(data: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        if data[i].is_ascii_digit() {
            let start = i;
            while i < data.len() && data[i].is_ascii_digit() {
                i += 1;
            }
            out.push(start..i);
        } else {
            i += 1;
        }
    }
    out
}

/// Whether token `t` is a key: followed by `:` (JSON) or `=` (TOML).
fn is_key(data: &[u8], t: &Range<usize>) -> bool {
    data[t.end..]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b':' || *b == b'=')
}

/// Where the value of key `k` ends: after the token that follows it (a scalar), else right after
/// the key.
fn value_end(data: &[u8], tokens: &[Range<usize>], k: &Range<usize>) -> usize {
    tokens
        .iter()
        .find(|t| t.start >= k.end)
        .map_or(k.end, |t| t.end)
        .min(data.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tokens_of_json_and_toml() {
        let text = br#"{"a":"x\"y","b":-1.5e3,"c":[true,null]}"#;
        let found: Vec<&str> = tokens(text)
            .into_iter()
            .map(|t| std::str::from_utf8(&text[t]).unwrap())
            .collect();
        assert_eq!(
            found,
            [
                r#""a""#,
                r#""x\"y""#,
                r#""b""#,
                "-1.5e3",
                r#""c""#,
                "true",
                "null"
            ]
        );
        let toml = b"[engine]\ntrigger = \"available-now\"\n";
        let found: Vec<&str> = tokens(toml)
            .into_iter()
            .map(|t| std::str::from_utf8(&toml[t]).unwrap())
            .collect();
        assert_eq!(found, ["engine", "trigger", r#""available-now""#]);
    }

    #[test]
    fn mutations_change_seeds_and_stay_deterministic() {
        let h = Harness::new("coinbase_exchange", &[]);
        let mut changed = 0;
        for i in 0..500u32 {
            let driver: Vec<u8> = i.to_le_bytes().iter().cycle().take(40).copied().collect();
            let a = h.mutate(&driver).0;
            assert_eq!(a, h.mutate(&driver).0, "the same bytes make the same input");
            changed += usize::from(!h.seeds.iter().any(|(_, s)| *s == a));
        }
        assert!(
            changed > 400,
            "only {changed} of 500 inputs differ from every seed"
        );
    }
}
