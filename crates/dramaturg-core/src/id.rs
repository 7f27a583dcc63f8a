//! Message ids: unique, time-ordered, printable.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::random::random_u64;

/// Crockford's base32 alphabet, as used by ULIDs.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The id of a message: 48 bits of milliseconds since the Unix epoch followed
/// by 80 random bits, written as a 26-character ULID.
///
/// Ids sort by creation time (to the millisecond) and are unique across
/// processes without coordination. The same id follows a message through all
/// of its retries.
///
/// # Examples
///
/// ```
/// use dramaturg_core::MessageId;
///
/// let id = MessageId::new();
/// let text = id.to_string();
/// assert_eq!(text.len(), 26);
/// assert_eq!(text.parse::<MessageId>().unwrap(), id);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(u128);

impl MessageId {
    /// A new id for the current time.
    pub fn new() -> Self {
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, crate::time::millis) & 0xFFFF_FFFF_FFFF;
        let random = (u128::from(random_u64()) << 16) | u128::from(random_u64() & 0xFFFF);
        Self((u128::from(millis) << 80) | random)
    }

    /// The id as a 128-bit number.
    pub fn as_u128(self) -> u128 {
        self.0
    }

    /// An id from its 128-bit number.
    pub fn from_u128(value: u128) -> Self {
        Self(value)
    }

    /// Milliseconds since the Unix epoch at which the id was made.
    pub fn timestamp_ms(self) -> u64 {
        (self.0 >> 80) as u64
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 26];
        for (i, slot) in out.iter_mut().enumerate() {
            let shift = 125 - 5 * i as u32;
            *slot = ALPHABET[((self.0 >> shift) & 0x1F) as usize];
        }
        // Every byte comes from ALPHABET, so this is ASCII.
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// The text given to [`MessageId::from_str`] is not a 26-character ULID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid message id {0:?}: expected 26 characters of Crockford base32")]
pub struct ParseMessageIdError(String);

impl FromStr for MessageId {
    type Err = ParseMessageIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMessageIdError(s.chars().take(40).collect());
        if s.len() != 26 {
            return Err(err());
        }
        let mut value: u128 = 0;
        for (i, byte) in s.bytes().enumerate() {
            let digit = ALPHABET.iter().position(|&c| c == byte.to_ascii_uppercase()).ok_or_else(err)? as u128;
            // The first character carries only the top 3 bits.
            if i == 0 && digit > 7 {
                return Err(err());
            }
            value = (value << 5) | digit;
        }
        Ok(Self(value))
    }
}

impl serde::Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sort_by_time() {
        let a = MessageId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = MessageId::new();
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
        assert_eq!(a.to_string().parse::<MessageId>().unwrap(), a);
        assert_eq!(MessageId::from_u128(u128::MAX).to_string(), "7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
    }

    #[test]
    fn ids_are_unique() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| MessageId::new()).collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn bad_ids_are_rejected() {
        assert!("short".parse::<MessageId>().is_err());
        assert!("8ZZZZZZZZZZZZZZZZZZZZZZZZZ".parse::<MessageId>().is_err());
        assert!("0000000000000000000000000U".parse::<MessageId>().is_err());
    }
}
