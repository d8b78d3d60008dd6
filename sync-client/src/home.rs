//! What every program keeping a device's state needs, whichever its front end (the `dooz` CLI,
//! the SDK): the not-enrolled marker, default and valid names, the private state directory.

use std::path::Path;

/// A [`DeviceRecord`](crate::DeviceRecord) with this server address has keys but has not
/// enrolled with a server.
pub const NOT_ENROLLED_ADDR: &str = "";

/// Longest device name (the protocol's limit).
const MAX_DEVICE_NAME_LEN: usize = dooz_protocol::limits::MAX_NAME_LEN;

/// The host name, as a device's default name (`"dooz device"` if there is none).
pub fn default_device_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| is_usable_device_name(s))
        })
        .unwrap_or_else(|| "dooz device".to_owned())
}

/// Whether `name` can name a device: 1 to 256 bytes of text without control characters.
pub fn is_usable_device_name(name: &str) -> bool {
    !name.trim().is_empty()
        && name.len() <= MAX_DEVICE_NAME_LEN
        && !name.chars().any(char::is_control)
}

/// Whether `name` can name a vault: 1 to 255 bytes (it travels in vault codes) without control
/// characters.
pub fn is_usable_vault_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && !name.chars().any(char::is_control)
}

/// Makes `dir` (and its parents) readable by the user only: it holds secret keys.
#[cfg(unix)]
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Makes `dir` (and its parents).
#[cfg(not(unix))]
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_usable_device_name("Ana's phone"));
        assert!(!is_usable_device_name("  "));
        assert!(!is_usable_device_name("a\nb"));
        assert!(!is_usable_device_name(&"x".repeat(MAX_DEVICE_NAME_LEN + 1)));
        assert!(is_usable_vault_name("notes"));
        assert!(!is_usable_vault_name(""));
        assert!(!is_usable_vault_name(&"v".repeat(256)));
        assert!(is_usable_device_name(&default_device_name()));
    }
}
