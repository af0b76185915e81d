//! Finding the PostgreSQL server binaries on this machine.

use std::path::{Path, PathBuf};

use super::Error;

/// The programs a directory must hold to run a private cluster.
const REQUIRED: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// Finds a directory holding `initdb`, `pg_ctl` and `postgres`.
///
/// Looks, in order, on `PATH`, at `pg_config --bindir`, then in
/// `/usr/lib/postgresql/*/bin` (highest version first).
pub fn find_bindir() -> Result<PathBuf, Error> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(dir) = on_path.into_iter().find(|dir| holds_server_binaries(dir)) {
        return Ok(dir);
    }
    if let Some(dir) = pg_config_bindir().filter(|dir| holds_server_binaries(dir)) {
        return Ok(dir);
    }
    if let Some(dir) = debian_bindir(Path::new("/usr/lib/postgresql")) {
        return Ok(dir);
    }
    Err(Error::BinariesNotFound)
}

fn holds_server_binaries(dir: &Path) -> bool {
    REQUIRED.iter().all(|name| dir.join(name).is_file())
}

fn pg_config_bindir() -> Option<PathBuf> {
    let output = std::process::Command::new("pg_config")
        .arg("--bindir")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let dir = String::from_utf8(output.stdout).ok()?;
    let dir = dir.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// Debian/Ubuntu keep each major version in `/usr/lib/postgresql/<version>/bin`.
fn debian_bindir(root: &Path) -> Option<PathBuf> {
    let mut candidates: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let version = parse_version(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            holds_server_binaries(&bin).then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, bin)| bin)
}

/// "15" -> [15], "9.6" -> [9, 6]; anything else is not a version directory.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically() {
        let mut versions = [
            parse_version("9.6").unwrap_or_default(),
            parse_version("15").unwrap_or_default(),
            parse_version("10").unwrap_or_default(),
        ];
        versions.sort();
        assert_eq!(versions.last(), Some(&vec![15]));
        assert_eq!(parse_version("main"), None);
    }

    #[test]
    fn picks_the_highest_complete_version() -> std::io::Result<()> {
        let root = std::env::temp_dir().join(format!("sagad-bindir-{}", uuid::Uuid::new_v4()));
        for (version, complete) in [("9.6", true), ("12", true), ("16", false)] {
            let bin = root.join(version).join("bin");
            std::fs::create_dir_all(&bin)?;
            let names: &[&str] = if complete { &REQUIRED } else { &["initdb"] };
            for name in names {
                std::fs::write(bin.join(name), b"")?;
            }
        }
        let found = debian_bindir(&root);
        std::fs::remove_dir_all(&root)?;
        assert_eq!(found, Some(root.join("12").join("bin")));
        Ok(())
    }

    #[test]
    fn missing_binaries_error_tells_the_user_what_to_do() {
        let message = Error::BinariesNotFound.to_string();
        assert!(message.contains("apt-get install postgresql"), "{message}");
        assert!(message.contains("DATABASE_URL"), "{message}");
    }
}
