//! The last good snapshot, and the long-polls waiting for the next one.
//!
//! The served snapshot sits in a `tokio::sync::watch` channel as one
//! `Arc<Served>` whose body is a `Bytes`: an answer clones a pointer, never
//! the body, and a waiting long-poll is a parked future on the channel, not a
//! thread. Sources (the file watcher, the upstream poller) run on their own
//! threads and offer candidates through `Store::offer_and_log`.

use super::log;
use bytes::Bytes;
use cell_router_mapping::binary;
use cell_router_mapping::table::Keys;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// A snapshot that passed validation, as served.
#[derive(Debug)]
pub(crate) struct Served {
    pub(crate) version: u64,
    /// The JSON form (for people). Rendered on the first JSON request when
    /// the source gave the binary form: rendering millions of overrides costs
    /// about a second of CPU, next to a gateway that only asks for the binary
    /// form.
    json: std::sync::OnceLock<Bytes>,
    /// The bytes the source gave (either form), as written to `--persist`.
    pub(crate) source: Bytes,
    /// The binary form (`mapping/SPEC.md`, "Binary form"), for clients that
    /// ask for it (`Accept: application/vnd.cellmap.snapshot`).
    pub(crate) binary: Bytes,
    /// Whether the binary form is keyed by hash (`--binary-keys`), and if
    /// it was asked for but not possible, why.
    pub(crate) hashed: bool,
    pub(crate) not_hashed_because: Option<String>,
    pub(crate) cells: usize,
    pub(crate) tenant_entries: usize,
    /// Where it came from (`file …`, `upstream …`, `persisted copy …`).
    pub(crate) origin: String,
    pub(crate) since: std::time::Instant,
}

impl Served {
    /// Whether there is a JSON form: not when the source is the binary form
    /// keyed by hash, which carries no tenant ids.
    pub(crate) fn has_json(&self) -> bool {
        !binary::is_hashed(&self.source)
    }

    /// The JSON form, rendered from the source's binary form on first use.
    pub(crate) fn json(&self) -> Result<Bytes, String> {
        if let Some(json) = self.json.get() {
            return Ok(json.clone());
        }
        let snapshot = binary::parse_any(&self.source).map_err(|e| e.to_string())?;
        if snapshot.keys() == Keys::Hashes {
            return Err(NO_JSON.to_string());
        }
        let rendered = Bytes::from(snapshot.to_doc().to_json().into_bytes());
        Ok(self.json.get_or_init(|| rendered).clone())
    }
}

/// What became of a snapshot offered by a source.
#[derive(Debug)]
pub(crate) enum Offer {
    Applied(Arc<Served>),
    /// The same version with the same bytes.
    Unchanged,
}

/// Whether an applied snapshot is written to the `--persist` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Save {
    Yes,
    /// It was read from that file.
    No,
}

/// Why [`Store::offer`] did not take a snapshot.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) version: Option<u64>,
    pub(crate) reason: String,
    /// Over `--max-body-bytes`.
    pub(crate) too_large: bool,
}

impl Refused {
    fn invalid(reason: String) -> Self {
        Refused {
            version: None,
            reason,
            too_large: false,
        }
    }
}

/// Why a source keyed by hash has no JSON form.
pub(crate) const NO_JSON: &str = "the source is the binary form keyed by hash, which carries no \
    tenant ids: there is no JSON form (publish JSON, or the binary form keyed by id)";

/// The longest a long-poll is held, whatever `wait` and `--max-wait-s` say.
const LONGEST_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

pub(crate) struct Store {
    current: watch::Sender<Option<Arc<Served>>>,
    refused: AtomicU64,
    /// Of `refused`, those refused for their size (`max_body_bytes`).
    refused_too_large: AtomicU64,
    /// Why the last refused snapshot was refused (its version when known).
    last_refusal: Mutex<Option<Refusal>>,
    applied: AtomicU64,
    persist: Option<PathBuf>,
    /// `--max-body-bytes`: the largest body the gateways' Envoy takes (its
    /// `http.async_response_buffer_limit`). A snapshot whose binary form is
    /// larger is not published: no gateway could take it, and every VM
    /// would download it again and again.
    max_body_bytes: u64,
    /// `--binary-keys`: how the binary form served to gateways keys tenants.
    binary_keys: Keys,
}

/// Why a snapshot offered by a source was refused, for `/healthz`.
#[derive(Clone, Debug)]
pub(crate) struct Refusal {
    pub(crate) version: Option<u64>,
    pub(crate) reason: String,
    pub(crate) origin: String,
    pub(crate) too_large: bool,
}

impl Store {
    pub(crate) fn new(persist: Option<PathBuf>, max_body_bytes: u64, binary_keys: Keys) -> Self {
        Store {
            current: watch::Sender::new(None),
            refused: AtomicU64::new(0),
            refused_too_large: AtomicU64::new(0),
            last_refusal: Mutex::new(None),
            applied: AtomicU64::new(0),
            persist,
            max_body_bytes,
            binary_keys,
        }
    }

    pub(crate) fn max_body_bytes(&self) -> u64 {
        self.max_body_bytes
    }

    pub(crate) fn refused_too_large(&self) -> u64 {
        self.refused_too_large.load(Ordering::Relaxed)
    }

    pub(crate) fn last_refusal(&self) -> Option<Refusal> {
        self.last_refusal
            .lock()
            .map(|last| last.clone())
            .unwrap_or_default()
    }

    pub(crate) fn current(&self) -> Option<Arc<Served>> {
        self.current.borrow().clone()
    }

    pub(crate) fn current_version(&self) -> Option<u64> {
        self.current.borrow().as_ref().map(|s| s.version)
    }

    pub(crate) fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Validates `bytes` and serves them if their version is greater than the
    /// served one (the same version with the same bytes is `Unchanged`).
    pub(crate) fn offer(&self, bytes: Vec<u8>, origin: &str) -> Result<Offer, Refused> {
        // Either form is taken; both are served.
        // A binary source is checked in place (no copy of a body that may be
        // hundreds of MiB) and then served as it is.
        let shared = std::sync::Arc::new(bytes);
        let parsed = if binary::is_binary(&shared) {
            binary::decode_shared(std::sync::Arc::clone(&shared))
        } else {
            cell_router_mapping::Snapshot::parse(&shared)
        };
        let snapshot = parsed.map_err(|e| Refused::invalid(e.to_string()))?;
        let version = snapshot.version();
        let cells = snapshot.cells().len();
        let tenant_entries = snapshot.tenant_entries();
        // Gateways only route: keyed by hash, the form is 10 bytes a tenant
        // (SPEC, "Hashed keys"). Otherwise, or if this snapshot cannot be
        // keyed by hash, a JSON source is encoded keyed by id and a binary
        // source is served as it is.
        let mut not_hashed_because = None;
        let mut encoded = None;
        if self.binary_keys == Keys::Hashes && snapshot.keys() == Keys::Ids {
            match binary::encode_hashed(&snapshot) {
                Ok(bytes) => encoded = Some(bytes),
                Err(e) => not_hashed_because = Some(e.to_string()),
            }
        }
        if encoded.is_none() && !binary::is_binary(&shared) {
            encoded = Some(binary::encode(&snapshot));
        }
        drop(snapshot);
        // The snapshot held the other handles: the bytes come back whole.
        let source = Bytes::from(
            std::sync::Arc::try_unwrap(shared).unwrap_or_else(|shared| shared.as_ref().clone()),
        );
        let json = std::sync::OnceLock::new();
        if !binary::is_binary(&source) {
            let _ = json.set(source.clone());
        }
        let binary_form = match encoded {
            None => source.clone(),
            Some(encoded) => Bytes::from(encoded),
        };
        let hashed = binary::is_hashed(&binary_form);
        // The smallest form served: if it does not fit, no gateway can take
        // the snapshot. (A JSON client asking for a larger JSON form gets a
        // 413 per request instead, `http.rs`.)
        let size = binary_form.len() as u64;
        if size > self.max_body_bytes {
            return Err(Refused {
                version: Some(version),
                too_large: true,
                reason: format!(
                    "snapshot version {version} is {size} bytes in its binary form, more than \
                     --max-body-bytes {} (the gateways' http.async_response_buffer_limit); \
                     not published",
                    self.max_body_bytes
                ),
            });
        }
        let mut outcome = Err(Refused::invalid(String::new()));
        self.current.send_if_modified(|current| {
            if let Some(current) = current.as_ref() {
                if version == current.version
                    && (source == current.source || binary_form == current.binary)
                {
                    outcome = Ok(Offer::Unchanged);
                    return false;
                }
                if version <= current.version {
                    outcome = Err(Refused {
                        version: Some(version),
                        too_large: false,
                        reason: format!(
                            "$.version: version {version} is not greater than the served version {}",
                            current.version
                        ),
                    });
                    return false;
                }
            }
            let served = Arc::new(Served {
                version,
                json,
                source,
                binary: binary_form,
                hashed,
                not_hashed_because,
                cells,
                tenant_entries,
                origin: origin.to_string(),
                since: std::time::Instant::now(),
            });
            *current = Some(Arc::clone(&served));
            outcome = Ok(Offer::Applied(served));
            true
        });
        if matches!(outcome, Ok(Offer::Applied(_))) {
            self.applied.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    /// Offers, logs the result, counts refusals, and writes an applied
    /// snapshot to the `--persist` file (unless `save` says it came from it).
    pub(crate) fn offer_and_log(&self, bytes: Vec<u8>, origin: &str, save: Save) {
        match self.offer(bytes, origin) {
            Ok(Offer::Applied(served)) => {
                log(
                    "info",
                    &format!(
                        "serving snapshot version {} from {origin} ({} cells, {} overrides/pins/moves; \
                         binary form {} bytes, keyed by {})",
                        served.version,
                        served.cells,
                        served.tenant_entries,
                        served.binary.len(),
                        if served.hashed { "hash" } else { "id" }
                    ),
                );
                if let Some(why) = &served.not_hashed_because {
                    log(
                        "warning",
                        &format!(
                            "snapshot version {}: binary form keyed by id, not by hash: {why}",
                            served.version
                        ),
                    );
                }
                if let (Some(path), Save::Yes) = (&self.persist, save)
                    && let Err(err) = crate::files::write_atomically(path, &served.source)
                {
                    log(
                        "error",
                        &format!(
                            "cannot persist snapshot version {} to {}: {err} (still serving it)",
                            served.version,
                            path.display()
                        ),
                    );
                }
            }
            Ok(Offer::Unchanged) => {}
            Err(refused) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                if refused.too_large {
                    self.refused_too_large.fetch_add(1, Ordering::Relaxed);
                }
                log(
                    "error",
                    &format!(
                        "refused snapshot from {origin}, still serving the last good one: {}",
                        refused.reason
                    ),
                );
                if let Ok(mut last) = self.last_refusal.lock() {
                    *last = Some(Refusal {
                        version: refused.version,
                        reason: refused.reason,
                        origin: origin.to_string(),
                        too_large: refused.too_large,
                    });
                }
            }
        }
    }

    /// The served snapshot if its version is greater than `after` (any, if
    /// `None`), waiting up to `wait` for one. `None`: nothing newer in time,
    /// or `shutdown` became true (the caller then answers "not modified").
    /// A `wait` over a year is a year (no client waits that long).
    pub(crate) async fn newer_than(
        &self,
        after: Option<u64>,
        wait: Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Arc<Served>> {
        let mut current = self.current.subscribe();
        // Capped: a deadline near the clock's limit overflows inside the
        // timer (`Instant + Duration` panics), not only here.
        let wait = wait.min(LONGEST_WAIT);
        let deadline = tokio::time::Instant::now().checked_add(wait);
        let timeout = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timeout);
        loop {
            let served = current.borrow_and_update().clone();
            if let Some(served) = served
                && after.is_none_or(|after| served.version > after)
            {
                return Some(served);
            }
            if *shutdown.borrow_and_update() {
                return None;
            }
            tokio::select! {
                changed = current.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                () = &mut timeout => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(version: u64) -> Vec<u8> {
        serde_json::json!({
            "version": version,
            "generated_at": "2026-11-22T00:00:00Z",
            "hash": {"algorithm": "siphash-1-3", "key": "000102030405060708090a0b0c0d0e0f", "slots": 2},
            "cells": [{"id": "cell-a"}, {"id": "cell-b"}],
            "slot_table": "AAABAA==",
            "overrides": {},
        })
        .to_string()
        .into_bytes()
    }

    fn version(offer: Result<Offer, Refused>) -> Result<(&'static str, u64), String> {
        offer
            .map(|o| match o {
                Offer::Applied(s) => ("applied", s.version),
                Offer::Unchanged => ("unchanged", 0),
            })
            .map_err(|r| r.reason)
    }

    #[test]
    fn applies_newer_and_refuses_older_or_invalid() {
        let store = Store::new(None, u64::MAX, Keys::Ids);
        assert_eq!(version(store.offer(snapshot(3), "t")), Ok(("applied", 3)));
        assert_eq!(version(store.offer(snapshot(3), "t")), Ok(("unchanged", 0)));
        assert!(
            version(store.offer(snapshot(2), "t"))
                .unwrap_err()
                .starts_with("$.version")
        );
        assert!(store.offer(b"{\"version\": 9".to_vec(), "t").is_err());
        assert_eq!(store.current_version(), Some(3));
        assert_eq!(version(store.offer(snapshot(4), "t")), Ok(("applied", 4)));
        assert_eq!(store.applied(), 2);
    }

    #[test]
    fn refuses_a_snapshot_larger_than_the_gateways_take() {
        let binary_size = binary::encode(&binary::parse_any(&snapshot(1)).unwrap()).len() as u64;
        let store = Store::new(None, binary_size, Keys::Ids);
        assert_eq!(version(store.offer(snapshot(1), "t")), Ok(("applied", 1)));
        // The same document with one tenant more no longer fits.
        let mut bigger: serde_json::Value = serde_json::from_slice(&snapshot(2)).unwrap();
        bigger["overrides"] = serde_json::json!({"acme": "cell-a"});
        store.offer_and_log(serde_json::to_vec(&bigger).unwrap(), "t", Save::No);
        assert_eq!(store.current_version(), Some(1));
        assert_eq!((store.refused(), store.refused_too_large()), (1, 1));
        let refusal = store.last_refusal().expect("a refusal is recorded");
        assert_eq!(refusal.version, Some(2));
        assert!(refusal.too_large);
        assert!(
            refusal.reason.contains("--max-body-bytes"),
            "{}",
            refusal.reason
        );
        // A later one that fits is served; the refusal stays on record.
        store.offer_and_log(snapshot(3), "t", Save::No);
        assert_eq!(store.current_version(), Some(3));
        assert_eq!(store.refused_too_large(), 1);
    }

    #[tokio::test]
    async fn long_poll_wakes_on_a_newer_version_or_shutdown() {
        let store = Arc::new(Store::new(None, u64::MAX, Keys::Ids));
        store.offer(snapshot(1), "t").unwrap();
        let (stop, mut shutdown) = watch::channel(false);
        let waiter = {
            let store = Arc::clone(&store);
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                store
                    .newer_than(Some(1), Duration::from_secs(10), &mut shutdown)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.offer(snapshot(2), "t").unwrap();
        let woken = waiter.await.unwrap().expect("woken with a snapshot");
        assert_eq!(woken.version, 2);
        // Nothing newer than 2: the wait times out.
        let timed_out = store
            .newer_than(Some(2), Duration::from_millis(20), &mut shutdown)
            .await;
        assert!(timed_out.is_none());
        // No version named: the current one at once, even with no wait.
        let now = store.newer_than(None, Duration::ZERO, &mut shutdown).await;
        assert_eq!(now.map(|s| s.version), Some(2));
        // A wait beyond the clock's range does not overflow; shutdown ends it.
        let waiter = {
            let store = Arc::clone(&store);
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                store
                    .newer_than(Some(2), Duration::from_secs(u64::MAX), &mut shutdown)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        stop.send_replace(true);
        assert!(waiter.await.unwrap().is_none());
    }
}
