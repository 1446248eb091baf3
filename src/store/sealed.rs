//! Ledger payloads at rest: sealed with AES-256-GCM under a key the operator provides
//! (`serve --ledger-key FILE`), so the database files hold no plaintext of what sites sent
//! (rejected payloads may carry identifiers until a site corrects them; accepted ones carry
//! them before de-identification).
//!
//! A sealed payload is `nonce (12 bytes) || ciphertext || tag (16 bytes)` of the gzip of the
//! payload; the associated data is the ledger row's `received` and `request_id`, so a sealed
//! payload moved to another row does not open. Each row keeps the key's fingerprint
//! (`payload_key`), so a wrong key is named as such instead of failing as corrupt data.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::Digest as _;
use std::path::Path;

/// Why a key file or a sealed payload could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file could not be read or written.
    #[error("ledger key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The key file does not hold a key.
    #[error("ledger key file {path}: {reason}")]
    BadKey {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The payload was sealed under another key than the configured one.
    #[error(
        "ledger payload of submission {row} was sealed with key {sealed_with}, \
         but the configured ledger key is {configured}: wrong --ledger-key"
    )]
    WrongKey {
        /// The ledger row.
        row: i64,
        /// The fingerprint kept with the row.
        sealed_with: String,
        /// The fingerprint of the configured key.
        configured: String,
    },
    /// The payload is sealed but no key is configured.
    #[error("ledger payload of submission {0} is encrypted and no ledger key is configured")]
    NoKey(i64),
    /// Authentication of the sealed payload failed (altered data, or moved between rows).
    #[error("ledger payload of submission {0} does not decrypt: the data was altered")]
    Corrupt(i64),
}

/// An AES-256-GCM key for ledger payloads, with its fingerprint.
#[derive(Clone)]
pub struct LedgerKey {
    cipher: Aes256Gcm,
    fingerprint: String,
}

impl std::fmt::Debug for LedgerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LedgerKey({})", self.fingerprint)
    }
}

/// Length of a nonce.
const NONCE: usize = 12;

impl LedgerKey {
    /// The key made of 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> LedgerKey {
        let digest = sha2::Sha256::digest(bytes);
        let fingerprint = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        LedgerKey {
            cipher: Aes256Gcm::new(bytes.into()),
            fingerprint,
        }
    }

    /// A new random key.
    pub fn generate() -> LedgerKey {
        LedgerKey::from_bytes(&random_key())
    }

    /// The key's fingerprint (16 hex digits of its SHA-256), kept with each sealed row.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Reads a key file: 64 hex digits (surrounding white space ignored).
    ///
    /// # Errors
    /// [`SealError::Io`] when unreadable, [`SealError::BadKey`] when it is not such a key.
    pub fn from_file(path: &Path) -> Result<LedgerKey, SealError> {
        let text = std::fs::read_to_string(path).map_err(|source| SealError::Io {
            path: path.display().to_string(),
            source,
        })?;
        LedgerKey::from_hex(text.trim()).map_err(|reason| SealError::BadKey {
            path: path.display().to_string(),
            reason,
        })
    }

    /// A key from 64 hex digits.
    ///
    /// # Errors
    /// A description of what is wrong with the text.
    pub fn from_hex(text: &str) -> Result<LedgerKey, String> {
        if text.len() != 64 {
            return Err(format!(
                "expected 64 hex digits (a 256-bit key), found {} characters",
                text.len()
            ));
        }
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            let pair = text.get(2 * i..2 * i + 2).unwrap_or("");
            *b = u8::from_str_radix(pair, 16)
                .map_err(|_| format!("character {} is not a hex digit", 2 * i + 1))?;
        }
        Ok(LedgerKey::from_bytes(&bytes))
    }

    /// The key of `path`, made (random, file mode 0600 on unix) when the file does not
    /// exist: the demo mode's `./imagio-demo/ledger.key`.
    ///
    /// # Errors
    /// As [`LedgerKey::from_file`], or when the new file cannot be written.
    pub fn load_or_create(path: &Path) -> Result<LedgerKey, SealError> {
        if path.exists() {
            return LedgerKey::from_file(path);
        }
        let io = |source| SealError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let bytes = random_key();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(io)?;
        std::io::Write::write_all(&mut file, format!("{hex}\n").as_bytes()).map_err(io)?;
        Ok(LedgerKey::from_bytes(&bytes))
    }

    /// Seals `plain` bound to `aad`.
    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        let mut out = nonce.to_vec();
        // Encryption in memory fails only for inputs beyond GCM's 64 GiB limit, which the
        // body size limit rules out.
        if let Ok(sealed) = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
        {
            out.extend_from_slice(&sealed);
        }
        out
    }

    /// Opens a payload sealed by [`LedgerKey::seal`] with the same `aad`; `row` names the
    /// ledger row in errors.
    ///
    /// # Errors
    /// [`SealError::Corrupt`] when it does not authenticate.
    pub fn open(&self, sealed: &[u8], aad: &[u8], row: i64) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE {
            return Err(SealError::Corrupt(row));
        }
        let (nonce, body) = sealed.split_at(NONCE);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad })
            .map_err(|_| SealError::Corrupt(row))
    }
}

fn random_key() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    bytes
}

/// The associated data of a ledger row's sealed payload.
pub fn aad(received: &str, request_id: &str) -> Vec<u8> {
    format!("{received}\n{request_id}").into_bytes()
}

/// The instant before which payloads are purged: `now_millis` minus `retention`.
pub fn cutoff(now_millis: i64, retention: std::time::Duration) -> String {
    let back = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    super::time::instant(now_millis.saturating_sub(back))
}

/// A retention period: `30d`, `12h`, `90m`, `45s`, or a bare number of days.
///
/// # Errors
/// A description of what is wrong.
pub fn parse_retention(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "d"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a retention period like 30d, 12h, 90m or 45s"))?;
    let secs = match unit {
        "d" => n.checked_mul(86_400),
        "h" => n.checked_mul(3600),
        "m" => n.checked_mul(60),
        "s" => Some(n),
        _ => None,
    }
    .ok_or_else(|| format!("{text:?} is not a retention period like 30d, 12h, 90m or 45s"))?;
    Ok(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_bound_to_the_row() {
        let key = LedgerKey::generate();
        let sealed = key.seal(b"payload SECRET", b"row-1");
        assert!(!sealed.windows(6).any(|w| w == b"SECRET"));
        assert_eq!(
            key.open(&sealed, b"row-1", 1).expect("open"),
            b"payload SECRET"
        );
        assert!(matches!(
            key.open(&sealed, b"row-2", 1),
            Err(SealError::Corrupt(1))
        ));
        let other = LedgerKey::generate();
        assert!(other.open(&sealed, b"row-1", 1).is_err());
        assert_ne!(key.fingerprint(), other.fingerprint());
    }

    #[test]
    fn key_files_and_retention() {
        let hex = "00".repeat(31) + "ff";
        let k = LedgerKey::from_hex(&hex).expect("key");
        assert_eq!(k.fingerprint().len(), 16);
        assert!(LedgerKey::from_hex("abc").is_err());
        assert!(LedgerKey::from_hex(&"zz".repeat(32)).is_err());
        assert_eq!(
            parse_retention("30").expect("days"),
            std::time::Duration::from_secs(30 * 86_400)
        );
        assert_eq!(
            parse_retention("12h").expect("hours"),
            std::time::Duration::from_secs(12 * 3600)
        );
        assert!(parse_retention("3w").is_err());
        assert_eq!(
            cutoff(86_400_000 * 2, std::time::Duration::from_secs(86_400)),
            "1970-01-02T00:00:00.000Z"
        );
    }
}
