//! Replacing a file atomically, for `cellmap build -o` and the sidecar's
//! `--persist` copy: a reader (a watching sidecar, Envoy, the next start)
//! sees the old file or the new one, never half of one.

use std::io::Write as _;
use std::path::Path;

/// Writes `bytes` to a temporary file next to `path` (same directory, so the
/// rename stays on one filesystem), flushes it to disk, renames it over
/// `path`, then flushes the directory entry.
///
/// The fsyncs are not needed for atomicity (rename alone gives that while the
/// machine stays up) but for durability: without them a power cut soon after
/// the rename can leave an empty or truncated file under the new name on
/// filesystems that do not order data before the rename (XFS, ext4 with
/// `noauto_da_alloc`), and the persisted snapshot exists for exactly the
/// restart after such an event. Snapshots change at most a few times a
/// second, so the cost is small.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot.json".to_string());
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_parent(path);
    Ok(())
}

/// Flushes the directory holding `path` so the rename itself is durable.
/// Best effort: some filesystems refuse to open or sync a directory.
fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(dir) = std::fs::File::open(parent) {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = std::env::temp_dir().join(format!("cellmap-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("snapshot.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("snapshot.json")]);
        // A directory that does not exist: an error, no panic.
        assert!(write_atomically(&dir.join("missing/x.json"), b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
