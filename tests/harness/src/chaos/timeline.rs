//! The timeline run against the load: a new snapshot version every
//! `--flip-every`, a bad snapshot every `--bad-every`, and the sidecar
//! SIGKILLed every `--kill-every` and restarted on its port.

use super::Args;
use super::judge::{checked_so_far, newest_seen};
use super::snapshots::{Bad, publish};
use crate::e2e::{self, Gateway, Process, Sidecar, client};
use anyhow::{Result, anyhow, bail};
use cell_router_mapping::SnapshotDoc;
use std::time::{Duration, Instant};

/// What happened along the timeline.
#[derive(Debug)]
pub struct Timeline {
    /// The newest version published at the source.
    pub published: u64,
    pub injections: Vec<Injection>,
    pub kills: Vec<Kill>,
    /// How late the timeline ran (a starved machine shows here).
    pub flip_lag: Duration,
}

/// Runs the timeline from `started` until the load's `load_secs` are up:
/// flips, bad snapshots and kills, one at a time, so a bad snapshot is never
/// at the source when the sidecar (re)starts. `docs` are versions 1..=n
/// (`bodies` their JSON); version 1 is already published.
pub fn drive(
    args: &Args,
    gateway: &mut Gateway,
    wrk: &mut Process,
    docs: &[SnapshotDoc],
    bodies: &[Vec<u8>],
    started: Instant,
    load_secs: u64,
) -> Result<Timeline> {
    let (dir, source) = (gateway.dir.clone(), gateway.source.clone());
    let count = docs.len() as u64;
    let mut published: u64 = 1;
    let mut next_flip = started + args.flip_every;
    let mut next_bad = started + args.bad_every.min(Duration::from_secs(1));
    let mut next_kill = started + (args.duration / 3).min(Duration::from_secs(3));
    let mut injections: Vec<Injection> = Vec::new();
    let mut kills: Vec<Kill> = Vec::new();
    let mut bad_kind = 0usize;
    let end = started + Duration::from_secs(load_secs);
    let latest = |published: u64| {
        docs.get(published.saturating_sub(1) as usize)
            .ok_or_else(|| anyhow!("ran out of versions at {published}"))
    };
    let never = end + Duration::from_secs(3600);
    // How late the timeline ran (a starved machine shows here).
    let mut flip_lag = Duration::ZERO;
    // (kill, restarted at, newest version published before the restart)
    let mut awaiting_resume: Option<(usize, Instant, u64)> = None;
    while Instant::now() < end {
        if !wrk.is_running() {
            bail!("wrk stopped early\n{}", wrk.log_tail(30));
        }
        let now = Instant::now();
        // Too late in the run for another kill (restart and a flip after
        // it) or bad snapshot (its hold): none.
        if now >= next_kill && now + args.down_for + Duration::from_secs(1) >= end {
            next_kill = never;
        }
        if now >= next_bad && now + args.bad_hold >= end {
            next_bad = never;
        }
        if now >= next_kill {
            let checked_before = checked_so_far(&gateway.backends);
            gateway.sidecar.process.kill();
            let at_s = started.elapsed().as_secs_f64();
            eprintln!("chaos: {at_s:5.1} s sidecar SIGKILLed");
            let restart_at = Instant::now() + args.down_for;
            // The source keeps changing while the sidecar is dead.
            while Instant::now() < restart_at {
                let wake = next_flip.min(restart_at);
                std::thread::sleep(wake.saturating_duration_since(Instant::now()));
                if Instant::now() >= next_flip {
                    if published < count {
                        published += 1;
                        publish(&source, &bodies[published as usize - 1])?;
                    }
                    next_flip += args.flip_every;
                }
            }
            let down_s = started.elapsed().as_secs_f64() - at_s;
            let served_while_down = checked_so_far(&gateway.backends) - checked_before;
            gateway.sidecar = Sidecar::start_on(&dir, &source, gateway.sidecar.port)?;
            eprintln!(
                "chaos: {:5.1} s sidecar restarted ({served_while_down} requests served while it was down)",
                started.elapsed().as_secs_f64()
            );
            kills.push(Kill {
                at_s,
                down_s,
                served_while_down,
                published_before_restart: published,
                resumed_after_s: None,
            });
            awaiting_resume = Some((kills.len() - 1, Instant::now(), published));
            // From now, not from the plan: a late event must not bunch the next ones.
            next_kill = Instant::now() + args.kill_every;
            next_flip = Instant::now() + args.flip_every;
            continue;
        }
        if now >= next_bad {
            let kind = Bad::ALL[bad_kind % Bad::ALL.len()];
            bad_kind += 1;
            // The sidecar must hold the newest good version first, or a
            // same-version document would rightly count as new.
            let port = gateway.sidecar.port;
            e2e::wait_until(Duration::from_secs(2), || {
                sidecar_health(port).and_then(|h| h.version) == Some(published)
            });
            let before = sidecar_health(port).unwrap_or_default();
            let at_s = started.elapsed().as_secs_f64();
            publish(&source, &kind.bytes(latest(published)?))?;
            let injected = Instant::now();
            // At least the hold; longer if a starved sidecar is slow to read it.
            e2e::wait_until(Duration::from_secs(3), || {
                sidecar_health(port).is_some_and(|h| h.refused > before.refused)
            });
            std::thread::sleep(args.bad_hold.saturating_sub(injected.elapsed()));
            let after = sidecar_health(port).unwrap_or_default();
            let refused = after.refused == before.refused + 1 && after.version == before.version;
            eprintln!(
                "chaos: {at_s:5.1} s bad snapshot {} {}",
                kind.name(),
                if refused { "refused" } else { "NOT refused" }
            );
            injections.push(Injection {
                kind,
                at_s,
                served_before: before.version,
                served_after: after.version,
                refused,
            });
            next_bad = Instant::now() + args.bad_every;
            // The next good version replaces it at once.
            next_flip = Instant::now();
            continue;
        }
        if now >= next_flip {
            flip_lag = flip_lag.max(now - next_flip);
            if let Some((kill, restarted, before)) = awaiting_resume
                && newest_seen(&gateway.backends) > before
            {
                if let Some(k) = kills.get_mut(kill) {
                    k.resumed_after_s = Some(restarted.elapsed().as_secs_f64());
                }
                awaiting_resume = None;
            }
            if published < count {
                published += 1;
                publish(&source, &bodies[published as usize - 1])?;
            }
            next_flip += args.flip_every;
            continue;
        }
        let wake = next_flip.min(next_bad).min(next_kill).min(end);
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
    }

    Ok(Timeline {
        published,
        injections,
        kills,
        flip_lag,
    })
}

/// What the sidecar's `/healthz` says.
#[derive(Clone, Copy, Debug, Default)]
struct Health {
    version: Option<u64>,
    refused: u64,
}

fn sidecar_health(port: u16) -> Option<Health> {
    let reply = e2e::get(&client(), &format!("http://127.0.0.1:{port}/healthz"), &[]).ok()?;
    let body = reply.json().ok()?;
    Some(Health {
        version: body["version"].as_u64(),
        refused: body["refused"].as_u64()?,
    })
}

#[derive(Debug)]
pub struct Injection {
    pub kind: Bad,
    pub at_s: f64,
    pub served_before: Option<u64>,
    pub served_after: Option<u64>,
    pub refused: bool,
}

#[derive(Debug)]
pub struct Kill {
    pub at_s: f64,
    pub down_s: f64,
    /// Requests judged by the backends while the sidecar was dead.
    pub served_while_down: u64,
    /// The newest version published before the restart: a version above it
    /// seen later means updates resumed.
    pub published_before_restart: u64,
    /// From the restart until the backends first saw a newer version.
    pub resumed_after_s: Option<f64>,
}
