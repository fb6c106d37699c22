//! Declared schemas. Input and reference tables are never inferred: they are declared once, in
//! SQL DDL files under `sql/tables/` (`CREATE TABLE trades (price DECIMAL(28,10) NOT NULL, ...)`),
//! parsed by DataFusion's SQL parser and turned into Arrow types by DataFusion's own SQL-to-Arrow
//! conversion ([`SqlToRel::build_schema`]).
//!
//! The types the engine decodes, by their SQL names:
//!
//! | SQL                                             | Arrow                                |
//! |-------------------------------------------------|--------------------------------------|
//! | `VARCHAR`, `TEXT`, `STRING`, `CHAR`              | `Utf8`                               |
//! | `BIGINT`                                        | `Int64`                              |
//! | `INT`, `INTEGER`                                | `Int32`                              |
//! | `DOUBLE`, `DOUBLE PRECISION`                    | `Float64`                            |
//! | `BOOLEAN`                                       | `Boolean`                            |
//! | `DATE`                                          | `Date32`                             |
//! | `DECIMAL(P,S)`, `NUMERIC(P,S)`, P ≤ 38          | `Decimal128(P,S)`                    |
//! | `TIMESTAMP(0\|3\|6\|9) WITH TIME ZONE`           | `Timestamp(s\|ms\|us\|ns, "UTC")`    |
//!
//! Timestamps are UTC instants: `WITH TIME ZONE` is required, and its zone is UTC (DataFusion
//! takes the session's zone, which the declarations fix to UTC). The precision is the number of
//! fractional-second digits, as in SQL: `TIMESTAMP(3) WITH TIME ZONE` is milliseconds,
//! `TIMESTAMP(6) WITH TIME ZONE` microseconds, `TIMESTAMP WITH TIME ZONE` (no precision)
//! nanoseconds. Unquoted names are lower-cased, as DataFusion's SQL does; `NOT NULL` makes a
//! column required.
//!
//! [`parse_column`] reads the older column mini-language (`"price decimal(28,10) not null"`),
//! kept only for the config keys it is the deprecated alias of.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::config::ConfigOptions;
use datafusion::common::{TableReference, plan_err};
use datafusion::logical_expr::planner::ContextProvider;
use datafusion::logical_expr::{AggregateUDF, HigherOrderUDF, ScalarUDF, TableSource, WindowUDF};
use datafusion::sql::planner::{IdentNormalizer, ParserOptions, SqlToRel};
use datafusion::sql::sqlparser::ast::{ColumnOption, ObjectNamePart, Statement};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::error::{Error, Result};

/// The types a declaration may use, for error messages.
const SUPPORTED: &str = "VARCHAR, BIGINT, INT, DOUBLE, BOOLEAN, DATE, DECIMAL(P,S) with P 1 to 38 and S 0 to P, \
                         TIMESTAMP(0|3|6|9) WITH TIME ZONE";

/// One table of a DDL file.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDecl {
    /// The table's name (lower-cased unless quoted).
    pub name: String,
    /// Its columns, in declaration order.
    pub schema: SchemaRef,
}

/// Parses `sql`, a DDL text of `CREATE TABLE` statements, into its tables, in file order.
///
/// # Errors
/// [`Error::Config`] with `what` (the file) and every problem of the text: SQL that does not
/// parse, a statement other than `CREATE TABLE`, a type DataFusion does not know or the engine
/// does not decode (each naming its table and column), a column or table declared twice, a
/// text with no table.
pub fn parse_ddl(what: &str, sql: &str) -> Result<Vec<TableDecl>> {
    let statements = Parser::parse_sql(&GenericDialect {}, sql)
        .map_err(|e| Error::config(what, format!("does not parse: {e}")))?;
    let types = DeclarationTypes::utc();
    let planner = SqlToRel::new_with_options(
        &types,
        ParserOptions::new().with_map_string_types_to_utf8view(false),
    );
    let normalizer = IdentNormalizer::new(true);
    let mut tables: Vec<TableDecl> = Vec::new();
    let mut problems = Vec::new();
    for statement in statements {
        let Statement::CreateTable(create) = statement else {
            problems.push(format!(
                "only CREATE TABLE statements declare tables, found: {statement}"
            ));
            continue;
        };
        let name = match create.name.0.as_slice() {
            [ObjectNamePart::Identifier(ident)] => normalizer.normalize(ident.clone()),
            _ => {
                problems.push(format!(
                    "table {}: use a plain table name (no schema or catalog)",
                    create.name
                ));
                continue;
            }
        };
        if create.query.is_some() || !create.constraints.is_empty() {
            problems.push(format!(
                "table {name}: declare columns only (no AS query, no table constraints)"
            ));
        }
        if create.columns.is_empty() {
            problems.push(format!("table {name}: declare at least one column"));
        }
        let mut fields: Vec<Field> = Vec::with_capacity(create.columns.len());
        for column in create.columns {
            let column_name = normalizer.normalize(column.name.clone());
            let at = format!("table {name}, column {column_name}");
            if let Some(other) = column
                .options
                .iter()
                .find(|o| !matches!(o.option, ColumnOption::NotNull | ColumnOption::Null))
            {
                problems.push(format!(
                    "{at}: only NULL or NOT NULL may follow the type, found {}",
                    other.option
                ));
                continue;
            }
            // Checked before DataFusion sees it: DataFusion accepts up to Decimal256's 76 digits
            // and says so in its own error, but the engine decodes Decimal128 only.
            if let Some(message) = unsupported_decimal(&column.data_type) {
                problems.push(format!("{at}: {message}"));
                continue;
            }
            // One column at a time, so an error names the column it is about.
            let field = match planner.build_schema(vec![column]) {
                Ok(schema) => schema.field(0).clone(),
                Err(e) => {
                    problems.push(format!(
                        "{at}: {}; supported types: {SUPPORTED}",
                        e.strip_backtrace()
                    ));
                    continue;
                }
            };
            if let Err(message) = check_supported(field.data_type()) {
                problems.push(format!("{at}: {message}"));
            } else if fields.iter().any(|f| f.name() == field.name()) {
                problems.push(format!("{at}: declared twice"));
            } else {
                fields.push(field);
            }
        }
        if tables.iter().any(|t| t.name == name) {
            problems.push(format!("table {name}: declared twice"));
            continue;
        }
        tables.push(TableDecl {
            name,
            schema: Arc::new(Schema::new(fields)),
        });
    }
    if tables.is_empty() && problems.is_empty() {
        problems.push("declares no table (expected CREATE TABLE statements)".into());
    }
    if problems.is_empty() {
        Ok(tables)
    } else {
        Err(Error::config(what, problems.join("; ")))
    }
}

/// The schema of the table `name` of the DDL text `sql` (see [`parse_ddl`]).
///
/// # Errors
/// As [`parse_ddl`], and [`Error::Config`] if the text declares no table `name`.
pub fn ddl_table(what: &str, sql: &str, name: &str) -> Result<SchemaRef> {
    let tables = parse_ddl(what, sql)?;
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    match tables.iter().find(|t| t.name == name) {
        Some(t) => Ok(Arc::clone(&t.schema)),
        None => Err(Error::config(
            what,
            format!("no table {name}; declared: {}", names.join(", ")),
        )),
    }
}

/// What the engine decodes a decimal as, for messages.
const DECIMAL_RANGE: &str = "the engine decodes decimals as Decimal128: precision 1 to 38, \
                             scale 0 to the precision";

/// Why a `DECIMAL(P,S)` / `NUMERIC(P,S)` / `DEC(P,S)` declaration is not a Decimal128 the engine
/// decodes (P outside 1..=38, S negative or above P); `None` for any other type.
fn unsupported_decimal(t: &datafusion::sql::sqlparser::ast::DataType) -> Option<String> {
    use datafusion::sql::sqlparser::ast::{DataType as Sql, ExactNumberInfo};
    let (Sql::Decimal(info) | Sql::Numeric(info) | Sql::Dec(info)) = t else {
        return None;
    };
    let (precision, scale) = match *info {
        ExactNumberInfo::None => return None,
        ExactNumberInfo::Precision(p) => (p, 0),
        ExactNumberInfo::PrecisionAndScale(p, s) => (p, s),
    };
    let fits = (1..=38).contains(&precision) && (0..=precision as i64).contains(&scale);
    (!fits).then(|| format!("{t}: {DECIMAL_RANGE}"))
}

/// The Arrow types the engine decodes (the old mini-language's set: nothing more is promised).
fn check_supported(t: &DataType) -> Result<(), String> {
    match t {
        DataType::Utf8
        | DataType::Int64
        | DataType::Int32
        | DataType::Float64
        | DataType::Boolean
        | DataType::Date32
        | DataType::Decimal128(..)
        | DataType::Timestamp(_, Some(_)) => Ok(()),
        DataType::Decimal32(..) | DataType::Decimal64(..) | DataType::Decimal256(..) => {
            Err(format!("type {t}: {DECIMAL_RANGE}"))
        }
        DataType::Timestamp(_, None) => Err(
            "TIMESTAMP without time zone: values are UTC instants, declare TIMESTAMP(p) WITH TIME \
             ZONE"
                .into(),
        ),
        other => Err(format!(
            "type {other} is not one the engine decodes; supported types: {SUPPORTED}"
        )),
    }
}

/// The planner's view of the world while declaring tables: no tables or functions, only the
/// options that decide types. `TIMESTAMP WITH TIME ZONE` takes the session's time zone, fixed to
/// UTC here.
struct DeclarationTypes {
    options: ConfigOptions,
}

impl DeclarationTypes {
    fn utc() -> Self {
        let mut options = ConfigOptions::default();
        options.execution.time_zone = Some("UTC".into());
        Self { options }
    }
}

impl ContextProvider for DeclarationTypes {
    fn get_table_source(
        &self,
        name: TableReference,
    ) -> datafusion::common::Result<Arc<dyn TableSource>> {
        plan_err!("a declaration reads no table, found {name}")
    }
    fn get_function_meta(&self, _: &str) -> Option<Arc<ScalarUDF>> {
        None
    }
    fn get_higher_order_meta(&self, _: &str) -> Option<Arc<HigherOrderUDF>> {
        None
    }
    fn get_aggregate_meta(&self, _: &str) -> Option<Arc<AggregateUDF>> {
        None
    }
    fn get_window_meta(&self, _: &str) -> Option<Arc<WindowUDF>> {
        None
    }
    fn get_variable_type(&self, _: &[String]) -> Option<DataType> {
        None
    }
    fn options(&self) -> &ConfigOptions {
        &self.options
    }
    fn udf_names(&self) -> Vec<String> {
        Vec::new()
    }
    fn higher_order_function_names(&self) -> Vec<String> {
        Vec::new()
    }
    fn udaf_names(&self) -> Vec<String> {
        Vec::new()
    }
    fn udwf_names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Parses one declaration of the deprecated column mini-language, `"<name> <type> [not null]"`
/// with types `utf8`, `int64`, `int32`, `float64`, `boolean`, `decimal(P,S)`, `date`,
/// `timestamp(s|ms|us|ns)` (UTC). Only the deprecated `columns`/`value` config keys use it.
pub fn parse_column(decl: &str) -> Result<Field, String> {
    let words: Vec<&str> = decl.split_whitespace().collect();
    let (name, ty, nullable) = match words.as_slice() {
        [name, ty] => (*name, *ty, true),
        [name, ty, not, null]
            if not.eq_ignore_ascii_case("not") && null.eq_ignore_ascii_case("null") =>
        {
            (*name, *ty, false)
        }
        _ => return Err("expected \"<name> <type>\" or \"<name> <type> not null\"".into()),
    };
    Ok(Field::new(name, parse_type(ty)?, nullable))
}

/// Parses a type name of the deprecated mini-language (see [`parse_column`]).
fn parse_type(ty: &str) -> Result<DataType, String> {
    let lower = ty.to_ascii_lowercase();
    let simple = match lower.as_str() {
        "utf8" | "string" | "text" => Some(DataType::Utf8),
        "int64" | "bigint" => Some(DataType::Int64),
        "int32" | "int" => Some(DataType::Int32),
        "float64" | "double" => Some(DataType::Float64),
        "boolean" | "bool" => Some(DataType::Boolean),
        "date" => Some(DataType::Date32),
        _ => None,
    };
    if let Some(t) = simple {
        return Ok(t);
    }
    if let Some(args) = lower
        .strip_prefix("decimal(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let (p, s) = args
            .split_once(',')
            .ok_or("decimal needs (precision,scale)")?;
        let p: u8 = p
            .trim()
            .parse()
            .map_err(|_| format!("bad decimal precision {p:?}"))?;
        let s: i8 = s
            .trim()
            .parse()
            .map_err(|_| format!("bad decimal scale {s:?}"))?;
        if !(1..=38).contains(&p) || s < 0 || s as u8 > p {
            return Err(format!(
                "decimal({p},{s}) needs 1 <= precision <= 38 and 0 <= scale <= precision"
            ));
        }
        return Ok(DataType::Decimal128(p, s));
    }
    if let Some(unit) = lower
        .strip_prefix("timestamp(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let unit = match unit {
            "s" => TimeUnit::Second,
            "ms" => TimeUnit::Millisecond,
            "us" => TimeUnit::Microsecond,
            "ns" => TimeUnit::Nanosecond,
            other => {
                return Err(format!(
                    "unknown timestamp unit {other:?}; valid units are s, ms, us, ns"
                ));
            }
        };
        return Ok(DataType::Timestamp(unit, Some("UTC".into())));
    }
    Err(format!(
        "unknown type {ty:?}; valid types are utf8, int64, int32, float64, boolean, date, decimal(P,S), timestamp(s|ms|us|ns)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRADES: &str = include_str!("../../sql/tables/trades.sql");

    fn utc(unit: TimeUnit) -> DataType {
        DataType::Timestamp(unit, Some("UTC".into()))
    }

    #[test]
    fn ddl_gives_the_types_the_mini_language_gave() {
        let ddl = "CREATE TABLE t (
            a VARCHAR NOT NULL, b BIGINT, c INT, d DOUBLE, e BOOLEAN, f DATE,
            g DECIMAL(28,10) NOT NULL, h TIMESTAMP(0) WITH TIME ZONE,
            i TIMESTAMP(3) WITH TIME ZONE NOT NULL, j TIMESTAMP(6) WITH TIME ZONE,
            k TIMESTAMP WITH TIME ZONE, \"Quoted\" TEXT NULL
        )";
        let ddl_schema = ddl_table("t.sql", ddl, "t").unwrap();
        let legacy: Vec<Field> = [
            "a utf8 not null",
            "b int64",
            "c int32",
            "d float64",
            "e boolean",
            "f date",
            "g decimal(28,10) not null",
            "h timestamp(s)",
            "i timestamp(ms) not null",
            "j timestamp(us)",
            "k timestamp(ns)",
            "Quoted utf8",
        ]
        .iter()
        .map(|d| parse_column(d).unwrap())
        .collect();
        assert_eq!(ddl_schema.as_ref(), &Schema::new(legacy));
        assert_eq!(ddl_schema.field(9).data_type(), &utc(TimeUnit::Microsecond));
    }

    #[test]
    fn shipped_trade_table_is_the_bus_record() {
        let s = ddl_table("trades.sql", TRADES, "trades").unwrap();
        let names: Vec<&str> = s.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "symbol",
                "coin_name",
                "trade_id",
                "sequence",
                "trade_time",
                "price",
                "size",
                "side",
                "ingest_time"
            ]
        );
        let price = s.field_with_name("price").unwrap();
        assert_eq!(price.data_type(), &DataType::Decimal128(28, 10));
        assert!(!price.is_nullable());
        let time = s.field_with_name("trade_time").unwrap();
        assert_eq!(time.data_type(), &utc(TimeUnit::Microsecond));
    }

    #[test]
    fn rejects_bad_declarations_naming_table_and_column() {
        let err = parse_ddl(
            "bad.sql",
            "CREATE TABLE t (a MONEY, b DECIMAL(50,2), c TIMESTAMP(6), d INT DEFAULT 1, e INT, e INT);
             CREATE TABLE t (x INT)",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("config: bad.sql: "), "{err}");
        for expected in [
            "table t, column a: ",
            "table t, column b: DECIMAL(50,2): the engine decodes decimals as Decimal128: \
             precision 1 to 38, scale 0 to the precision;",
            "table t, column c: TIMESTAMP without time zone",
            "table t, column d: only NULL or NOT NULL may follow the type, found DEFAULT 1",
            "table t, column e: declared twice",
            "table t: declared twice",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in {err}");
        }
    }

    #[test]
    fn decimals_outside_decimal128_say_what_the_engine_decodes() {
        let problem = |ty: &str| {
            parse_ddl("d.sql", &format!("CREATE TABLE t (a {ty})"))
                .unwrap_err()
                .to_string()
        };
        for ty in [
            "DECIMAL(5,10)",
            "DECIMAL(50,2)",
            "NUMERIC(39)",
            "DECIMAL(0,0)",
            "DEC(10,-2)",
        ] {
            assert_eq!(
                problem(ty),
                format!(
                    "config: d.sql: table t, column a: {ty}: the engine decodes decimals as \
                     Decimal128: precision 1 to 38, scale 0 to the precision"
                ),
            );
        }
        for ty in ["DECIMAL(38,38)", "NUMERIC(1)", "DECIMAL(38,0)"] {
            let tables = parse_ddl("d.sql", &format!("CREATE TABLE t (a {ty})")).unwrap();
            assert!(
                matches!(
                    tables[0].schema.field(0).data_type(),
                    DataType::Decimal128(..)
                ),
                "{ty}"
            );
        }
    }

    #[test]
    fn rejects_text_that_is_not_ddl() {
        let err = parse_ddl("x.sql", "CREATE TABLE t (a INT")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config: x.sql: does not parse: "), "{err}");
        let err = parse_ddl("x.sql", "SELECT 1").unwrap_err().to_string();
        assert!(err.contains("only CREATE TABLE statements"), "{err}");
        let err = parse_ddl("x.sql", "-- nothing\n").unwrap_err().to_string();
        assert!(err.contains("declares no table"), "{err}");
        let err = ddl_table("x.sql", TRADES, "portfolio")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "config: x.sql: no table portfolio; declared: trades");
    }

    #[test]
    fn mini_language_still_parses_for_the_deprecated_keys() {
        let f = parse_column("time timestamp(us)").unwrap();
        assert_eq!(f.data_type(), &utc(TimeUnit::Microsecond));
        assert!(f.is_nullable());
        assert!(
            parse_column("a floaty")
                .unwrap_err()
                .starts_with("unknown type")
        );
        assert!(parse_column("b decimal(50,2)").is_err());
    }
}
