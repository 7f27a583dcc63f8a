//! Durations written like `"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"` or
//! `"1m30s"`, read at compile time.

/// Milliseconds in `text`, or a message saying what is wrong.
pub(crate) fn parse_millis(text: &str) -> Result<u64, String> {
    let invalid =
        || format!("invalid duration {text:?}: write it like \"500ms\", \"30s\", \"5m\", \"2h\", \"1d\" or \"1m30s\"");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(invalid());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let factor = match rest[..unit_len].trim() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(invalid()),
        };
        rest = &rest[unit_len..];
        total = number.checked_mul(factor).and_then(|ms| total.checked_add(ms)).ok_or_else(invalid)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::parse_millis;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_millis("500ms"), Ok(500));
        assert_eq!(parse_millis("30s"), Ok(30_000));
        assert_eq!(parse_millis("2h"), Ok(7_200_000));
        assert_eq!(parse_millis("1m30s"), Ok(90_000));
        assert_eq!(parse_millis("1d"), Ok(86_400_000));
        for bad in ["", "30", "s", "3 sec", "-1s", "1.5s", "99999999999999999999d"] {
            assert!(parse_millis(bad).is_err(), "{bad:?}");
        }
    }
}
