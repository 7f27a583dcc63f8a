//! Durations in attributes, written as `humantime` reads them (`"500ms"`,
//! `"30s"`, `"5m"`, `"2h"`, `"1d"`, `"1m 30s"`), read at compile time.

/// Whole milliseconds in `text`, or a message saying what is wrong.
pub(crate) fn parse_millis(text: &str) -> Result<u64, String> {
    let duration = humantime::parse_duration(text.trim()).map_err(|error| {
        format!("invalid duration {text:?} ({error}): write it like \"500ms\", \"30s\", \"5m\", \"2h\", \"1d\" or \"1m30s\"")
    })?;
    u64::try_from(duration.as_millis()).map_err(|_| format!("duration {text:?} is too long"))
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
        assert_eq!(parse_millis("1m 30s"), Ok(90_000));
        assert_eq!(parse_millis("1d"), Ok(86_400_000));
        assert_eq!(parse_millis("1.5s"), Ok(1_500));
        for bad in ["", "30", "s", "3 parsecs", "-1s", "99999999999999999999d"] {
            assert!(parse_millis(bad).is_err(), "{bad:?}");
        }
    }
}
