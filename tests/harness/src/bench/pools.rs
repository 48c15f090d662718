//! Token pools for the load runs: files of signed tokens, one per line, that
//! the wrk script rotates over.
//!
//! * cached pools: one token per tenant (1,000 tenants), sent again and again,
//!   so after the first request per worker the verified-token cache answers;
//! * unique pools: one per algorithm, tokens that are all different (a `jti`
//!   claim numbers them); each measured run starts at another place in it.
//!
//! Minting is parallel, but RS256 signing (pure Rust) is slow enough that
//! pools are kept on disk under `target/` and reused while their
//! tokens stay valid for long enough (every Envoy starts with empty caches, so
//! a pool reused by a later `make bench` is still unseen by the gateway).

use anyhow::{Context, Result, bail};
use cell_router_kit::fixtures::{token_builder, unix_now};
use cell_router_kit::tokens::Alg;
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Tokens are valid this long after minting; a pool is reused while at least
/// [`MIN_REMAINING_S`] of that is left.
const LIFETIME_S: u64 = 3 * 24 * 3600;
const MIN_REMAINING_S: u64 = 12 * 3600;
/// Bumped when what a pool holds changes (claims, naming).
const FORMAT: u32 = 1;

/// Tenant ids used by the benchmark (`tenant-00042`).
pub fn tenant(i: usize) -> String {
    format!("tenant-{i:05}")
}

/// A file of tokens, one per line.
#[derive(Clone, Debug)]
pub struct TokenFile {
    pub path: PathBuf,
    pub alg: Alg,
    pub count: usize,
}

impl TokenFile {
    pub fn tokens(&self) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        Ok(text.lines().map(str::to_string).collect())
    }
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Meta {
    format: u32,
    alg: String,
    tenants: usize,
    count: usize,
    issued_at: u64,
    expires_at: u64,
}

/// Where pools live, and how much minting this run did.
pub struct PoolStore {
    dir: PathBuf,
    tenants: usize,
    /// Tokens minted by this process and the time spent.
    pub minted: usize,
    pub mint_seconds: f64,
}

impl PoolStore {
    pub fn new(dir: &Path, tenants: usize) -> Result<PoolStore> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(PoolStore {
            dir: dir.to_path_buf(),
            tenants,
            minted: 0,
            mint_seconds: 0.0,
        })
    }

    pub fn tenants(&self) -> usize {
        self.tenants
    }

    /// One token per tenant, tenant `i` on line `i`.
    pub fn cached(&mut self, alg: Alg) -> Result<TokenFile> {
        let name = format!("cached-{}-{}", alg.name(), self.tenants);
        self.ensure(&name, alg, self.tenants, false)
    }

    /// At least `count` distinct tokens (tenants rotate).
    pub fn unique(&mut self, alg: Alg, count: usize) -> Result<TokenFile> {
        let name = format!("unique-{}-{}", alg.name(), self.tenants);
        self.ensure(&name, alg, count, true)
    }

    fn ensure(&mut self, name: &str, alg: Alg, count: usize, numbered: bool) -> Result<TokenFile> {
        let path = self.dir.join(format!("{name}.txt"));
        let meta_path = self.dir.join(format!("{name}.json"));
        let now = unix_now();
        let existing = std::fs::read(&meta_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Meta>(&bytes).ok())
            .filter(|m| {
                m.format == FORMAT
                    && m.alg == alg.name()
                    && m.tenants == self.tenants
                    && m.issued_at <= now
                    && m.expires_at >= now + MIN_REMAINING_S
                    && path.is_file()
            });
        let (have, issued_at, expires_at) = match &existing {
            Some(m) => (m.count, m.issued_at, m.expires_at),
            None => (0, now, now + LIFETIME_S),
        };
        if have < count {
            let started = Instant::now();
            let tenants = self.tenants;
            let tokens = mint_parallel(have..count, |i| {
                let mut builder =
                    token_builder(alg, issued_at, &tenant(i % tenants)).expires_at(expires_at);
                if numbered {
                    builder = builder.claim("jti", format!("bench-{i}"));
                }
                builder.sign()
            });
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(have > 0)
                .truncate(have == 0)
                .open(&path)
                .with_context(|| format!("writing {}", path.display()))?;
            let mut text = String::with_capacity(tokens.iter().map(|t| t.len() + 1).sum());
            for token in &tokens {
                text.push_str(token);
                text.push('\n');
            }
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            let meta = Meta {
                format: FORMAT,
                alg: alg.name().to_string(),
                tenants: self.tenants,
                count,
                issued_at,
                expires_at,
            };
            std::fs::write(&meta_path, serde_json::to_vec(&meta)?)?;
            self.minted += tokens.len();
            self.mint_seconds += started.elapsed().as_secs_f64();
        }
        let have = existing.map(|m| m.count).unwrap_or(0).max(count);
        let lines = count_lines(&path)?;
        if lines != have {
            bail!("{}: {lines} tokens, metadata says {have}", path.display());
        }
        Ok(TokenFile {
            path,
            alg,
            count: have,
        })
    }
}

fn count_lines(path: &Path) -> Result<usize> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes.iter().filter(|b| **b == b'\n').count())
}

/// `make(i)` for every `i` in `range`, in order, on every core.
pub fn mint_parallel(
    range: std::ops::Range<usize>,
    make: impl Fn(usize) -> String + Sync,
) -> Vec<String> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let len = range.len();
    let chunk = len.div_ceil(threads).max(1);
    let make = &make;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let from = range.start + (t * chunk).min(len);
                let to = range.start + ((t + 1) * chunk).min(len);
                scope.spawn(move || (from..to).map(make).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cell_router_kit::tokens::claims_of;

    #[test]
    fn pools_are_reused_extended_and_unique() {
        let dir = std::env::temp_dir().join(format!("cell-router-pools-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = PoolStore::new(&dir, 7).unwrap();
        let cached = store.cached(Alg::HS256).unwrap();
        assert_eq!(cached.count, 7);
        let tokens = cached.tokens().unwrap();
        assert_eq!(claims_of(&tokens[3])["tenant_id"], "tenant-00003");
        assert_eq!(store.minted, 7);
        // Reused, not minted again.
        let again = store.cached(Alg::HS256).unwrap();
        assert_eq!(again.tokens().unwrap(), tokens);
        assert_eq!(store.minted, 7);

        let first = store.unique(Alg::HS256, 10).unwrap().tokens().unwrap();
        let more = store.unique(Alg::HS256, 25).unwrap();
        assert_eq!(more.count, 25);
        let all = more.tokens().unwrap();
        assert_eq!(all[..10], first[..]);
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), 25);
        assert_eq!(claims_of(&all[24])["tenant_id"], "tenant-00003");
        assert_eq!(claims_of(&all[24])["jti"], "bench-24");
        assert_eq!(store.minted, 7 + 25);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
