//! Certificate serial numbers: drawn from the OS CSPRNG, positive and
//! non-zero by construction.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::LedgerError;

/// Length in bytes of a certd serial number.
pub const SERIAL_LEN: usize = 16;

/// A certificate serial number issued by certd: 16 bytes from the OS CSPRNG,
/// positive (top bit clear) and non-zero.
///
/// The invariants are checked on every construction, so holding a `Serial`
/// means holding a valid one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Serial([u8; SERIAL_LEN]);

/// Why a string or byte slice is not a valid certd serial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SerialError {
    /// The text is not 32 hexadecimal digits.
    #[error("a serial is {} hexadecimal digits", SERIAL_LEN * 2)]
    Malformed,
    /// The value has its top bit set, so it would be a negative INTEGER.
    #[error("a serial must be positive (top bit clear)")]
    Negative,
    /// The value is zero, which RFC 5280 forbids.
    #[error("a serial must not be zero")]
    Zero,
}

impl Serial {
    /// Draws a fresh serial from the OS CSPRNG.
    pub fn random() -> Result<Self, LedgerError> {
        loop {
            let mut bytes = [0u8; SERIAL_LEN];
            getrandom::fill(&mut bytes).map_err(LedgerError::Rng)?;
            // Clearing the top bit keeps the DER INTEGER positive while
            // leaving 127 bits of entropy, far above the 64 that the
            // Baseline Requirements demand.
            bytes[0] &= 0x7f;
            // An all-zero draw (probability 2^-127) is simply drawn again.
            if let Ok(serial) = Self::from_bytes(bytes) {
                return Ok(serial);
            }
        }
    }

    /// Wraps raw bytes, checking that they form a positive, non-zero serial.
    pub fn from_bytes(bytes: [u8; SERIAL_LEN]) -> Result<Self, SerialError> {
        if bytes[0] & 0x80 != 0 {
            return Err(SerialError::Negative);
        }
        if bytes.iter().all(|b| *b == 0) {
            return Err(SerialError::Zero);
        }
        Ok(Self(bytes))
    }

    /// Parses the 32-digit hexadecimal form (either case).
    pub fn from_hex(text: &str) -> Result<Self, SerialError> {
        let mut bytes = [0u8; SERIAL_LEN];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| SerialError::Malformed)?;
        Self::from_bytes(bytes)
    }

    /// The lowercase hexadecimal form used in the API, logs and the ledger.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The big-endian bytes, ready for the certificate's serialNumber.
    pub fn as_bytes(&self) -> &[u8; SERIAL_LEN] {
        &self.0
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({})", self.to_hex())
    }
}

impl FromStr for Serial {
    type Err = SerialError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::from_hex(text)
    }
}

impl Serialize for Serial {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Serial {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_hex_round_trip_and_invariants() {
        let serial = Serial::random().expect("rng");
        assert_eq!(Serial::from_hex(&serial.to_hex()), Ok(serial));
        assert_eq!(serial.to_hex(), serial.to_hex().to_lowercase());
        assert_eq!(Serial::from_hex("00"), Err(SerialError::Malformed));
        assert_eq!(Serial::from_hex(&"0".repeat(32)), Err(SerialError::Zero));
        assert_eq!(
            Serial::from_hex(&format!("80{}", "0".repeat(30))),
            Err(SerialError::Negative)
        );
    }
}
