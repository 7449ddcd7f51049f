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
//!   within the window may be answered as the version before it.
//! - **Read ahead.** With a window, a request that takes a read close to the end of its window
//!   (within twice what the tag's last read took, at least a sixteenth of the window:
//!   [`ahead`]) starts the tag's next read in the background (unless one is under way) and
//!   does not wait for it: requests arriving later find a read begun within their window, so a
//!   tag asked for often enough is never waited for ([`take`] is the rule). Only requests start
//!   reads: a tag nobody asks for is not read, and the reads stop when the requests do. A
//!   replica reads each tag it is asked for at most 4/3 times per window (about once when the
//!   registry answers quickly), however many requests it answers; a registry slower than an
//!   eighth of the window gets no read ahead (one read per window, waited for): reads cost the
//!   registry, and reading more often when it is slow would slow it further.
//! - **What this replica writes, it answers at once.** Whatever writes a nick here does so
//!   under the service's lock of the nick; releasing it ([`Coalescer::forget`]) sets aside
//!   every read of the nick's catalog tag and of its base's tag begun before, so the next
//!   request reads them again, window or not: a replica never answers the version before one
//!   it recorded itself.
//! - **Immutable knowledge.** The first time a replica sees a catalog entry (a catalog manifest
//!   digest), the library's own resolve (`check`) answers, with every check it makes (the
//!   entry against its record, the record against the target, the signature). When that
//!   answer has nothing due and the nick's tag still points at the same digest afterwards, the
//!   answer is kept under that digest, as the JSON the route sends: later requests that find
//!   the tag at that digest and the base at the answer's base digest get the same answer,
//!   without reading anything else (the two tags are read at once, the base's guessed from
//!   the entry last seen). Anything else (no entry kept for that digest, the base
//!   moved, a read failing) goes the library's way, as before.
//!
//! One entry is kept per nick (the latest digest seen); with a window, the last read of each
//! tag that exists is kept (bounded by the catalog); otherwise the coalescing slots exist only
//! while requests wait on them, so nothing grows with the names requesters try.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use ociup_core::managed::catalog::Catalog;
use ociup_core::managed::manager::{ResolveOptions, Stores};
use ociup_core::store::{ManifestRef, Store};

use crate::{Access, Service};

/// One read of a key: the sequence number and instant it started at (taken before it was
/// sent, so its age is never underestimated), and what it found.
#[derive(Clone, Debug)]
struct Read<T> {
    started: u64,
    at: Instant,
    value: T,
}

/// What a request does with the last read of its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Take {
    /// Take it.
    Use,
    /// Take it, and start the next read in the background (it is past half its window).
    UseAndRefresh,
    /// Wait for a read that may be taken (under way, or started by this request).
    Wait,
}

/// The rule: a request that arrived at sequence number `arrived` and instant `now` may take
/// `last` when it started after the request arrived, or (with a `window`) at most `window`
/// before `now`; never when it started at or before `floor` (the key was written since). Within
/// `ahead` of the end of its window, the next read is started ahead.
fn take<T>(
    last: Option<&Read<T>>,
    floor: u64,
    arrived: u64,
    now: Instant,
    window: Duration,
    ahead: Duration,
) -> Take {
    let Some(r) = last else { return Take::Wait };
    if r.started <= floor {
        return Take::Wait;
    }
    if r.started > arrived {
        return Take::Use;
    }
    if window.is_zero() {
        return Take::Wait;
    }
    let age = now.saturating_duration_since(r.at);
    if age > window {
        Take::Wait
    } else if age + ahead >= window {
        Take::UseAndRefresh
    } else {
        Take::Use
    }
}

/// How long before the end of a read's window the next is started: twice what the last read
/// took (so it has ended before the window does), at least a sixteenth of the window. At most
/// a quarter: a tag is then read at most 4/3 times per window, about once when the registry
/// answers quickly. A registry slower than an eighth of the window gets no read ahead at all
/// (one read per window, waited for at its end): reading more often would slow it further,
/// and each slower read would start the next earlier still.
fn ahead(window: Duration, took: Duration) -> Duration {
    let twice = took.saturating_mul(2);
    if twice > window / 4 {
        return Duration::ZERO;
    }
    twice.max(window / 16)
}

/// The last read of a key, how long the last read to end took, and the floor below which no
/// read is taken.
struct Last<T> {
    read: Option<Read<T>>,
    took: Duration,
    floor: u64,
}

/// One key: its last read, and the lock held by whoever reads it now (so at most one read of
/// a key is under way).
struct Slot<T> {
    last: Mutex<Last<T>>,
    reading: Arc<tokio::sync::Mutex<()>>,
}

impl<T: Clone> Slot<T> {
    fn new() -> Self {
        Slot {
            last: Mutex::new(Last {
                read: None,
                took: Duration::ZERO,
                floor: 0,
            }),
            reading: Arc::default(),
        }
    }

    /// What `take` says of the last read, and its value when it may be taken.
    fn taken(&self, arrived: u64, now: Instant, window: Duration) -> (Take, Option<T>) {
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let t = take(
            last.read.as_ref(),
            last.floor,
            arrived,
            now,
            window,
            ahead(window, last.took),
        );
        let value = match t {
            Take::Use | Take::UseAndRefresh => last.read.as_ref().map(|r| r.value.clone()),
            Take::Wait => None,
        };
        (t, value)
    }

    /// Keeps `read` (unless a later one is kept), which took until `ended`.
    fn store(&self, read: Read<T>, ended: Instant) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.took = ended.saturating_duration_since(read.at);
        if last.read.as_ref().is_none_or(|r| r.started < read.started) {
            last.read = Some(read);
        }
    }
}

/// The instant now; another in the tests.
type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Checks keyed by what they read, shared by the requests waiting for them: a request uses the
/// result of a check that started after it arrived, or within its window, never an older one.
pub(crate) struct Flights<T> {
    /// Orders arrivals, check starts and floors.
    seq: AtomicU64,
    now: Clock,
    slots: Mutex<HashMap<String, Arc<Slot<T>>>>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            seq: AtomicU64::new(1),
            now: Arc::new(Instant::now),
            slots: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Flights<T> {
    fn tick(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst)
    }

    fn slot(&self, key: &str) -> Arc<Slot<T>> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = slots.get(key) {
            return Arc::clone(s);
        }
        let s = Arc::new(Slot::new());
        slots.insert(key.to_owned(), Arc::clone(&s));
        s
    }

    /// The result of a `check` of `key`, run by this request or by one that waited alongside
    /// it, started after this call began or (with a `window`) at most `window` before it began
    /// (see [`take`]; past half the window, the next check is started in the background).
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
        F: Fn() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let arrived = self.tick();
        let now = (self.now)();
        let slot = self.slot(key);
        let value = match slot.taken(arrived, now, window) {
            (Take::Use, Some(v)) => v,
            (Take::UseAndRefresh, Some(v)) => {
                self.read_ahead(&slot, &check);
                v
            }
            _ => {
                let _reading = slot.reading.lock().await;
                // A read that ended while this request waited may do.
                match slot.taken(arrived, now, window) {
                    (Take::Use | Take::UseAndRefresh, Some(v)) => v,
                    _ => {
                        let (started, at) = (self.tick(), (self.now)());
                        let value = check().await;
                        slot.store(
                            Read {
                                started,
                                at,
                                value: value.clone(),
                            },
                            (self.now)(),
                        );
                        value
                    }
                }
            }
        };
        if !window.is_zero() && keep(&value) {
            return value;
        }
        // Nobody else waits on this slot: drop it, so slots exist only while in use (a request
        // arriving later starts its own check anyway). Clones are made under the map's lock.
        drop(slot);
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if slots.get(key).is_some_and(|s| Arc::strong_count(s) == 1) {
            slots.remove(key);
        }
        value
    }

    /// Starts the next check of a slot in the background, unless one is under way.
    fn read_ahead<F, Fut>(&self, slot: &Arc<Slot<T>>, check: &F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let Ok(reading) = Arc::clone(&slot.reading).try_lock_owned() else {
            return;
        };
        let (started, at) = (self.tick(), (self.now)());
        let (slot, read, now) = (Arc::clone(slot), check(), Arc::clone(&self.now));
        tokio::spawn(async move {
            let value = read.await;
            slot.store(Read { started, at, value }, now());
            drop(reading);
        });
    }

    /// Sets aside every read of `key` begun before now: the next request reads it again.
    pub(crate) fn forget(&self, key: &str) {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned();
        if let Some(slot) = slot {
            let floor = self.tick();
            slot.last
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .floor = floor;
        }
    }
}

/// What a catalog entry answered with nothing due.
struct Known {
    /// The digest of the nick's catalog manifest the answer came from.
    entry: Arc<str>,
    /// The base reference of its recipe.
    base: String,
    /// The base digest the answer sits on.
    base_digest: String,
    /// The answer, as the route sends it.
    body: Bytes,
}

/// A tag's digest, or `None` when it does not exist or cannot be read.
type Tag = Option<Arc<str>>;

/// The service's coalesced checks and the answers it knows.
#[derive(Default)]
pub(crate) struct Coalescer {
    catalog_tags: Flights<Tag>,
    base_tags: Flights<Tag>,
    known: Mutex<HashMap<String, Arc<Known>>>,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer").finish_non_exhaustive()
    }
}

impl Coalescer {
    /// The service wrote `nick` (under its lock): reads of its catalog tag and of its base's
    /// tag begun before now are not taken any more.
    pub(crate) fn forget(&self, nick: &str) {
        self.catalog_tags.forget(nick);
        let base = self
            .known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(nick)
            .map(|k| k.base.clone());
        if let Some(base) = base {
            self.base_tags.forget(&base);
        }
    }
}

#[cfg(test)]
impl Coalescer {
    /// A read of `nick`'s catalog tag, `value` when a read is made.
    pub(crate) async fn catalog_tags_for_test(
        &self,
        nick: &str,
        window: Duration,
        value: &'static str,
    ) -> Tag {
        self.catalog_tags
            .run(nick, window, Option::is_some, || async move {
                Some(Arc::from(value))
            })
            .await
    }
}

/// The JSON body the resolve route sends for `value` (as `api::json` makes it).
fn body(value: &impl serde::Serialize) -> Option<Bytes> {
    let v = serde_json::to_value(value).ok()?;
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

impl Service {
    /// The JSON answer to a resolve of `nick` when nothing is due, found as the module
    /// documentation says; `None` when something is due, or anything is not as expected: then
    /// the library's resolve decides (and says what is wrong).
    pub(crate) async fn nothing_due(&self, actor: &str, nick: &str) -> Option<Bytes> {
        let c = &self.inner.coalesce;
        let known = c
            .known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(nick)
            .cloned();
        let Some(k) = known else {
            let entry = self.catalog_tag(nick).await?;
            return Box::pin(self.learn(actor, nick, entry)).await;
        };
        // The entry last seen is most likely still the nick's: its base is read at the same
        // time as the nick's tag (both reads are begun for this request, or within its window).
        let base = c
            .base_tags
            .run(&k.base, self.window(), Option::is_some, || {
                let (s, base) = (self.clone(), k.base.clone());
                async move { s.base_tag(&base).await }
            });
        let (entry, base) = tokio::join!(self.catalog_tag(nick), base);
        let entry = entry?;
        if entry != k.entry {
            return Box::pin(self.learn(actor, nick, entry)).await;
        }
        (*base? == *k.base_digest).then(|| k.body.clone())
    }

    /// The library's check of `nick`, kept under `entry` when it has nothing due and the tag
    /// still points at `entry` after it.
    async fn learn(&self, actor: &str, nick: &str, entry: Arc<str>) -> Option<Bytes> {
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
        let body = body(&answer)?;
        if self.catalog_tag(nick).await.as_ref() == Some(&entry) {
            self.inner
                .coalesce
                .known
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    nick.to_owned(),
                    Arc::new(Known {
                        entry,
                        base: read.recipe.base,
                        base_digest: answer.base_digest,
                        body: body.clone(),
                    }),
                );
        }
        Some(body)
    }

    /// How long before a request the tag reads it may take began (`Config::fresh_within`).
    fn window(&self) -> Duration {
        self.inner.config.fresh_within
    }

    /// Where the nick's catalog tag points now (coalesced).
    async fn catalog_tag(&self, nick: &str) -> Tag {
        self.inner
            .coalesce
            .catalog_tags
            .run(nick, self.window(), Option::is_some, || {
                let (s, nick) = (self.clone(), nick.to_owned());
                async move {
                    let catalog = Catalog::new(s.inner.catalog.clone());
                    catalog
                        .head(&nick)
                        .await
                        .ok()?
                        .map(|d| d.to_string().into())
                }
            })
            .await
    }

    /// Where the base's tag points now (one HEAD), as the library reads it; a base pinned by
    /// digest is that digest.
    async fn base_tag(&self, base: &str) -> Tag {
        let (store, image) = self.inner.stores.open(base, false).ok()?;
        match image? {
            ManifestRef::Tag(t) => Some(
                store
                    .resolve_tag(&t)
                    .await
                    .ok()?
                    .digest()
                    .to_string()
                    .into(),
            ),
            ManifestRef::Digest(d) => Some(d.to_string().into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A clock the test moves by hand.
    fn manual_clock<T>() -> (Flights<T>, Arc<Mutex<Instant>>) {
        let t = Arc::new(Mutex::new(Instant::now()));
        let flights = Flights {
            now: {
                let t = Arc::clone(&t);
                Arc::new(move || *t.lock().unwrap())
            },
            ..Flights::default()
        };
        (flights, t)
    }

    fn advance(t: &Mutex<Instant>, ms: u64) {
        *t.lock().unwrap() += Duration::from_millis(ms);
    }

    /// A check counting its runs, returning its run number, held until `gate` is opened when
    /// one is given.
    #[derive(Clone, Default)]
    struct Counted {
        runs: Arc<AtomicUsize>,
        gate: Option<Arc<tokio::sync::Semaphore>>,
    }

    impl Counted {
        fn gated() -> Self {
            Counted {
                runs: Arc::default(),
                gate: Some(Arc::new(tokio::sync::Semaphore::new(0))),
            }
        }
        fn check(&self) -> impl Future<Output = Option<usize>> + Send + 'static {
            let (runs, gate) = (Arc::clone(&self.runs), self.gate.clone());
            async move {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                if let Some(g) = gate {
                    g.acquire().await.expect("open").forget();
                }
                Some(n)
            }
        }
        fn runs(&self) -> usize {
            self.runs.load(Ordering::SeqCst)
        }
        fn open(&self, n: usize) {
            self.gate.as_ref().expect("gated").add_permits(n);
        }
        /// Waits until `n` checks have started (a test that expects one that never starts
        /// fails after 10 s rather than hanging).
        async fn started(&self, n: usize) {
            let wait = async {
                while self.runs() < n {
                    tokio::task::yield_now().await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), wait)
                .await
                .unwrap_or_else(|_| panic!("check {n} never started ({} did)", self.runs()));
        }
    }

    #[test]
    fn the_rule_takes_reads_begun_after_arrival_or_within_the_window_and_reads_ahead() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let read = |started, at_ms| Read {
            started,
            at: t0 + ms(at_ms),
            value: (),
        };
        let (w, zero) = (ms(1000), Duration::ZERO);
        let half = ms(500);
        // Nothing read yet: wait (and read).
        assert_eq!(take::<()>(None, 0, 5, t0, w, half), Take::Wait);
        // Begun after the request arrived: taken, window or not.
        assert_eq!(take(Some(&read(6, 0)), 0, 5, t0, zero, zero), Take::Use);
        assert_eq!(
            take(Some(&read(6, 0)), 0, 5, t0 + ms(5000), w, half),
            Take::Use
        );
        // Begun before it: only within the window.
        assert_eq!(take(Some(&read(4, 0)), 0, 5, t0, zero, zero), Take::Wait);
        assert_eq!(
            take(Some(&read(4, 0)), 0, 5, t0 + ms(499), w, half),
            Take::Use
        );
        // Within `ahead` of the window's end: taken, and the next read started ahead.
        assert_eq!(
            take(Some(&read(4, 0)), 0, 5, t0 + ms(500), w, half),
            Take::UseAndRefresh
        );
        assert_eq!(
            take(Some(&read(4, 0)), 0, 5, t0 + ms(1000), w, half),
            Take::UseAndRefresh
        );
        assert_eq!(
            take(Some(&read(4, 0)), 0, 5, t0 + ms(936), w, ms(63)),
            Take::Use
        );
        assert_eq!(
            take(Some(&read(4, 0)), 0, 5, t0 + ms(937), w, ms(63)),
            Take::UseAndRefresh
        );
        assert_eq!(
            take(Some(&read(4, 0)), 0, 5, t0 + ms(999), w, zero),
            Take::Use
        );
        // Past the window: never.
        assert_eq!(
            take(Some(&read(4, 0)), 0, 5, t0 + ms(1001), w, half),
            Take::Wait
        );
        // Begun at or before the floor (the key was written since): never, however recent.
        assert_eq!(take(Some(&read(4, 0)), 4, 5, t0, w, half), Take::Wait);
        assert_eq!(take(Some(&read(6, 0)), 7, 5, t0, w, half), Take::Wait);
        assert_eq!(take(Some(&read(8, 0)), 7, 5, t0, w, half), Take::Use);
        assert_eq!(
            take(Some(&read(4, 0)), 0, 5, t0 + ms(1000), w, zero),
            Take::UseAndRefresh
        );
        // How far ahead: twice the last read, at least a sixteenth of the window; none when the
        // last read took more than an eighth of it.
        assert_eq!(ahead(w, zero), ms(62) + Duration::from_micros(500));
        assert_eq!(ahead(w, ms(50)), ms(100));
        assert_eq!(ahead(w, ms(125)), ms(250));
        assert_eq!(ahead(w, ms(126)), zero);
        assert_eq!(ahead(w, Duration::MAX), zero);
    }

    /// Requests that arrive while a check runs do not take its result: they share the next one,
    /// which starts after they arrived. A request arriving alone runs its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_takes_only_a_check_that_started_after_it_arrived() {
        let flights: Arc<Flights<Option<usize>>> = Arc::default();
        let c = Counted::gated();
        let run = |f: &Arc<Flights<Option<usize>>>, c: &Counted| {
            let (f, c) = (Arc::clone(f), c.clone());
            tokio::spawn(async move { f.run("k", Duration::ZERO, |_| true, || c.check()).await })
        };
        // The first check starts and is held.
        let first = run(&flights, &c);
        c.started(1).await;
        // Eight more arrive while it runs.
        let later: Vec<_> = (0..8).map(|_| run(&flights, &c)).collect();
        // Let them all reach the slot (they wait on its lock; none can run a check yet).
        while Arc::strong_count(&flights.slot("k")) < 2 + 9 {
            tokio::task::yield_now().await;
        }
        c.open(2);
        assert_eq!(first.await.unwrap(), Some(1));
        for h in later {
            // Not the first check's result (it started before they arrived): the second's.
            assert_eq!(h.await.unwrap(), Some(2));
        }
        assert_eq!(c.runs(), 2, "one check for all eight");
        // Alone again: a check of its own; the slot was dropped when nobody waited.
        let alone = Counted::default();
        assert_eq!(
            flights
                .run("k", Duration::ZERO, |_| true, || alone.check())
                .await,
            Some(1)
        );
        assert!(flights.slots.lock().unwrap().is_empty());
        // Other keys do not wait for each other.
        assert_eq!(
            flights
                .run("other", Duration::ZERO, |_| true, || async { Some(7) })
                .await,
            Some(7)
        );
    }

    /// With a window, a result stays for requests arriving within it after its check began,
    /// and only while `keep` says so.
    #[tokio::test]
    async fn a_window_lets_later_requests_take_a_recent_check() {
        let (flights, t) = manual_clock::<Option<usize>>();
        let window = Duration::from_millis(1000);
        let c = Counted::default();
        assert_eq!(
            flights
                .run("k", window, Option::is_some, || c.check())
                .await,
            Some(1)
        );
        advance(&t, 300);
        assert_eq!(
            flights
                .run("k", window, Option::is_some, || c.check())
                .await,
            Some(1)
        );
        assert_eq!(c.runs(), 1, "the second took the first's");
        advance(&t, 800);
        assert_eq!(
            flights
                .run("k", window, Option::is_some, || c.check())
                .await,
            Some(2),
            "past the window: a check of its own"
        );
        // Not kept: a missing tag is read again by the next request.
        let none = || {
            let runs = Arc::clone(&c.runs);
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                None
            }
        };
        flights.run("gone", window, Option::is_some, none).await;
        flights.run("gone", window, Option::is_some, none).await;
        assert_eq!(c.runs(), 4);
        assert!(!flights.slots.lock().unwrap().contains_key("gone"));
    }

    /// Close to the end of its window, the next read starts in the background: the request
    /// that starts it and those after it do not wait, later requests take the new read, and a
    /// request whose window has passed waits only for the read under way. How close depends on
    /// how long the last read took. No request, no read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_ahead_before_the_window_ends_and_nobody_waits() {
        let (flights, t) = manual_clock::<Option<usize>>();
        let flights = Arc::new(flights);
        let window = Duration::from_millis(1000);
        let c = Counted::gated();
        let run = |c: &Counted| {
            let (f, c) = (Arc::clone(&flights), c.clone());
            tokio::spawn(async move { f.run("k", window, Option::is_some, || c.check()).await })
        };
        // t=0: the first read, waited for; it takes no time on this clock, so the next one is
        // started a sixteenth of the window (62.5 ms) before the end.
        let first = run(&c);
        c.started(1).await;
        c.open(1);
        assert_eq!(first.await.unwrap(), Some(1));
        // t=900: taken, nothing started.
        advance(&t, 900);
        assert_eq!(run(&c).await.unwrap(), Some(1));
        assert_eq!(c.runs(), 1);
        // t=950: taken at once (the gate is closed: it would hang if it waited), and the next
        // read starts in the background.
        advance(&t, 50);
        assert_eq!(run(&c).await.unwrap(), Some(1));
        c.started(2).await;
        // t=980: the read ahead is under way: the old one is still taken, no third read.
        advance(&t, 30);
        assert_eq!(run(&c).await.unwrap(), Some(1));
        assert_eq!(c.runs(), 2);
        // t=1100: the first read is out of this request's window; the one under way (begun at
        // 950) is within it: the request waits for that one, and starts none of its own.
        advance(&t, 120);
        let waiting = run(&c);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        c.open(1);
        assert_eq!(waiting.await.unwrap(), Some(2));
        assert_eq!(c.runs(), 2);
        // That read took 150 ms, more than an eighth of the window: no read ahead (the
        // registry is slow; reading more often would slow it further). t=1940: taken, nothing
        // started; t=1960: out of the window, read again and waited for.
        advance(&t, 840);
        assert_eq!(run(&c).await.unwrap(), Some(2));
        assert_eq!(c.runs(), 2);
        advance(&t, 20);
        let waiting = run(&c);
        c.started(3).await;
        assert!(!waiting.is_finished());
        c.open(1);
        assert_eq!(waiting.await.unwrap(), Some(3));
        // Nobody asks for a long while: nothing more is read.
        advance(&t, 60_000);
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(c.runs(), 3, "no request, no read");
        // The next request finds every read out of its window and reads (and waits).
        let late = run(&c);
        c.started(4).await;
        c.open(1);
        assert_eq!(late.await.unwrap(), Some(4));
        assert_eq!(flights.slots.lock().unwrap().len(), 1, "one slot per key");
    }

    /// Forgetting a nick sets aside the reads of its catalog tag and of its known base's tag,
    /// and only those.
    #[tokio::test]
    async fn forgetting_a_nick_sets_aside_its_tag_reads_and_its_base_reads() {
        /// A read of `key` in a minute's window; `v` when a read is made.
        async fn read(f: &Flights<Tag>, key: &str, v: &'static str) -> Option<String> {
            f.run(
                key,
                Duration::from_secs(60),
                Option::is_some,
                move || async move { Some(Arc::<str>::from(v)) },
            )
            .await
            .as_deref()
            .map(str::to_owned)
        }
        let c = Coalescer::default();
        read(&c.catalog_tags, "n", "e1").await;
        read(&c.catalog_tags, "m", "f1").await;
        read(&c.base_tags, "reg/base:latest", "b1").await;
        c.known.lock().unwrap().insert(
            "n".into(),
            Arc::new(Known {
                entry: "e1".into(),
                base: "reg/base:latest".into(),
                base_digest: "b1".into(),
                body: Bytes::new(),
            }),
        );
        assert_eq!(
            read(&c.catalog_tags, "n", "e2").await.as_deref(),
            Some("e1")
        );
        c.forget("n");
        assert_eq!(
            read(&c.catalog_tags, "n", "e2").await.as_deref(),
            Some("e2")
        );
        assert_eq!(
            read(&c.base_tags, "reg/base:latest", "b2").await.as_deref(),
            Some("b2")
        );
        assert_eq!(
            read(&c.catalog_tags, "m", "f2").await.as_deref(),
            Some("f1")
        );
        // A nick never read: nothing to forget, nothing made.
        c.forget("unknown");
        assert!(!c.catalog_tags.slots.lock().unwrap().contains_key("unknown"));
    }

    /// A key forgotten (the service wrote it) is read again by the next request, window or
    /// not; a read begun before the floor is not taken even when it ends after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_forgotten_key_is_read_again() {
        let (flights, t) = manual_clock::<Option<usize>>();
        let flights = Arc::new(flights);
        let window = Duration::from_millis(1000);
        let c = Counted::gated();
        let run = |c: &Counted| {
            let (f, c) = (Arc::clone(&flights), c.clone());
            tokio::spawn(async move { f.run("k", window, Option::is_some, || c.check()).await })
        };
        c.open(1);
        assert_eq!(run(&c).await.unwrap(), Some(1));
        flights.forget("k");
        c.open(1);
        assert_eq!(run(&c).await.unwrap(), Some(2), "read again at once");
        assert_eq!(run(&c).await.unwrap(), Some(2), "then taken in the window");
        // A read ahead begun before a forget is not taken by the requests after it.
        advance(&t, 950);
        assert_eq!(run(&c).await.unwrap(), Some(2));
        c.started(3).await;
        flights.forget("k");
        c.open(2);
        assert_eq!(run(&c).await.unwrap(), Some(4));
        assert_eq!(c.runs(), 4);
    }
}
