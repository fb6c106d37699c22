//! The one checked parser for decimal text (money: prices, sizes). Every path that turns outside
//! text into a `decimal(P,S)` value goes through [`parse_decimal`]: both decoder paths (the flat
//! fast path and arrow-json's) and the connectors that validate records before publishing them.
//! Library parsers differ exactly where it matters (arrow-cast's `parse_decimal` truncates digits
//! beyond the scale, its cast rounds them), so none is relied on.
//!
//! # What is accepted
//! What Spark's `from_json` accepts for a `DecimalType` (Java's `BigDecimal` grammar):
//! an optional sign (`+` or `-`), digits with an optional decimal point (`1`, `1.`, `.5`,
//! `0001.50`), and an optional exponent (`1.5E+4`, `25e-3`). Anything else is rejected with a
//! reason: empty text, spaces anywhere, `NaN`, `Infinity`, thousands separators, hexadecimal, more
//! than one point or sign.
//!
//! # Digits beyond the scale
//! Under [`DecimalPolicy::RoundHalfUp`] (the default, Spark's: `Decimal.set` rounds with
//! `ROUND_HALF_UP`) the value is rounded to the scale, half away from zero, and reported as
//! [`Parsed::rounded`] so callers can count it. Under [`DecimalPolicy::Reject`] a value that would
//! change is an error. Digits beyond the scale that are all zero change nothing and are neither.
//!
//! # Too large
//! A value with more than `P - S` integer digits (after rounding) does not fit and is an error
//! under either policy, as in Spark (which turns it into a bad record).

use std::fmt;

/// What happens to a decimal with more fractional digits than its column's scale.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DecimalPolicy {
    /// Round half away from zero to the scale, as Spark's `from_json` does; counted.
    #[default]
    RoundHalfUp,
    /// Reject the value (the message goes to the dead letters).
    Reject,
}

impl DecimalPolicy {
    /// The config spelling of the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundHalfUp => "round_half_up",
            Self::Reject => "reject",
        }
    }
}

impl std::str::FromStr for DecimalPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "round_half_up" => Ok(Self::RoundHalfUp),
            "reject" => Ok(Self::Reject),
            other => Err(format!(
                "unknown decimal policy {other:?} (valid: round_half_up, reject)"
            )),
        }
    }
}

/// A parsed decimal: the unscaled value (`value / 10^scale` is the number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// The unscaled value at the requested scale.
    pub value: i128,
    /// Whether non-zero digits beyond the scale were rounded away.
    pub rounded: bool,
}

/// Why a text is not a decimal of the requested type. Permanent: the same text always fails.
///
/// Displayed as a predicate to follow the value (`"NaN" is not a decimal: …`,
/// `"1e40" does not fit decimal(28,10): …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecimalError {
    /// Not decimal syntax (empty, spaces, `NaN`, `Infinity`, stray characters).
    Syntax(String),
    /// More integer digits than the type holds.
    Overflow {
        /// The type's precision.
        precision: u8,
        /// The type's scale.
        scale: i8,
    },
    /// Non-zero digits beyond the scale under [`DecimalPolicy::Reject`].
    ExcessScale {
        /// The type's scale.
        scale: i8,
    },
}

impl fmt::Display for DecimalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax(why) => write!(f, "is not a decimal: {why}"),
            Self::Overflow { precision, scale } => write!(
                f,
                "does not fit decimal({precision},{scale}): more than {} integer digits",
                i16::from(*precision) - i16::from(*scale)
            ),
            Self::ExcessScale { scale } => write!(
                f,
                "has non-zero digits beyond the scale {scale} (decimal policy reject)"
            ),
        }
    }
}

impl std::error::Error for DecimalError {}

/// Largest exponent magnitude accepted, as Java's `BigDecimal` (an `int` scale).
const MAX_EXPONENT: i64 = i32::MAX as i64;

/// Parses `text` into the unscaled value of a `decimal(precision, scale)` under `policy`; see
/// the module docs for the grammar, rounding and errors. A `precision` above 38 counts as 38.
///
/// It allocates nothing: the flat decoder calls it for every decimal value of every message.
pub fn parse_decimal(
    text: &str,
    precision: u8,
    scale: i8,
    policy: DecimalPolicy,
) -> Result<Parsed, DecimalError> {
    let number = Number::parse(text.as_bytes())?;
    let too_big = DecimalError::Overflow { precision, scale };
    let precision = precision.min(38);
    let all = number.int.len() + number.frac.len();
    let leading = number.digits().take_while(|&d| d == b'0').count();
    let significant = all - leading;
    // value = digits × 10^(exponent - fraction digits); scaled by 10^scale for the column.
    let shift = number.exponent - number.frac.len() as i64 + i64::from(scale);
    let cut = if shift >= 0 {
        0
    } else {
        usize::try_from(-shift).unwrap_or(usize::MAX)
    };
    let dropped = cut.min(significant);
    let kept = significant - dropped;
    // Zero stays zero whatever its exponent.
    let zeros = if shift > 0 && significant > 0 {
        shift
    } else {
        0
    };
    if kept as i64 + zeros > i64::from(precision) {
        return Err(too_big);
    }
    let mut digits = number.digits().skip(leading);
    let mut value: i128 = 0;
    for d in digits.by_ref().take(kept) {
        value = value * 10 + i128::from(d - b'0');
    }
    let (mut rounded, mut round_up) = (false, false);
    if let Some(first) = digits.next() {
        // The dropped digits start right after the kept ones only when the cut fell inside the
        // digit string; otherwise implicit leading zeros come first and the value rounds to 0.
        round_up = dropped == cut && first >= b'5';
        rounded = first != b'0' || digits.any(|d| d != b'0');
    }
    if rounded && policy == DecimalPolicy::Reject {
        return Err(DecimalError::ExcessScale { scale });
    }
    for _ in 0..zeros {
        value *= 10;
    }
    if round_up {
        value += 1;
    }
    if value >= 10i128.pow(u32::from(precision)) {
        return Err(too_big);
    }
    Ok(Parsed {
        value: if number.negative { -value } else { value },
        rounded,
    })
}

/// Whether `text` is a finite decimal in the grammar of [`parse_decimal`], whatever its size
/// (for connectors that check a value before publishing it, without knowing the column type).
pub fn check_decimal(text: &str) -> Result<(), DecimalError> {
    Number::parse(text.as_bytes()).map(|_| ())
}

/// Whether `text` is a decimal greater than zero (a price or a size).
pub fn is_positive_decimal(text: &str) -> Result<bool, DecimalError> {
    let n = Number::parse(text.as_bytes())?;
    Ok(!n.negative && n.digits().any(|d| d != b'0'))
}

/// Adds one to `digits`, a number written as ASCII digits, carrying by hand: `"0129"` becomes
/// `"0130"`, and a carry out of the first digit prepends a `1` (`"99"` → `"100"`, `""` → `"1"`).
/// Rounding half up on decimal text with this needs no integer type, so no size limit. Digits
/// that are not ASCII digits are a caller's bug, and the result is then meaningless.
pub fn increment_digits(digits: &mut Vec<u8>) {
    for digit in digits.iter_mut().rev() {
        if *digit == b'9' {
            *digit = b'0';
        } else {
            *digit += 1;
            return;
        }
    }
    digits.insert(0, b'1');
}

/// Decimal syntax split into its parts, borrowed from the text.
struct Number<'a> {
    negative: bool,
    /// The digits before the point, leading zeros included.
    int: &'a [u8],
    /// The digits after the point.
    frac: &'a [u8],
    exponent: i64,
}

impl<'a> Number<'a> {
    fn parse(text: &'a [u8]) -> Result<Self, DecimalError> {
        let syntax = |why: &str| DecimalError::Syntax(why.to_owned());
        if text.is_empty() {
            return Err(syntax("empty"));
        }
        let word = match text[0] {
            b'-' | b'+' => &text[1..],
            _ => text,
        };
        if [&b"nan"[..], b"inf", b"infinity"]
            .iter()
            .any(|w| word.eq_ignore_ascii_case(w))
        {
            return Err(syntax("NaN and infinities are not finite decimals"));
        }
        if text.iter().any(u8::is_ascii_whitespace) {
            return Err(syntax("contains spaces"));
        }
        let (negative, rest) = match text[0] {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exponent) = match rest.iter().position(|&c| c == b'e' || c == b'E') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (int, frac) = match mantissa.iter().position(|&c| c == b'.') {
            Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
            None => (mantissa, &[][..]),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(syntax("no digits"));
        }
        if !int.iter().chain(frac).all(u8::is_ascii_digit) {
            return Err(syntax(
                "only digits, one point, a sign and an exponent are allowed",
            ));
        }
        let exponent = match exponent {
            None => 0,
            Some(e) => {
                let (neg, digits) = match e.first() {
                    Some(b'-') => (true, &e[1..]),
                    Some(b'+') => (false, &e[1..]),
                    _ => (false, e),
                };
                if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                    return Err(syntax("the exponent must be digits"));
                }
                let mut value: i64 = 0;
                for &d in digits {
                    value = value * 10 + i64::from(d - b'0');
                    if value > MAX_EXPONENT {
                        return Err(syntax("the exponent is out of range"));
                    }
                }
                if neg { -value } else { value }
            }
        };
        Ok(Self {
            negative,
            int,
            frac,
            exponent,
        })
    }

    /// Integer and fraction digits together, leading zeros included.
    fn digits(&self) -> impl Iterator<Item = u8> + 'a {
        self.int.iter().chain(self.frac).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn half_up(text: &str, p: u8, s: i8) -> Result<(i128, bool), DecimalError> {
        parse_decimal(text, p, s, DecimalPolicy::RoundHalfUp).map(|v| (v.value, v.rounded))
    }

    /// The cases of section `[section]` of `engine/testdata/decimal_half_up.txt`: each text as
    /// `decimal(precision, scale)`, rounded half up, is the unscaled value, and `rounded` says
    /// whether digits were dropped.
    fn assert_half_up(section: &str) {
        let file = include_str!("../testdata/decimal_half_up.txt");
        let header = format!("[{section}]");
        let cases = file
            .lines()
            .skip_while(|line| *line != header)
            .skip(1)
            .take_while(|line| !line.starts_with('['))
            .filter(|line| !line.is_empty() && !line.starts_with('#'));
        let mut checked = 0;
        for line in cases {
            let [text, p, s, value, rounded] = line.split_whitespace().collect::<Vec<_>>()[..]
            else {
                panic!("{line:?}: expected text precision scale value rounded");
            };
            let (p, s) = (p.parse().unwrap(), s.parse().unwrap());
            let expected = (value.parse().unwrap(), rounded.parse().unwrap());
            assert_eq!(
                half_up(text, p, s),
                Ok(expected),
                "{text:?} as decimal({p},{s})"
            );
            checked += 1;
        }
        assert!(checked > 0, "no cases under {header}");
    }

    #[test]
    fn increment_digits_carries_through_nines() {
        for (digits, plus_one) in [("", "1"), ("0", "1"), ("0129", "0130"), ("99", "100")] {
            let mut d = digits.as_bytes().to_vec();
            increment_digits(&mut d);
            assert_eq!(String::from_utf8(d).unwrap(), plus_one, "{digits}");
        }
    }

    #[test]
    fn rounds_excess_fraction_digits_half_up_as_spark() {
        assert_half_up("rounding");
    }

    #[test]
    fn reject_policy_refuses_only_values_that_would_change() {
        let reject = |t| parse_decimal(t, 28, 10, DecimalPolicy::Reject);
        assert_eq!(
            reject("0.79600000009"),
            Err(DecimalError::ExcessScale { scale: 10 })
        );
        assert_eq!(reject("0.796000000000").map(|p| p.value), Ok(7_960_000_000));
    }

    #[test]
    fn accepts_the_forms_java_big_decimal_accepts() {
        assert_half_up("java_big_decimal_forms");
    }

    #[test]
    fn rejects_what_is_not_a_finite_decimal() {
        for text in [
            "",
            " 1.5",
            "1.5 ",
            "1 000",
            "NaN",
            "-nan",
            "Infinity",
            "-Infinity",
            "inf",
            "1,000.5",
            "0x10",
            "1.2.3",
            "--1",
            "+-1",
            "1e",
            "1e+",
            "e5",
            ".",
            "-",
            "1.5e3.2",
            "١٢",
            "1e99999999999",
        ] {
            assert!(
                matches!(half_up(text, 38, 10), Err(DecimalError::Syntax(_))),
                "{text:?} gave {:?}",
                half_up(text, 38, 10)
            );
            assert!(check_decimal(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn too_many_integer_digits_is_an_error_not_a_wrapped_value() {
        assert_eq!(
            half_up("123456789012345678901234567890", 28, 10),
            Err(DecimalError::Overflow {
                precision: 28,
                scale: 10
            })
        );
        // Rounding up can carry into one digit too many.
        assert_eq!(
            half_up("99.995", 4, 2),
            Err(DecimalError::Overflow {
                precision: 4,
                scale: 2
            })
        );
        assert_eq!(half_up("99.994", 4, 2), Ok((9999, true)));
        assert!(half_up("1e30", 38, 10).is_err());
        assert_eq!(
            half_up("99999999999999999999999999999999999999", 38, 0),
            Ok((99_999_999_999_999_999_999_999_999_999_999_999_999, false))
        );
        assert!(half_up("999999999999999999999999999999999999999", 38, 0).is_err());
        assert!(half_up("1e99999", 38, 0).is_err());
    }

    #[test]
    fn positive_check_for_prices_and_sizes() {
        assert_eq!(is_positive_decimal("0.0001"), Ok(true));
        assert_eq!(is_positive_decimal("0"), Ok(false));
        assert_eq!(is_positive_decimal("-0.0"), Ok(false));
        assert_eq!(is_positive_decimal("-1"), Ok(false));
        assert!(is_positive_decimal("NaN").is_err());
    }
}
