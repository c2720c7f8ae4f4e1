//! This node's WireGuard key (upstream's `setupKeys`): the private key in a file,
//! `/run/flannel/wgkey` unless `WIREGUARD_KEY_FILE` says where, in base64 as `wg genkey`
//! writes it; made (mode 0400) when the file is missing and kept across restarts, because
//! every peer knows this node by its public key. A file that cannot be read or parsed is an
//! error, never replaced: a new key would cut this node off until every peer read its lease
//! again.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::prelude::{Engine as _, BASE64_STANDARD};
use tracing::info;

use crate::netlink::wireguard::Key;
use crate::BackendError;

/// Upstream's key file.
pub const DEFAULT_KEY_FILE: &str = "/run/flannel/wgkey";

/// The key file: `WIREGUARD_KEY_FILE`, else upstream's.
pub fn key_file() -> PathBuf {
    std::env::var_os("WIREGUARD_KEY_FILE")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_KEY_FILE), PathBuf::from)
}

/// A key from its base64 text (surrounding white space ignored).
pub fn parse(text: &str) -> Result<Key, String> {
    let raw = BASE64_STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    Key::try_from(raw.as_slice())
        .map_err(|_| format!("a key is 32 bytes, this is {} bytes", raw.len()))
}

/// A key as base64 text (what `wg` shows and leases carry).
pub fn encode(key: &Key) -> String {
    BASE64_STANDARD.encode(key)
}

/// The public key of `private`.
pub fn public_of(private: &Key) -> Key {
    let secret = x25519_dalek::StaticSecret::from(*private);
    x25519_dalek::PublicKey::from(&secret).to_bytes()
}

/// A new private key, clamped as `wg genkey` makes them.
fn generate() -> Key {
    let mut key: Key = rand::random();
    key[0] &= 248;
    key[31] = (key[31] & 127) | 64;
    key
}

/// The private key in `path`, made there when the file is missing.
pub fn load_or_create(path: &Path) -> Result<Key, BackendError> {
    let fail = |what: String| {
        BackendError::Device(format!("WireGuard key file {}: {what}", path.display()))
    };
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text).map_err(|e| {
            fail(format!(
                "could not parse private key from file: {e} (the file is left as it is: fix it, or remove it to have a new key made)"
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir)
                    .map_err(|e| fail(format!("could not write key file: {e}")))?;
            }
            // create_new: two starts at once must not each write a key of their own
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(path)
                .map_err(|e| fail(format!("could not write key file: {e}")))?;
            file.write_all(encode(&key).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| fail(format!("could not write key file: {e}")))?;
            info!("made a new WireGuard private key in {}", path.display());
            Ok(key)
        }
        Err(e) => Err(fail(format!("could not read it: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_public_key_of_a_known_private_key() {
        // RFC 7748 §6.1: Alice's private and public keys
        let private: Key = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let public = public_of(&private);
        assert_eq!(public[..4], [0x85, 0x20, 0xf0, 0x09], "{}", encode(&public));
        assert_eq!(parse(&encode(&public)).unwrap(), public);
    }

    #[test]
    fn made_once_0400_then_kept_and_a_bad_file_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/wgkey");
        let made = load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        assert_eq!(load_or_create(&path).unwrap(), made, "kept across restarts");
        assert_eq!(made[0] & 7, 0);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not a key").unwrap();
        let e = load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("could not parse private key"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key");
    }
}
