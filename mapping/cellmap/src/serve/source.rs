//! Where snapshots come from: a file (polled) or an upstream URL (polled with
//! `If-None-Match`). Each source runs on its own thread, sleeping between
//! looks; a `Wake` (SIGHUP, shutdown) interrupts the sleep.

use super::log;
use super::store::{Save, Store};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, SystemTime};

/// Messages to a source thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Look at the source now (SIGHUP); a file is read even if it looks unchanged.
    Check,
    Stop,
}

/// Sleeps `interval` or until woken. `Some(forced)` to look again, `None` to stop.
fn next_look(wake: &Receiver<Wake>, interval: Duration) -> Option<bool> {
    match wake.recv_timeout(interval) {
        Ok(Wake::Check) => Some(true),
        Err(RecvTimeoutError::Timeout) => Some(false),
        Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => None,
    }
}

/// A file's metadata, enough to tell that it was probably not touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    /// Inode change time (seconds, nanoseconds): set by the kernel on every
    /// write, rename or `utime`, and, unlike mtime, not settable by the writer
    /// (`cp -p`, `rsync -t` and `touch -r` restore mtime, not ctime).
    #[cfg(unix)]
    changed: (i64, i64),
    /// Device and inode: a rename over the file gives a new one.
    #[cfg(unix)]
    inode: (u64, u64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt as _;
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            changed: (meta.ctime(), meta.ctime_nsec()),
            #[cfg(unix)]
            inode: (meta.dev(), meta.ino()),
        }
    }

    /// How long after [`Self::changed_at`] the stamp is trusted.
    fn racy_window(&self) -> Duration {
        #[cfg(unix)]
        if self.changed.1 != 0 {
            return RACY_WINDOW_FINE;
        }
        RACY_WINDOW
    }

    /// The last change the file's writer could not backdate.
    fn changed_at(&self) -> Option<SystemTime> {
        #[cfg(unix)]
        {
            let (secs, nanos) = self.changed;
            let secs = u64::try_from(secs).ok()?;
            let nanos = u32::try_from(nanos).ok()?;
            SystemTime::UNIX_EPOCH
                .checked_add(Duration::new(secs, 0))?
                .checked_add(Duration::from_nanos(u64::from(nanos)))
        }
        #[cfg(not(unix))]
        {
            // mtime can be backdated: never settled (the file is hashed on
            // every look).
            None
        }
    }
}

/// How long after a change a file's metadata is not trusted to reveal the
/// next change. Timestamps come from a coarse clock (a kernel tick, up to
/// 10 ms; some filesystems store whole seconds), so a second write soon after
/// a read can leave every field of the stamp as it was: like git's "racily
/// clean" files, such a file is read and hashed again on every look until its
/// last change is this much older than the start of a read. This long when
/// the change time has no sub-second part (a filesystem that may store whole
/// seconds)...
const RACY_WINDOW: Duration = Duration::from_secs(2);
/// ...and this long when it has one: a few kernel ticks. Two seconds there
/// meant reading and hashing a 172 MiB file 20 times after every publish
/// (about 3 s of the sidecar's CPU, next to the gateway it feeds).
const RACY_WINDOW_FINE: Duration = Duration::from_millis(50);

/// The last read of the file.
struct Seen {
    stamp: Stamp,
    hash: u128,
    /// The stamp was already old when the file was read: a later write
    /// changes the stamp, so an equal stamp means equal content.
    settled: bool,
}

/// Watches a snapshot file.
pub(crate) struct FileSource {
    path: PathBuf,
    origin: String,
    max_bytes: u64,
    seen: Option<Seen>,
    last_error: String,
    /// Times the file was read (and hashed).
    reads: u64,
}

impl FileSource {
    pub(crate) fn new(path: PathBuf, max_bytes: u64) -> Self {
        FileSource {
            origin: format!("file {}", path.display()),
            path,
            max_bytes,
            seen: None,
            last_error: String::new(),
            reads: 0,
        }
    }

    /// Looks at the file until `wake` says stop, every `interval`.
    pub(crate) fn run(mut self, store: &Store, wake: &Receiver<Wake>, interval: Duration) {
        while let Some(forced) = next_look(wake, interval) {
            self.look(store, forced);
        }
    }

    /// One look: the file is read when its stamp changed (or is too recent
    /// to trust, or `forced`), and offered when its content hash differs from
    /// the last read. A file that changes while being read is read again at
    /// the next look, so half a file is never taken.
    pub(crate) fn look(&mut self, store: &Store, forced: bool) {
        let before = match std::fs::metadata(&self.path) {
            Ok(meta) => Stamp::of(&meta),
            Err(err) => {
                let message = format!("cannot read {}: {err}", self.path.display());
                return report_once(&mut self.last_error, message);
            }
        };
        let unchanged = self
            .seen
            .as_ref()
            .is_some_and(|seen| seen.settled && seen.stamp == before);
        if unchanged && !forced {
            return;
        }
        let started = SystemTime::now();
        self.reads += 1;
        let bytes = match read_limited(&self.path, self.max_bytes) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                let message = format!(
                    "{} is over the limit of {} bytes",
                    self.path.display(),
                    self.max_bytes
                );
                return report_once(&mut self.last_error, message);
            }
            Err(err) => {
                let message = format!("cannot read {}: {err}", self.path.display());
                return report_once(&mut self.last_error, message);
            }
        };
        let after = std::fs::metadata(&self.path).map(|meta| Stamp::of(&meta));
        if after.ok() != Some(before) || u64::try_from(bytes.len()).ok() != Some(before.len) {
            // A writer is still at it: read it at the next look.
            return;
        }
        let hash = content_hash(&bytes);
        let settled = before
            .changed_at()
            .and_then(|changed| changed.checked_add(before.racy_window()))
            .is_some_and(|trusted_from| trusted_from < started);
        let same = self.seen.as_ref().is_some_and(|seen| seen.hash == hash);
        self.seen = Some(Seen {
            stamp: before,
            hash,
            settled,
        });
        self.last_error.clear();
        if !same {
            store.offer_and_log(bytes, &self.origin, Save::Yes);
        }
    }
}

/// SipHash-1-3 (128-bit) of a snapshot's bytes, to tell a new file (or
/// upstream answer) from the one read before. Not a defence: whoever can write the file decides what is
/// served anyway.
fn content_hash(bytes: &[u8]) -> u128 {
    use std::hash::Hasher as _;
    let mut hasher = siphasher::sip128::SipHasher13::new();
    hasher.write(bytes);
    siphasher::sip128::Hasher128::finish128(&hasher).as_u128()
}

/// A file's bytes, or `None` if it has more than `max_bytes`.
pub(crate) fn read_limited(path: &Path, max_bytes: u64) -> std::io::Result<Option<Vec<u8>>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok((u64::try_from(bytes.len()).unwrap_or(u64::MAX) <= max_bytes).then_some(bytes))
}

/// Polls an upstream URL with If-None-Match until `wake` says stop.
pub(crate) fn poll_upstream(
    store: &Arc<Store>,
    url: &str,
    wake: &Receiver<Wake>,
    interval: Duration,
    max_bytes: u64,
) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let origin = format!("upstream {url}");
    let mut last_error = String::new();
    let mut last_offered = None;
    let reachable = |last_error: &mut String| {
        if !last_error.is_empty() {
            log("info", &format!("upstream {url} is reachable again"));
            last_error.clear();
        }
    };
    loop {
        let mut request = agent.get(url);
        if let Some(version) = store.current_version() {
            request = request.header("If-None-Match", format!("\"{version}\""));
        }
        match request.call() {
            Ok(mut response) if response.status() == 200 => {
                match response
                    .body_mut()
                    .with_config()
                    .limit(max_bytes)
                    .read_to_vec()
                {
                    Ok(bytes) => {
                        reachable(&mut last_error);
                        // The same answer as last time (e.g. an older
                        // version, refused): refused and logged once.
                        let hash = content_hash(&bytes);
                        if last_offered != Some(hash) {
                            last_offered = Some(hash);
                            store.offer_and_log(bytes, &origin, Save::Yes);
                        }
                    }
                    Err(err) => report_once(&mut last_error, format!("reading {url}: {err}")),
                }
            }
            Ok(response) if response.status() == 304 => reachable(&mut last_error),
            Ok(response) => report_once(
                &mut last_error,
                format!("{url} answered {}", response.status()),
            ),
            Err(err) => report_once(&mut last_error, format!("{url}: {err}")),
        }
        if next_look(wake, interval).is_none() {
            return;
        }
    }
}

/// Logs a problem when it first appears, not on every look while it lasts.
fn report_once(last: &mut String, message: String) {
    if *last != message {
        log(
            "warn",
            &format!("{message}; still serving the last good snapshot"),
        );
        *last = message;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_limited_refuses_more_than_the_limit() {
        let dir = std::env::temp_dir().join(format!("cellmap-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_limited(&path, 5).unwrap(), Some(b"12345".to_vec()));
        assert_eq!(read_limited(&path, 4).unwrap(), None);
        assert_eq!(
            read_limited(&path, u64::MAX).unwrap(),
            Some(b"12345".to_vec())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn snapshot(version: u64) -> String {
        serde_json::json!({
            "version": version,
            "generated_at": "2026-11-22T00:00:00Z",
            "hash": {"algorithm": "siphash-1-3", "key": "000102030405060708090a0b0c0d0e0f", "slots": 2},
            "cells": [{"id": "cell-a"}, {"id": "cell-b"}],
            "slot_table": "AAABAA==",
        })
        .to_string()
    }

    /// Rewritten in place right after a read, same size, mtime put back:
    /// within the racy window the file is hashed again, so the change is
    /// seen even if the coarse ctime did not move; an unchanged file is
    /// not offered twice.
    #[test]
    fn an_immediate_same_size_rewrite_is_seen_and_nothing_is_offered_twice() {
        let dir = std::env::temp_dir().join(format!("cellmap-racy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("snapshot.json");
        std::fs::write(&path, snapshot(1)).unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let store = Store::new(None, u64::MAX, cell_router_mapping::table::Keys::Ids);
        let mut source = FileSource::new(path.clone(), 1 << 20);
        source.look(&store, false);
        assert_eq!(store.current_version(), Some(1));
        std::fs::write(&path, snapshot(2)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        source.look(&store, false);
        assert_eq!(store.current_version(), Some(2));
        for _ in 0..3 {
            source.look(&store, false);
            source.look(&store, true);
        }
        assert_eq!((store.applied(), store.refused()), (2, 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// On a filesystem with sub-second change times, a file last changed
    /// more than RACY_WINDOW_FINE before a read is settled by it: later looks
    /// only stat it, until it changes again.
    #[test]
    fn a_settled_file_is_not_read_again() {
        let dir = std::env::temp_dir().join(format!("cellmap-settled-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("snapshot.json");
        std::fs::write(&path, snapshot(1)).unwrap();
        let fine = Stamp::of(&std::fs::metadata(&path).unwrap()).racy_window() == RACY_WINDOW_FINE;
        let store = Store::new(None, u64::MAX, cell_router_mapping::table::Keys::Ids);
        let mut source = FileSource::new(path.clone(), 1 << 20);
        std::thread::sleep(RACY_WINDOW_FINE * 2);
        source.look(&store, false);
        assert_eq!((store.current_version(), source.reads), (Some(1), 1));
        for _ in 0..5 {
            source.look(&store, false);
        }
        if fine {
            assert_eq!(source.reads, 1, "a settled file was read again");
        } else {
            eprintln!("whole-second change times here: the 2 s window applies");
        }
        std::fs::write(&path, snapshot(2)).unwrap();
        source.look(&store, false);
        assert_eq!(store.current_version(), Some(2));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn content_hash_tells_equal_sized_files_apart() {
        assert_ne!(content_hash(b"version 1"), content_hash(b"version 2"));
        assert_eq!(content_hash(b"same"), content_hash(b"same"));
    }
}
