//! The answer when nothing is due, made cheap: concurrent reads of one tag coalesced, and what a
//! catalog entry says kept by its digest.
//!
//! A resolve with nothing due must learn two things that can change at any time: where the
//! nick's catalog tag points (another replica, or `ociup` run elsewhere, may have recorded a
//! version), and where its base's tag points. Everything else it reads is named by digest from
//! those, so cannot change: the entry, the version record, the build manifest and its
//! signature. Here:
//!
//! - **Freshness.** Each tag is read (one `HEAD`) by a check that *started after the request
//!   arrived*: requests for the same tag wait for each other ([`Flights`]), and a request takes
//!   the result of a check only when that check began after it arrived; otherwise it starts
//!   one of its own (once the check under way ends, so at most one check per tag is in flight).
//!   So an answer is never staler than one computed alone at the moment the request came in,
//!   and a burst of requests for one nick, or for nicks on one base, costs one `HEAD` per tag
//!   (at most two reads' time of waiting). With `Config::fresh_within` (`ociup serve
//!   --fresh-within MS`, 0 by default) a request may also take a read that began at most that
//!   long before it arrived: the exact guarantee is then that each tag was read no earlier than
//!   that window before the request arrived, so an upgrade recorded elsewhere or a base moved
//!   within the window may be answered as the version before it, and a replica reads each tag at
//!   most once per window however many requests it answers.
//! - **Immutable knowledge.** The first time a replica sees a catalog entry (a catalog manifest
//!   digest), the library's own resolve (`check`) answers, with every check it makes (the
//!   entry against its record, the record against the target, the signature). When that
//!   answer has nothing due and the nick's tag still points at the same digest afterwards, the
//!   answer is kept under that digest: later requests that find the tag at that digest and the
//!   base at the answer's base digest get the same answer, without reading anything else.
//!   Anything else (no entry kept for that digest, the base moved, a read failing) goes the
//!   library's way, as before.
//!
//! One entry is kept per nick (the latest digest seen); the coalescing slots exist only while
//! requests wait on them, so nothing grows with the names requesters try.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ociup_core::managed::catalog::Catalog;
use ociup_core::managed::manager::{Resolution, ResolveOptions, Stores};
use ociup_core::store::{ManifestRef, Store};

use crate::{Access, Service};

/// The last check of one key: the sequence number and instant it started at, and what it found.
type Slot<T> = Arc<tokio::sync::Mutex<Option<(u64, Instant, T)>>>;

/// Checks keyed by what they read, shared by the requests waiting for them: a request uses the
/// result of a check that started after it arrived, never an older one.
pub(crate) struct Flights<T> {
    /// Orders arrivals and check starts.
    clock: AtomicU64,
    slots: Mutex<HashMap<String, Slot<T>>>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            clock: AtomicU64::new(0),
            slots: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone> Flights<T> {
    /// The result of `check` for `key`, run by this request or by one that waited alongside it,
    /// started after this call began, or (with a `window`) at most `window` before it began.
    /// With a window, the last result of a key stays for later requests while `keep` says so
    /// (a tag that exists: the keys kept are then bounded by the catalog).
    pub(crate) async fn run<F, Fut>(
        &self,
        key: &str,
        window: Duration,
        keep: impl Fn(&T) -> bool,
        check: F,
    ) -> T
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let arrived = self.clock.fetch_add(1, Ordering::SeqCst);
        let arrived_at = Instant::now();
        let slot = Arc::clone(
            self.slots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(key.to_owned())
                .or_default(),
        );
        let value = {
            let mut last = slot.lock().await;
            match &*last {
                Some((started, at, value))
                    if *started > arrived || (!window.is_zero() && *at + window >= arrived_at) =>
                {
                    value.clone()
                }
                _ => {
                    let at = Instant::now();
                    let started = self.clock.fetch_add(1, Ordering::SeqCst);
                    let value = check().await;
                    *last = Some((started, at, value.clone()));
                    value
                }
            }
        };
        if !window.is_zero() && keep(&value) {
            return value;
        }
        // Nobody else waits on this slot: drop it, so slots exist only while in use (a request
        // arriving later starts its own check anyway). Clones are made under the map's lock.
        drop(slot);
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slots.get(key).is_some_and(|s| Arc::strong_count(s) == 1) {
            slots.remove(key);
        }
        value
    }
}

/// What a catalog entry answered with nothing due.
#[derive(Clone)]
struct Known {
    /// The digest of the nick's catalog manifest the answer came from.
    entry: String,
    /// The base reference of its recipe.
    base: String,
    answer: Resolution,
}

/// The service's coalesced checks and the answers it knows.
#[derive(Default)]
pub(crate) struct Coalescer {
    catalog_tags: Flights<Option<String>>,
    base_tags: Flights<Option<String>>,
    known: Mutex<HashMap<String, Known>>,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer").finish_non_exhaustive()
    }
}

impl Service {
    /// The answer to a resolve of `nick` when nothing is due, found as the module documentation
    /// says; `None` when something is due, or anything is not as expected: then the library's
    /// resolve decides (and says what is wrong).
    pub(crate) async fn nothing_due(&self, actor: &str, nick: &str) -> Option<Resolution> {
        let c = &self.inner.coalesce;
        let entry = self.catalog_tag(nick).await?;
        let known = c
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(nick)
            .filter(|k| k.entry == entry)
            .cloned();
        if let Some(k) = known {
            let base = c
                .base_tags
                .run(&k.base, self.window(), Option::is_some, || {
                    self.base_tag(&k.base)
                })
                .await?;
            return (base == k.answer.base_digest).then_some(k.answer);
        }
        self.learn(actor, nick, entry).await
    }

    /// The library's check of `nick`, kept under `entry` when it has nothing due and the tag
    /// still points at `entry` after it.
    async fn learn(&self, actor: &str, nick: &str, entry: String) -> Option<Resolution> {
        let m = self.manager(actor).ok()?;
        let read = m.catalog().get(nick).await.ok()??;
        let allow = &self.inner.config.allow;
        allow.check(&read.recipe.base, Access::Read).ok()?;
        allow.check(&read.recipe.target, Access::Write).ok()?;
        let answer = m
            .resolve(
                nick,
                ResolveOptions {
                    check: true,
                    ..ResolveOptions::default()
                },
            )
            .await
            .ok()?;
        if answer.upgrade_due || answer.stale {
            return None;
        }
        if self.catalog_tag(nick).await.as_ref() == Some(&entry) {
            self.inner
                .coalesce
                .known
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(
                    nick.to_owned(),
                    Known {
                        entry,
                        base: read.recipe.base,
                        answer: answer.clone(),
                    },
                );
        }
        Some(answer)
    }

    /// How long before a request the tag reads it may take began (`Config::fresh_within`).
    fn window(&self) -> Duration {
        self.inner.config.fresh_within
    }

    /// Where the nick's catalog tag points now (coalesced).
    async fn catalog_tag(&self, nick: &str) -> Option<String> {
        self.inner
            .coalesce
            .catalog_tags
            .run(nick, self.window(), Option::is_some, || async {
                let catalog = Catalog::new(self.inner.catalog.clone());
                catalog.head(nick).await.ok()?.map(|d| d.to_string())
            })
            .await
    }

    /// Where the base's tag points now (one HEAD), as the library reads it; a base pinned by
    /// digest is that digest.
    async fn base_tag(&self, base: &str) -> Option<String> {
        let (store, image) = self.inner.stores.open(base, false).ok()?;
        match image? {
            ManifestRef::Tag(t) => Some(store.resolve_tag(&t).await.ok()?.digest().to_string()),
            ManifestRef::Digest(d) => Some(d.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Requests that arrive while a check runs do not take its result: they share the next one,
    /// which starts after they arrived. A request arriving alone runs its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_takes_only_a_check_that_started_after_it_arrived() {
        let flights: Arc<Flights<usize>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let check = |runs: Arc<AtomicUsize>, gate: Option<Arc<tokio::sync::Notify>>| async move {
            let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(g) = gate {
                g.notified().await;
            }
            n
        };
        // The first check starts and is held.
        let first = {
            let (f, r, g) = (Arc::clone(&flights), Arc::clone(&runs), Arc::clone(&gate));
            tokio::spawn(async move {
                f.run("k", Duration::ZERO, |_| true, || check(r, Some(g)))
                    .await
            })
        };
        while runs.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Eight more arrive while it runs.
        let later: Vec<_> = (0..8)
            .map(|_| {
                let (f, r) = (Arc::clone(&flights), Arc::clone(&runs));
                tokio::spawn(async move {
                    f.run("k", Duration::ZERO, |_| true, || check(r, None))
                        .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        gate.notify_one();
        assert_eq!(first.await.unwrap(), 1);
        for h in later {
            // Not the first check's result (it started before they arrived): the second's.
            assert_eq!(h.await.unwrap(), 2);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2, "one check for all eight");
        // Alone again: a check of its own; the slot was dropped when nobody waited.
        assert_eq!(
            flights
                .run(
                    "k",
                    Duration::ZERO,
                    |_| true,
                    || check(Arc::clone(&runs), None)
                )
                .await,
            3
        );
        assert!(flights.slots.lock().unwrap().is_empty());
        // Other keys do not wait for each other.
        assert_eq!(
            flights
                .run("other", Duration::ZERO, |_| true, || async { 7 })
                .await,
            7
        );
    }

    /// With a window, a result stays for requests arriving within it after its check began,
    /// and only while `keep` says so.
    #[tokio::test]
    async fn a_window_lets_later_requests_take_a_recent_check() {
        let flights: Flights<Option<u32>> = Flights::default();
        let window = Duration::from_millis(300);
        let runs = AtomicUsize::new(0);
        let check = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Some(1)
        };
        assert_eq!(
            flights.run("k", window, Option::is_some, check).await,
            Some(1)
        );
        assert_eq!(
            flights.run("k", window, Option::is_some, check).await,
            Some(1)
        );
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "the second took the first's"
        );
        tokio::time::sleep(window + Duration::from_millis(50)).await;
        flights.run("k", window, Option::is_some, check).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "past the window: a check of its own"
        );
        // Not kept: a missing tag is read again by the next request.
        let none = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            None
        };
        flights.run("gone", window, Option::is_some, none).await;
        flights.run("gone", window, Option::is_some, none).await;
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        assert!(!flights.slots.lock().unwrap().contains_key("gone"));
    }
}
