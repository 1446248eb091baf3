//! The study secret that keys pseudonyms: read from a file (`--pseudonym-key`), or, for a
//! demo server, made once in `./imagio-demo/`.

use std::path::{Path, PathBuf};

/// Fewest bytes a key file may hold.
pub const MIN_KEY_BYTES: usize = 32;

/// The secret key of pseudonyms (never printed).
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<secret>)")
    }
}

/// A key that cannot be read or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file cannot be read or written.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// Too short to be a secret.
    #[error("{0}: a pseudonym key needs at least {MIN_KEY_BYTES} bytes (found {1}); make one with `head -c 32 /dev/urandom | base64 > FILE`")]
    TooShort(PathBuf, usize),
}

impl Key {
    /// A key from its bytes (the file's content without surrounding whitespace).
    ///
    /// # Errors
    /// [`KeyError::TooShort`] under [`MIN_KEY_BYTES`].
    pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Key, KeyError> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort(origin.to_path_buf(), trimmed.len()));
        }
        Ok(Key(trimmed.to_vec()))
    }

    /// Reads a key file.
    ///
    /// # Errors
    /// When it cannot be read or is too short.
    pub fn load(path: &Path) -> Result<Key, KeyError> {
        let bytes = std::fs::read(path).map_err(|e| KeyError::Io(path.to_path_buf(), e))?;
        Key::from_bytes(&bytes, path)
    }

    /// The demo key `dir/pseudonym.key`: read when it exists, else made from 32 random
    /// bytes (hex, file mode 0600). Returns the key and whether it was made.
    ///
    /// # Errors
    /// When the folder or file cannot be read or written.
    pub fn demo(dir: &Path) -> Result<(Key, PathBuf, bool), KeyError> {
        let path = dir.join("pseudonym.key");
        if path.exists() {
            return Ok((Key::load(&path)?, path, false));
        }
        std::fs::create_dir_all(dir).map_err(|e| KeyError::Io(dir.to_path_buf(), e))?;
        let mut bytes = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = match options.open(&path) {
            Ok(f) => f,
            // Another server started beside this one made it first: use that key.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                for _ in 0..20 {
                    if let Ok(k) = Key::load(&path) {
                        return Ok((k, path, false));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                return Ok((Key::load(&path)?, path, false));
            }
            Err(e) => return Err(KeyError::Io(path.clone(), e)),
        };
        std::io::Write::write_all(&mut file, format!("{hex}\n").as_bytes())
            .map_err(|e| KeyError::Io(path.clone(), e))?;
        Ok((Key(hex.into_bytes()), path, true))
    }

    /// The key's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_refused_and_demo_keys_persist() {
        assert!(Key::from_bytes(b"short\n", Path::new("k")).is_err());
        let k =
            Key::from_bytes(b"  0123456789abcdef0123456789abcdef \n", Path::new("k")).expect("key");
        assert_eq!(k.bytes().len(), 32);
        assert_eq!(format!("{k:?}"), "Key(<secret>)");
        let dir = std::env::temp_dir().join(format!("imagio-demo-key-{}", uuid::Uuid::new_v4()));
        let (a, path, made) = Key::demo(&dir).expect("made");
        assert!(made);
        let (b, _, made_again) = Key::demo(&dir).expect("read");
        assert!(!made_again);
        assert_eq!(a.bytes(), b.bytes());
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_dir(dir);
    }
}
