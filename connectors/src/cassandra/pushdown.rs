//! Which of a query's filters the Cassandra table evaluates in CQL, by the rules CQL itself
//! accepts without `ALLOW FILTERING`, so that a pushed filter reads only the rows it selects:
//!
//! - every partition key column bound by `=` or `IN (…)` (at most [`MAX_PARTITIONS`]
//!   partitions in all), or nothing is pushed at all: without the whole partition key CQL would
//!   have to scan every partition;
//! - then the clustering columns in order: `=` on a prefix of them, then at most one lower and
//!   one upper bound (`>`, `>=`, `<`, `<=`) on the next one.
//!
//! A pushed filter is exact (the CQL restriction selects the same rows DataFusion's filter
//! would); anything else is left to DataFusion. That holds only for literals CQL compares the
//! way DataFusion does, so a filter is pushed only when its literal has the column's own Arrow
//! type (which DataFusion's type coercion has made it, for a literal written in SQL), is not
//! null, and a timestamp is a whole millisecond (CQL keeps milliseconds; a finer literal is
//! never equal to a stored value, and comparing it would need rounding). This module knows
//! DataFusion expressions and CQL values, nothing of sessions.

use arrow::datatypes::{DataType, Schema};
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use scylla::value::{CqlDate, CqlDecimal, CqlTimestamp, CqlValue};

use super::types::{date32_to_cql, minimal_twos_complement, quote};

/// At most this many partitions (the product of the `IN` lists on the partition key) are read
/// by one pushed-down query; a larger product is not pushed and DataFusion filters a full scan.
pub const MAX_PARTITIONS: usize = 1_000;

/// A comparison CQL can evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`.
    Eq,
    /// `IN (…)`.
    In,
    /// `<`.
    Lt,
    /// `<=`.
    LtEq,
    /// `>`.
    Gt,
    /// `>=`.
    GtEq,
}

impl Op {
    fn cql(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::In => "IN",
            Op::Lt => "<",
            Op::LtEq => "<=",
            Op::Gt => ">",
            Op::GtEq => ">=",
        }
    }

    fn of(op: Operator) -> Option<Op> {
        Some(match op {
            Operator::Eq => Op::Eq,
            Operator::Lt => Op::Lt,
            Operator::LtEq => Op::LtEq,
            Operator::Gt => Op::Gt,
            Operator::GtEq => Op::GtEq,
            _ => return None,
        })
    }
}

/// One filter as a CQL restriction: `column op ?`, with the value bound to the marker (a list
/// for `IN`).
#[derive(Debug, Clone, PartialEq)]
pub struct Restriction {
    /// The restricted column.
    pub column: String,
    /// The comparison.
    pub op: Op,
    /// The literals as the query wrote them (after DataFusion's coercion), for display.
    pub literals: Vec<ScalarValue>,
    /// The value bound to the marker.
    pub value: CqlValue,
}

impl Restriction {
    /// `"column" op ?`.
    pub fn cql(&self) -> String {
        format!("{} {} ?", quote(&self.column), self.op.cql())
    }

    /// The bound value as text: `'BTC-USD'`, `2026-11-23`, `('a', 'b')`.
    pub fn shown_value(&self) -> String {
        let shown: Vec<String> = self.literals.iter().map(show).collect();
        if self.op == Op::In {
            format!("({})", shown.join(", "))
        } else {
            shown.join(", ")
        }
    }
}

fn show(v: &ScalarValue) -> String {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => format!("'{}'", s.replace('\'', "''")),
        other => other.to_string(),
    }
}

/// The table's primary key and column types: what the pushdown rules need.
#[derive(Debug, Clone)]
pub struct Keys<'a> {
    /// The table's schema (the transform's output).
    pub schema: &'a Schema,
    /// Partition key columns, in order.
    pub partition_key: &'a [String],
    /// Clustering columns, in order.
    pub clustering_key: &'a [String],
}

/// What is pushed: the restrictions, in primary key order, and for each filter whether it is
/// one of them (exact) or left to DataFusion.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pushdown {
    /// The CQL restrictions, partition key first, then clustering columns in order.
    pub restrictions: Vec<Restriction>,
    /// `pushed[i]`: filter `i` is one of [`Pushdown::restrictions`].
    pub pushed: Vec<bool>,
}

impl Pushdown {
    /// The restrictions joined by `AND` (empty when nothing is pushed).
    pub fn where_cql(&self) -> String {
        let parts: Vec<String> = self.restrictions.iter().map(Restriction::cql).collect();
        parts.join(" AND ")
    }
}

/// Decides which `filters` (conjuncts, as DataFusion hands them to a table) are pushed.
pub fn plan(filters: &[&Expr], keys: &Keys<'_>) -> Pushdown {
    let parsed: Vec<Option<Restriction>> = filters
        .iter()
        .map(|f| restriction(f, keys.schema))
        .collect();
    let mut pushed = vec![false; filters.len()];
    let mut order = Vec::new();
    let first = |column: &str, ops: &[Op]| {
        parsed.iter().position(|r| {
            r.as_ref()
                .is_some_and(|r| r.column == column && ops.contains(&r.op))
        })
    };

    let mut partitions: usize = 1;
    for column in keys.partition_key {
        let Some(i) = first(column, &[Op::Eq, Op::In]) else {
            return Pushdown {
                restrictions: Vec::new(),
                pushed: vec![false; filters.len()],
            };
        };
        let values = parsed[i].as_ref().map_or(1, |r| r.literals.len());
        partitions = partitions.saturating_mul(values);
        order.push(i);
    }
    if partitions > MAX_PARTITIONS || partitions == 0 {
        return Pushdown {
            restrictions: Vec::new(),
            pushed: vec![false; filters.len()],
        };
    }
    for column in keys.clustering_key {
        if let Some(i) = first(column, &[Op::Eq]) {
            order.push(i);
            continue;
        }
        // A slice ends the restricted prefix: CQL refuses restrictions on later columns.
        order.extend(first(column, &[Op::Gt, Op::GtEq]));
        order.extend(first(column, &[Op::Lt, Op::LtEq]));
        break;
    }
    let mut restrictions = Vec::with_capacity(order.len());
    for i in order {
        if let Some(r) = &parsed[i] {
            pushed[i] = true;
            restrictions.push(r.clone());
        }
    }
    Pushdown {
        restrictions,
        pushed,
    }
}

/// `column op literal`, `literal op column` or `column IN (literals)`, with literals CQL
/// compares as DataFusion does; anything else is `None`.
fn restriction(expr: &Expr, schema: &Schema) -> Option<Restriction> {
    let (column, op, literals) = match expr {
        // DataFusion rewrites a short `IN` list as `c = a OR c = b`.
        Expr::BinaryExpr(BinaryExpr {
            op: Operator::Or, ..
        }) => {
            let mut literals = Vec::new();
            let column = equalities(expr, &mut literals)?;
            (column, Op::In, literals)
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), Expr::Literal(v, _)) => (c, Op::of(*op)?, vec![v.clone()]),
            (Expr::Literal(v, _), Expr::Column(c)) => (c, Op::of(op.swap()?)?, vec![v.clone()]),
            _ => return None,
        },
        Expr::InList(InList {
            expr,
            list,
            negated: false,
        }) => {
            let Expr::Column(c) = expr.as_ref() else {
                return None;
            };
            let literals = list
                .iter()
                .map(|e| match e {
                    Expr::Literal(v, _) => Some(v.clone()),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            (c, Op::In, literals)
        }
        _ => return None,
    };
    let field = schema.field_with_name(&column.name).ok()?;
    let values = literals
        .iter()
        .map(|v| cql_value(v, field.data_type()))
        .collect::<Option<Vec<_>>>()?;
    let value = match op {
        Op::In if values.is_empty() => return None,
        Op::In => CqlValue::List(values),
        _ => values.into_iter().next()?,
    };
    Some(Restriction {
        column: column.name.clone(),
        op,
        literals,
        value,
    })
}

/// The column of `a = x OR a = y OR …`, pushing `x`, `y`… onto `literals`; `None` unless every
/// disjunct compares the same column with a literal.
fn equalities<'e>(expr: &'e Expr, literals: &mut Vec<ScalarValue>) -> Option<&'e Column> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else {
        return None;
    };
    match (op, left.as_ref(), right.as_ref()) {
        (Operator::Or, l, r) => {
            let left = equalities(l, literals)?;
            let right = equalities(r, literals)?;
            (left == right).then_some(left)
        }
        (Operator::Eq, Expr::Column(c), Expr::Literal(v, _))
        | (Operator::Eq, Expr::Literal(v, _), Expr::Column(c)) => {
            literals.push(v.clone());
            Some(c)
        }
        _ => None,
    }
}

/// `v` as the CQL value of a column of Arrow type `column`, when CQL compares it exactly as
/// DataFusion would; see the module docs.
pub fn cql_value(v: &ScalarValue, column: &DataType) -> Option<CqlValue> {
    let same_type = match (v.data_type(), column) {
        // Instants compare the same whatever the unit and zone.
        (DataType::Timestamp(_, _), DataType::Timestamp(_, _)) => true,
        (t, c) => &t == c,
    };
    if !same_type {
        return None;
    }
    Some(match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => CqlValue::Text(s.clone()),
        ScalarValue::Boolean(Some(b)) => CqlValue::Boolean(*b),
        ScalarValue::Int8(Some(x)) => CqlValue::TinyInt(*x),
        ScalarValue::Int16(Some(x)) => CqlValue::SmallInt(*x),
        ScalarValue::Int32(Some(x)) => CqlValue::Int(*x),
        ScalarValue::Int64(Some(x)) => CqlValue::BigInt(*x),
        ScalarValue::Float32(Some(x)) => CqlValue::Float(*x),
        ScalarValue::Float64(Some(x)) => CqlValue::Double(*x),
        ScalarValue::Decimal128(Some(x), _, scale) => {
            CqlValue::Decimal(CqlDecimal::from_signed_be_bytes_and_exponent(
                minimal_twos_complement(&x.to_be_bytes()).to_vec(),
                i32::from(*scale),
            ))
        }
        ScalarValue::TimestampSecond(Some(x), _) => {
            CqlValue::Timestamp(CqlTimestamp(x.checked_mul(1_000)?))
        }
        ScalarValue::TimestampMillisecond(Some(x), _) => CqlValue::Timestamp(CqlTimestamp(*x)),
        ScalarValue::TimestampMicrosecond(Some(x), _) => {
            CqlValue::Timestamp(CqlTimestamp(whole(*x, 1_000)?))
        }
        ScalarValue::TimestampNanosecond(Some(x), _) => {
            CqlValue::Timestamp(CqlTimestamp(whole(*x, 1_000_000)?))
        }
        ScalarValue::Date32(Some(d)) => CqlValue::Date(CqlDate(date32_to_cql(*d))),
        ScalarValue::Binary(Some(b)) | ScalarValue::LargeBinary(Some(b)) => {
            CqlValue::Blob(b.clone())
        }
        _ => return None,
    })
}

/// `x / per` when it divides exactly.
fn whole(x: i64, per: i64) -> Option<i64> {
    (x % per == 0).then_some(x / per)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{Field, TimeUnit};
    use datafusion::logical_expr::{col, lit};

    use super::*;

    fn schema() -> Schema {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        Schema::new(vec![
            Field::new("symbol", DataType::Utf8, true),
            Field::new("trade_date", DataType::Date32, true),
            Field::new("trade_time", ts, true),
            Field::new("trade_id", DataType::Int64, true),
            Field::new("profit", DataType::Decimal128(38, 10), true),
        ])
    }

    fn pushed(filters: &[Expr]) -> (Vec<bool>, String, Vec<String>) {
        let schema = schema();
        let pk = ["symbol".to_owned(), "trade_date".to_owned()];
        let ck = ["trade_time".to_owned(), "trade_id".to_owned()];
        let keys = Keys {
            schema: &schema,
            partition_key: &pk,
            clustering_key: &ck,
        };
        let refs: Vec<&Expr> = filters.iter().collect();
        let p = plan(&refs, &keys);
        let values = p.restrictions.iter().map(|r| r.shown_value()).collect();
        (p.pushed.clone(), p.where_cql(), values)
    }

    fn day() -> Expr {
        lit(ScalarValue::Date32(Some(20_415)))
    }

    fn at(micros: i64) -> Expr {
        lit(ScalarValue::TimestampMicrosecond(
            Some(micros),
            Some(Arc::from("UTC")),
        ))
    }

    #[test]
    fn pushes_the_whole_partition_key_or_nothing() {
        let (p, cql, values) = pushed(&[
            col("symbol").eq(lit("BTC-USD")),
            day().eq(col("trade_date")),
        ]);
        assert_eq!(p, vec![true, true]);
        assert_eq!(cql, "\"symbol\" = ? AND \"trade_date\" = ?");
        assert_eq!(values, vec!["'BTC-USD'", "2025-11-23"]);

        let (p, cql, _) = pushed(&[col("symbol").eq(lit("BTC-USD"))]);
        assert_eq!((p, cql.as_str()), (vec![false], ""));
    }

    #[test]
    fn pushes_in_lists_on_the_partition_key() {
        let (p, cql, values) = pushed(&[
            col("symbol").in_list(vec![lit("BTC-USD"), lit("ETH-USD")], false),
            col("trade_date").eq(day()),
            col("symbol").in_list(vec![lit("X")], true),
        ]);
        assert_eq!(p, vec![true, true, false]);
        assert_eq!(cql, "\"symbol\" IN ? AND \"trade_date\" = ?");
        assert_eq!(values[0], "('BTC-USD', 'ETH-USD')");

        let (p, cql, values) = pushed(&[
            col("symbol")
                .eq(lit("A"))
                .or(lit("B").eq(col("symbol")).or(col("symbol").eq(lit("C")))),
            col("trade_date").eq(day()),
        ]);
        assert_eq!(p, vec![true, true]);
        assert_eq!(cql, "\"symbol\" IN ? AND \"trade_date\" = ?");
        assert_eq!(values[0], "('A', 'B', 'C')");
        let mixed = col("symbol").eq(lit("A")).or(col("coin").eq(lit("B")));
        assert_eq!(
            pushed(&[mixed, col("trade_date").eq(day())]).0,
            vec![false, false]
        );
    }

    #[test]
    fn pushes_clustering_columns_in_order_with_one_slice_last() {
        let key = || vec![col("symbol").eq(lit("A")), col("trade_date").eq(day())];
        let mut f = key();
        f.extend([
            col("trade_id").gt(lit(5i64)),
            col("trade_time").gt_eq(at(1_000)),
            col("trade_time").lt(at(9_000)),
            col("trade_time").lt(at(8_000)),
        ]);
        let (p, cql, _) = pushed(&f);
        assert_eq!(p, vec![true, true, false, true, true, false]);
        assert_eq!(
            cql,
            "\"symbol\" = ? AND \"trade_date\" = ? AND \"trade_time\" >= ? AND \"trade_time\" < ?"
        );

        let mut f = key();
        f.extend([
            col("trade_id").eq(lit(7i64)),
            col("trade_time").eq(at(2_000)),
        ]);
        let (p, cql, _) = pushed(&f);
        assert_eq!(p, vec![true, true, true, true]);
        assert!(
            cql.ends_with("\"trade_time\" = ? AND \"trade_id\" = ?"),
            "{cql}"
        );

        // trade_id without trade_time bound is not a prefix.
        let mut f = key();
        f.push(col("trade_id").eq(lit(7i64)));
        assert_eq!(pushed(&f).0, vec![true, true, false]);
    }

    #[test]
    fn leaves_what_cql_would_compare_differently_to_datafusion() {
        let key = || vec![col("symbol").eq(lit("A")), col("trade_date").eq(day())];
        for (filter, why) in [
            (col("trade_time").gt(at(1_500)), "a sub-millisecond instant"),
            (col("trade_id").gt(lit(5i32)), "a literal of another type"),
            (col("trade_id").not_eq(lit(5i64)), "!="),
            (col("trade_id").gt(lit(ScalarValue::Int64(None))), "a null"),
            (
                (col("trade_id") + lit(1i64)).gt(lit(5i64)),
                "an expression, not a column",
            ),
        ] {
            let mut f = key();
            f.push(filter);
            assert_eq!(pushed(&f).0, vec![true, true, false], "{why}");
        }
        let (p, _, _) = pushed(&[
            col("symbol").eq(lit(ScalarValue::Utf8(None))),
            col("trade_date").eq(day()),
        ]);
        assert_eq!(p, vec![false, false], "a null key value pushes nothing");
    }

    #[test]
    fn caps_the_partitions_one_query_reads() {
        let symbols: Vec<Expr> = (0..40).map(|i| lit(format!("S{i}"))).collect();
        let days: Vec<Expr> = (0..30).map(|d| lit(ScalarValue::Date32(Some(d)))).collect();
        let (p, _, _) = pushed(&[
            col("symbol").in_list(symbols, false),
            col("trade_date").in_list(days, false),
        ]);
        assert_eq!(p, vec![false, false], "1200 partitions > {MAX_PARTITIONS}");
    }

    #[test]
    fn binds_exact_cql_values() {
        let d = ScalarValue::Decimal128(Some(-1_234_500), 38, 4);
        let Some(CqlValue::Decimal(v)) = cql_value(&d, &DataType::Decimal128(38, 4)) else {
            panic!("a decimal binds");
        };
        let (bytes, scale) = v.as_signed_be_bytes_slice_and_exponent();
        assert_eq!((bytes, scale), (&(-1_234_500i128).to_be_bytes()[13..], 4));
        assert_eq!(cql_value(&d, &DataType::Decimal128(38, 10)), None);
        let ts = ScalarValue::TimestampMicrosecond(Some(-3_000), None);
        let column = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        assert_eq!(
            cql_value(&ts, &column),
            Some(CqlValue::Timestamp(CqlTimestamp(-3)))
        );
    }
}
