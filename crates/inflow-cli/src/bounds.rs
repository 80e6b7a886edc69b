//! Value parsers that bound numeric flags at parse time, before any work: clap then refuses a
//! nonsense value with the flag's name and the range allowed (`invalid value '0' for
//! '--top-k <TOP_K>': expected a whole number ≥ 1`). Non-finite numbers (nan, inf) are
//! refused by every real-valued parser. Checks that need the model or the store (rank ≤ a
//! layer's size, --max-tokens ≤ the context length) are the library's.

fn number(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a number, got `{s}`"))?;
    if !v.is_finite() {
        return Err(format!("expected a finite number, got `{s}`"));
    }
    Ok(v)
}

/// A count: a whole number ≥ 1.
pub(crate) fn count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err("expected a whole number ≥ 1".into()),
    }
}

/// A finite number > 0 (step sizes, damping, tolerances, ε).
pub(crate) fn positive(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if v > 0.0 {
        Ok(v)
    } else {
        Err(format!("expected a number > 0, got {v}"))
    }
}

/// A finite number ≥ 0 (weight decay, temperature, loss weights, 0-means-off limits).
pub(crate) fn non_negative(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("expected a number ≥ 0, got {v}"))
    }
}

/// A finite number (thresholds on scores of either sign).
pub(crate) fn finite(s: &str) -> Result<f32, String> {
    number(s).map(|v| v as f32)
}

/// A rate in [0, 1) (Adam's β₁ and β₂, dropout): 1 would never forget (or drop everything).
pub(crate) fn below_one(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("expected a number in [0, 1), got {v}"))
    }
}

/// A share in (0, 1] (top-p, a fraction kept).
pub(crate) fn share(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("expected a number in (0, 1], got {v}"))
    }
}

/// A strict fraction in (0, 1) (a split, a planted share, a subset ratio).
pub(crate) fn fraction(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if v > 0.0 && v < 1.0 {
        Ok(v)
    } else {
        Err(format!("expected a number in (0, 1), got {v}"))
    }
}

/// A proportion in [0, 1] (a least success rate; 0 accepts anything).
pub(crate) fn proportion(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("expected a number in [0, 1], got {v}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_refuse_what_is_out_of_range_or_not_finite() {
        assert_eq!(count("3"), Ok(3));
        for bad in ["0", "-1", "1.5", "x", ""] {
            assert!(count(bad).is_err(), "{bad}");
        }
        assert!(positive("1e-8").is_ok());
        for bad in ["0", "-1", "nan", "inf", "-inf", "1e999"] {
            assert!(positive(bad).is_err(), "{bad}");
        }
        assert!(non_negative("0").is_ok() && non_negative("-0.1").is_err());
        assert!(below_one("0").is_ok() && below_one("1").is_err() && below_one("-0.5").is_err());
        assert!(share("1").is_ok() && share("0").is_err() && share("1.01").is_err());
        assert!(fraction("0.5").is_ok() && fraction("1").is_err() && fraction("0").is_err());
        assert!(finite("-2.5").is_ok() && finite("NaN").is_err());
    }
}
