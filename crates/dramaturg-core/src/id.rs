//! Message ids: unique, time-ordered, printable.

use std::fmt;
use std::str::FromStr;

/// The id of a message: a UUID version 7 (RFC 9562, the `uuid` crate) — 48
/// bits of milliseconds since the Unix epoch, then version, variant and 74
/// random bits — written as a 26-character ULID (the `ulid` crate), whose
/// layout it shares.
///
/// Ids sort by creation time (to the millisecond) and are unique across
/// processes without coordination. The same id follows a message through all
/// of its retries.
///
/// An id is 128 bits, as a UUID is: Python Dramatiq's ids are UUIDs, and
/// the [Dramatiq encoder](crate::dramatiq) writes ids as UUIDs
/// ([`MessageId::to_uuid_string`]). Parsing accepts either form.
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
/// assert_eq!(id.to_uuid_string().parse::<MessageId>().unwrap(), id);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(u128);

impl MessageId {
    /// A new id for the current time.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7().as_u128())
    }

    /// The id as a 128-bit number.
    pub fn as_u128(self) -> u128 {
        self.0
    }

    /// An id from its 128-bit number.
    pub fn from_u128(value: u128) -> Self {
        Self(value)
    }

    /// Milliseconds since the Unix epoch at which the id was made (for an
    /// id made by this type, or a ULID or UUID version 7 from elsewhere; a
    /// UUID version 4 holds no time).
    pub fn timestamp_ms(self) -> u64 {
        ulid::Ulid(self.0).timestamp_ms()
    }

    /// The id as a hyphenated lower-case UUID
    /// (`0f8f3bc2-62f4-4b5d-a3d1-9e2c4c7f1a10`), the form of Dramatiq's ids.
    /// An id made by [`MessageId::new`] is a valid UUID version 7.
    pub fn to_uuid_string(self) -> String {
        uuid::Uuid::from_u128(self.0).hyphenated().to_string()
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&ulid::Ulid(self.0), f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// The text given to [`MessageId::from_str`] is neither a ULID nor a UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid message id {0:?}: expected a ULID (26 characters of Crockford base32) or a UUID")]
pub struct ParseMessageIdError(String);

impl FromStr for MessageId {
    type Err = ParseMessageIdError;

    /// Parses a ULID (26 characters, either case) or a UUID (any of the
    /// `uuid` crate's forms: hyphenated, simple, braced, URN).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // 26 base32 characters hold 130 bits: a first character above 7
        // would not fit in 128.
        if s.len() == 26 && s.as_bytes()[0] <= b'7' {
            if let Ok(ulid) = ulid::Ulid::from_string(s) {
                return Ok(Self(ulid.0));
            }
        } else if let Ok(uuid) = uuid::Uuid::parse_str(s) {
            return Ok(Self(uuid.as_u128()));
        }
        Err(ParseMessageIdError(s.chars().take(40).collect()))
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
        assert!("0f8f3bc2-62f4-4b5d-a3d1-9e2c4c7f1a1".parse::<MessageId>().is_err());
    }

    #[test]
    fn new_ids_are_version_7_uuids_with_their_time() {
        let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let before = now();
        let id = MessageId::new();
        let uuid = uuid::Uuid::parse_str(&id.to_uuid_string()).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
        assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
        assert!(id.timestamp_ms() >= before && id.timestamp_ms() <= now());
    }

    #[test]
    fn uuids_parse_and_print() {
        let text = "0f8f3bc2-62f4-4b5d-a3d1-9e2c4c7f1a10";
        let id: MessageId = text.parse().unwrap();
        assert_eq!(id.to_uuid_string(), text);
        assert_eq!("0F8F3BC262F44B5DA3D19E2C4C7F1A10".parse::<MessageId>().unwrap(), id);
        assert_eq!(id.to_string().parse::<MessageId>().unwrap(), id);
    }
}
