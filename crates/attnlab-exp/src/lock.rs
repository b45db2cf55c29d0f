//! Per-run locks with a lease, so that two processes (shards, concurrent sweeps, nodes of a
//! batch job on a shared file system) never train the same run at once, and a lock left by a
//! dead process or a dead node does not block a run for ever.
//!
//! - **Atomic with its content.** `<run>/lock` holds `<pid> <host> <token> <node>` (the token
//!   is random per acquisition; the node is the kernel's boot id and the PID namespace, which
//!   is what makes a pid meaningful — a hostname does not: containers can share one). It is written whole into a per-process temp file first and then
//!   hard-linked into place: `link` fails if the lock exists, and a lock that exists is complete.
//! - **A lease.** While held, a heartbeat thread touches the lock every [`HEARTBEAT`]; a lock
//!   whose heartbeat (mtime) is older than the lease ([`set_lease`], default [`DEFAULT_LEASE`]) is
//!   stale on any host. In the same PID namespace of the same boot a lock is also stale when its
//!   process is gone, or when it names this very process but is not one of its locks (its pid
//!   was reused). Anywhere else (another node, another container) only the lease decides.
//! - **Take-over under a guard.** A stale lock is removed only under `<run>/lock.takeover`
//!   (itself created atomically), and only if its content is still the content judged stale.
//! - **Removal of one's own lock only.** Dropping a [`RunLock`] removes the file only if it
//!   still holds this lock's token; the heartbeat notices a lock taken over (token changed) and
//!   [`RunLock::lost`] tells the trainer to stop without writing.
//!
//! Across hosts this needs a file system where `link` is atomic and mtimes follow one clock
//! (within the lease); NFSv3 without synchronised clocks does not give that.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use crate::error::SpecError;

/// File name of a run's lock.
pub const LOCK_FILE: &str = "lock";
/// How often a held lock's heartbeat is refreshed.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// Default lease: a lock whose heartbeat is older than this is stale (about 12 missed beats).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(120);
/// Shortest lease accepted (3 heartbeats).
pub const MIN_LEASE: Duration = Duration::from_secs(30);
/// A take-over guard older than this was left by a process that died while taking over.
const GUARD_STALE: Duration = Duration::from_secs(30);

static LEASE_SECS: AtomicU64 = AtomicU64::new(DEFAULT_LEASE.as_secs());
static HEARTBEAT_MS: AtomicU64 = AtomicU64::new(HEARTBEAT.as_millis() as u64);
/// Tokens of the locks this process holds now.
static HELD: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Sets the lease (`--lock-lease`); errors below [`MIN_LEASE`].
pub fn set_lease(secs: u64) -> Result<(), SpecError> {
    if secs < MIN_LEASE.as_secs() {
        return Err(SpecError::new(format!(
            "--lock-lease = {secs}: must be ≥ {} seconds (three heartbeats of {} s)",
            MIN_LEASE.as_secs(),
            HEARTBEAT.as_secs()
        )));
    }
    LEASE_SECS.store(secs, Ordering::SeqCst);
    Ok(())
}

/// Sets the heartbeat period of locks taken from now on (tests use milliseconds; the binary
/// keeps [`HEARTBEAT`]).
pub fn set_heartbeat(period: Duration) {
    HEARTBEAT_MS.store(period.as_millis().max(1) as u64, Ordering::SeqCst);
}

fn lease() -> Duration {
    Duration::from_secs(LEASE_SECS.load(Ordering::SeqCst))
}

fn held(token: &str) -> bool {
    HELD.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|s| s.contains(token))
}

fn set_held(token: &str, on: bool) {
    let mut guard = HELD.lock().unwrap_or_else(|e| e.into_inner());
    let set = guard.get_or_insert_with(HashSet::new);
    if on {
        set.insert(token.to_string());
    } else {
        set.remove(token);
    }
}

/// A random 64-bit token (std's per-instance random hasher keys).
fn random_token() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// This machine's name (empty if unknown).
pub fn host() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").or_else(|_| fs::read_to_string("/etc/hostname")).unwrap_or_default().trim().to_string()
}

/// Where a pid means something: the kernel's boot id and this process's PID namespace
/// (`<boot id>/<pid:[inode]>`); empty where Linux does not tell.
pub fn node() -> String {
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let ns = fs::read_link("/proc/self/ns/pid").map(|p| p.display().to_string()).unwrap_or_default();
    if boot.trim().is_empty() || ns.is_empty() {
        return String::new();
    }
    format!("{}/{ns}", boot.trim())
}

/// True when process `pid` exists in this PID namespace (`kill(pid, 0)`; EPERM means it
/// exists but belongs to another user, so it is alive).
fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

/// A lock file as read: its text, holder and heartbeat age.
#[derive(Debug, Clone)]
struct Seen {
    text: String,
    pid: Option<u32>,
    host: String,
    token: String,
    node: String,
    age: Duration,
}

impl Seen {
    fn read(path: &Path) -> Option<Seen> {
        let text = fs::read_to_string(path).ok()?;
        let age = fs::metadata(path).ok()?.modified().ok().and_then(|m| SystemTime::now().duration_since(m).ok()).unwrap_or_default();
        let mut parts = text.split_whitespace();
        let pid = parts.next().and_then(|p| p.parse().ok());
        let host = parts.next().unwrap_or("").to_string();
        let token = parts.next().unwrap_or("").to_string();
        let node = parts.next().unwrap_or("").to_string();
        Some(Seen { text, pid, host, token, node, age })
    }

    fn describe(&self, path: &Path) -> String {
        match self.pid {
            Some(pid) => format!("locked by process {pid} on {} (heartbeat {} s ago; {})", self.host, self.age.as_secs(), path.display()),
            None => format!("locked ({}: unreadable content {:?})", path.display(), self.text.trim()),
        }
    }

    /// Why this lock is stale, or `None` when its holder may be alive.
    fn stale(&self) -> Option<String> {
        let lease = lease();
        if self.age > lease {
            return Some(format!("its heartbeat is {} s old, beyond the lease of {} s", self.age.as_secs(), lease.as_secs()));
        }
        let pid = match self.pid {
            Some(pid) => pid,
            // This binary's locks are complete when they appear; an unreadable one may be an
            // older binary's lock being written in place, so it is stale only once it is older
            // than a heartbeat.
            None if self.age > HEARTBEAT => return Some(format!("its content is not `<pid> <host> <token>` and it is {} s old", self.age.as_secs())),
            None => return None,
        };
        let here = node();
        if self.node.is_empty() || here.is_empty() || self.node != here {
            // Another node, another container, or an older lock format: the lease decides.
            return None;
        }
        if pid == std::process::id() && !held(&self.token) {
            return Some("it names this process's own pid but is none of its locks (a PID namespace: left by a killed container)".into());
        }
        (!alive(pid)).then(|| format!("process {pid} is gone"))
    }
}

/// A run's lock, held until dropped.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    token: String,
    lost: Arc<AtomicBool>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
}

/// Writes `text` to a new per-process temp file in `dir` and returns its path.
fn temp_file(dir: &Path, stem: &str, text: &str) -> Result<PathBuf> {
    let tmp = dir.join(format!(".{stem}.{}-{}.tmp", std::process::id(), random_token()));
    let written = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", tmp.display()));
    }
    Ok(tmp)
}

/// Removes `path` if it still holds exactly `seen`, under the take-over guard of `root`;
/// `Ok(false)` when another process is taking it over now.
fn take_over(root: &Path, path: &Path, seen: &Seen, why: &str) -> Result<bool> {
    let guard = root.join("lock.takeover");
    let tmp = temp_file(root, "lock.takeover", &format!("{} {}\n", std::process::id(), host()))?;
    let linked = fs::hard_link(&tmp, &guard);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Another process is taking over now, or died doing it (then its guard is removed
            // and the caller tries again).
            if Seen::read(&guard).is_some_and(|g| g.age > GUARD_STALE) {
                let _ = fs::remove_file(&guard);
                return Ok(true);
            }
            return Ok(false);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", guard.display())),
    }
    let result = match Seen::read(path) {
        Some(now) if now.text == seen.text && now.stale().is_some() => {
            tracing::warn!("taking over the stale lock {} ({}): {why}", path.display(), seen.text.trim());
            fs::remove_file(path).with_context(|| format!("cannot remove the stale lock {}", path.display()))
        }
        _ => Ok(()),
    };
    let _ = fs::remove_file(&guard);
    result.map(|()| true)
}

impl RunLock {
    /// Takes the lock of the run folder `root`, or returns `Ok(Err(holder))` when a live
    /// process holds it (a stale lock is taken over, with a warning).
    pub fn acquire(root: &Path) -> Result<Result<RunLock, String>> {
        let path = root.join(LOCK_FILE);
        let token = random_token();
        let tmp = temp_file(root, LOCK_FILE, &format!("{} {} {token} {}\n", std::process::id(), host(), node()))?;
        // Registered before the link: another thread of this process that reads the new lock
        // must see it as one of this process's locks, not as a stale one naming its pid.
        set_held(&token, true);
        let outcome = (|| {
            for _ in 0..20 {
                match fs::hard_link(&tmp, &path) {
                    Ok(()) => return Ok(Ok(())),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let Some(seen) = Seen::read(&path) else { continue }; // just released
                        if seen.token == token {
                            // A retried link (NFS) that had in fact succeeded.
                            return Ok(Ok(()));
                        }
                        match seen.stale() {
                            None => return Ok(Err(seen.describe(&path))),
                            Some(why) => {
                                if !take_over(root, &path, &seen, &why)? {
                                    return Ok(Err(format!("{} (being taken over by another process)", seen.describe(&path))));
                                }
                            }
                        }
                    }
                    Err(e) => return Err(e).with_context(|| format!("cannot create the lock {} (the file system must support hard links)", path.display())),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            anyhow::bail!("cannot take the lock {}: it keeps changing hands", path.display())
        })();
        let _ = fs::remove_file(&tmp);
        match outcome {
            Ok(Ok(())) => Ok(Ok(Self::with_heartbeat(path, token))),
            Ok(Err(holder)) => {
                set_held(&token, false);
                Ok(Err(holder))
            }
            Err(e) => {
                set_held(&token, false);
                Err(e)
            }
        }
    }

    fn with_heartbeat(path: PathBuf, token: String) -> RunLock {
        let lost = Arc::new(AtomicBool::new(false));
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let heartbeat = {
            let (path, token, lost, stop) = (path.clone(), token.clone(), lost.clone(), stop.clone());
            let period = Duration::from_millis(HEARTBEAT_MS.load(Ordering::SeqCst));
            std::thread::spawn(move || {
                let mut failing_since: Option<std::time::Instant> = None;
                loop {
                    let (flag, cv) = &*stop;
                    let stopped = cv.wait_timeout_while(flag.lock().unwrap_or_else(|e| e.into_inner()), period, |s| !*s).map(|(s, _)| *s).unwrap_or(true);
                    if stopped {
                        return;
                    }
                    match beat(&path, &token) {
                        Beat::Refreshed => failing_since = None,
                        Beat::TakenOver => {
                            tracing::error!("lost the lock {}: another process took it over", path.display());
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                        // A transient error (NFS): keep trying; give up once the lock may
                        // have looked stale to others for half a lease.
                        Beat::Failed(e) => {
                            let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                            tracing::warn!("cannot refresh the lock {}: {e}", path.display());
                            if since.elapsed() > lease() / 2 {
                                tracing::error!("lost the lock {}: no heartbeat for half a lease", path.display());
                                lost.store(true, Ordering::SeqCst);
                                return;
                            }
                        }
                    }
                }
            })
        };
        RunLock { path, token, lost, stop, heartbeat: Some(heartbeat) }
    }

    /// True once the heartbeat found the lock taken over by another process.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Errors unless the lock file still holds this lock (call before writing results).
    pub fn verify(&self) -> Result<()> {
        match Seen::read(&self.path) {
            Some(s) if s.token == self.token && !self.lost() => Ok(()),
            other => {
                self.lost.store(true, Ordering::SeqCst);
                anyhow::bail!(
                    "lost the lock {} ({}); another process took over this run (was this process stopped longer than the lease?). Nothing more is written",
                    self.path.display(),
                    other.map_or("removed".into(), |s| format!("now {:?}", s.text.trim()))
                )
            }
        }
    }
}

enum Beat {
    Refreshed,
    TakenOver,
    Failed(std::io::Error),
}

/// Refreshes the heartbeat of the lock at `path` if it still holds `token`, stamping the file
/// system's own time (`futimens(UTIME_NOW)`: on NFS the server's clock, not this host's).
fn beat(path: &Path, token: &str) -> Beat {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Beat::TakenOver,
        Err(e) => return Beat::Failed(e),
    };
    if text.split_whitespace().nth(2) != Some(token) {
        return Beat::TakenOver;
    }
    use std::os::fd::AsRawFd;
    match OpenOptions::new().append(true).open(path) {
        // SAFETY: a valid open descriptor; a null `times` means "now" for both stamps.
        Ok(f) if unsafe { libc::futimens(f.as_raw_fd(), std::ptr::null()) } == 0 => Beat::Refreshed,
        Ok(_) => Beat::Failed(std::io::Error::last_os_error()),
        Err(e) => Beat::Failed(e),
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        {
            let (flag, cv) = &*self.stop;
            *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        }
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        if Seen::read(&self.path).is_some_and(|s| s.token == self.token) {
            let _ = fs::remove_file(&self.path);
        }
        set_held(&self.token, false);
    }
}

/// The holder of the run folder `root`'s lock when it is live (read only; takes nothing over).
pub fn live_holder(root: &Path) -> Option<String> {
    let path = root.join(LOCK_FILE);
    let seen = Seen::read(&path)?;
    seen.stale().is_none().then(|| seen.describe(&path))
}

/// `attnlab unlock`: removes the lock of the run folder `root` and says whose it was. A lock
/// that looks live (its process runs on this host, or its heartbeat is within the lease) is
/// removed only with `force`.
pub fn unlock(root: &Path, force: bool) -> Result<String> {
    let path = root.join(LOCK_FILE);
    if !root.is_dir() {
        return Err(SpecError::new(format!("{}: not a run folder", root.display())).into());
    }
    let Some(seen) = Seen::read(&path) else {
        return Ok(format!("{}: not locked", root.display()));
    };
    let what = seen.describe(&path);
    match seen.stale() {
        None if !force => Err(SpecError::new(format!("{what}: it looks live; pass --force if you are sure that process is dead")).into()),
        stale => {
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
            Ok(format!("removed: {what}{}", stale.map_or(String::new(), |w| format!("; stale: {w}"))))
        }
    }
}
