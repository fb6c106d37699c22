//! Declared schemas. Input and reference tables are never inferred: users declare each column as
//! `"<name> <type> [not null]"`, with types `utf8`, `int64`, `int32`, `float64`, `boolean`,
//! `decimal(P,S)`, `date`, `timestamp(s|ms|us|ns)` (timestamps are UTC).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::error::{Error, Result};

/// Parses column declarations into an Arrow schema. `what` names the config key for errors.
pub fn parse_columns(what: &str, columns: &[String]) -> Result<SchemaRef> {
    if columns.is_empty() {
        return Err(Error::config(what, "must declare at least one column"));
    }
    let mut fields = Vec::with_capacity(columns.len());
    let mut errors = Vec::new();
    for (i, decl) in columns.iter().enumerate() {
        match parse_column(decl) {
            Ok(field) => {
                if fields.iter().any(|f: &Field| f.name() == field.name()) {
                    errors.push(format!("[{i}] column {} is declared twice", field.name()));
                } else {
                    fields.push(field);
                }
            }
            Err(message) => errors.push(format!("[{i}] {decl:?}: {message}")),
        }
    }
    if errors.is_empty() {
        Ok(Arc::new(Schema::new(fields)))
    } else {
        Err(Error::config(what, errors.join("; ")))
    }
}

/// Parses one `"<name> <type> [not null]"` declaration.
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

/// Parses a type name (see the module docs).
pub fn parse_type(ty: &str) -> Result<DataType, String> {
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

    #[test]
    fn parses_declarations() {
        let s = parse_columns(
            "t",
            &[
                "price decimal(28,10) not null".into(),
                "time timestamp(us)".into(),
            ],
        )
        .unwrap();
        assert_eq!(s.field(0).data_type(), &DataType::Decimal128(28, 10));
        assert!(!s.field(0).is_nullable());
        assert_eq!(
            s.field(1).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        assert!(s.field(1).is_nullable());
    }

    #[test]
    fn rejects_bad_declarations_naming_each() {
        let err = parse_columns(
            "input.columns",
            &[
                "a floaty".into(),
                "b decimal(50,2)".into(),
                "a utf8".into(),
                "a utf8".into(),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("config: input.columns:"), "{err}");
        assert!(err.contains("[0] \"a floaty\": unknown type"), "{err}");
        assert!(err.contains("[1]"), "{err}");
        assert!(err.contains("[3] column a is declared twice"), "{err}");
    }
}
