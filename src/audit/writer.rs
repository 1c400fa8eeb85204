//! The single writer of an audit log: a dedicated thread that group-commits.
//!
//! Every append, flush and close goes through one channel to one thread, which alone owns the
//! signing key and the end of the chain. The thread blocks for the first request, then takes
//! every request that is already queued (up to [`MAX_GROUP_ENTRIES`]) as one group: it assigns
//! seqs and prev hashes in arrival order, signs, inserts the whole group with one sled batch,
//! flushes once, and only then answers every waiter of the group. Appenders that arrive while
//! a flush is running therefore share the next flush instead of queueing one fsync each, and
//! the fsync never runs on an async runtime's worker thread.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use futures::channel::oneshot;

use super::merkle::{MerkleStore, SignedTreeHead, TreeHead};
use super::{AuditEntry, AuditError, AuditKind, entry_hash, head_file, now_ms, seq_key};

/// The kept head file is rewritten at most this often (each write is two fsyncs); the last
/// head is always written when the writer stops, and a pending one once this much time
/// passed without a new group.
const HEAD_FILE_INTERVAL: Duration = Duration::from_millis(500);

/// Requests taken into one group stop being collected once the group holds this many entries
/// (a single larger batch is still taken whole). It bounds the latency of the first waiter
/// and the memory of one sled batch.
pub(super) const MAX_GROUP_ENTRIES: usize = 4096;

/// How many times in a row the writer yields its core without a new arrival before it stops
/// waiting for a group to grow back to the previous group's size (see [`Writer::run`]).
const LINGER_YIELDS: u32 = 16;

/// Below this many entries a group is signed on the writer thread alone; above it, the
/// signatures are spread over the available cores (spawning scoped threads costs tens of
/// microseconds, about one signature each).
const PARALLEL_SIGN_MIN: usize = 32;

/// Reply channel of a request.
pub(super) type Reply<T> = oneshot::Sender<Result<T, AuditError>>;

/// One message to the writer thread.
pub(super) enum Request {
    /// Append these `(kind, CBOR payload)` entries contiguously; the reply is their seq range.
    Append {
        entries: Vec<(AuditKind, Vec<u8>)>,
        reply: Reply<Range<u64>>,
    },
    /// Barrier: answered once everything queued before it is flushed.
    Flush { reply: Reply<()> },
    /// Like `Flush`, then the writer refuses everything after it and stops.
    Close { reply: Reply<()> },
}

impl Request {
    fn entry_count(&self) -> usize {
        match self {
            Request::Append { entries, .. } => entries.len(),
            Request::Flush { .. } | Request::Close { .. } => 0,
        }
    }
}

/// The end of the chain: the seq the next entry gets and the hash it links to.
#[derive(Debug, Clone, Copy)]
pub(super) struct ChainState {
    pub(super) next_seq: u64,
    pub(super) last_hash: [u8; 32],
}

/// State the writer publishes for the handles.
pub(super) struct Shared {
    /// Head as of the last successful insert. Only the writer thread changes it.
    pub(super) head: Mutex<ChainState>,
    /// The latest signed tree head (covers exactly `head.next_seq` entries once the Merkle
    /// nodes of the last group are stored). Only the writer thread changes it.
    pub(super) signed: Mutex<SignedTreeHead>,
    #[cfg(test)]
    pub(super) hooks: hooks::TestHooks,
}

impl Shared {
    pub(super) fn new(head: ChainState, signed: SignedTreeHead) -> Self {
        Shared {
            head: Mutex::new(head),
            signed: Mutex::new(signed),
            #[cfg(test)]
            hooks: hooks::TestHooks::default(),
        }
    }

    pub(super) fn head(&self) -> ChainState {
        // The head is replaced whole, so a panic while holding the lock cannot leave it torn.
        *self.head.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_head(&self, state: ChainState) {
        *self.head.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }

    pub(super) fn signed_head(&self) -> SignedTreeHead {
        *self.signed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_signed_head(&self, sth: SignedTreeHead) {
        *self.signed.lock().unwrap_or_else(PoisonError::into_inner) = sth;
    }
}

/// The writer thread's own state.
pub(super) struct Writer {
    pub(super) tree: sled::Tree,
    pub(super) key: SigningKey,
    /// Authoritative head; `shared.head` is a published copy.
    pub(super) state: ChainState,
    pub(super) shared: Arc<Shared>,
    /// The Merkle nodes of the log.
    pub(super) merkle: MerkleStore,
    /// Leaves whose nodes are stored; behind `state.next_seq` only after a failed node write
    /// (repaired by [`MerkleStore::catch_up`] before the next group).
    pub(super) merkle_size: u64,
    /// Where the latest signed head is kept outside sled (`None`: not kept).
    pub(super) head_file: Option<PathBuf>,
    /// When the head file was last written, and whether a newer head waits to be written.
    pub(super) head_written: Option<Instant>,
    pub(super) head_dirty: bool,
}

/// Requests collected for one commit.
struct Group {
    requests: Vec<Request>,
    entries: usize,
    closing: bool,
}

impl Group {
    fn new(first: Request) -> Self {
        Group {
            entries: first.entry_count(),
            closing: matches!(first, Request::Close { .. }),
            requests: vec![first],
        }
    }

    /// Whether more requests may join: not after a close, and not past the size bound.
    fn is_open(&self) -> bool {
        !self.closing && self.entries < MAX_GROUP_ENTRIES
    }

    /// Takes the requests already queued while the group is open; whether any was taken.
    fn take_queued(&mut self, rx: &Receiver<Request>) -> bool {
        let mut took = false;
        while self.is_open() {
            match rx.try_recv() {
                Ok(req) => {
                    self.entries += req.entry_count();
                    self.closing = matches!(req, Request::Close { .. });
                    self.requests.push(req);
                    took = true;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        took
    }
}

/// An entry whose place in the chain is fixed but which is not signed yet.
struct Unsigned {
    seq: u64,
    time_ms: u64,
    kind: AuditKind,
    payload: Vec<u8>,
    prev_hash: [u8; 32],
    hash: [u8; 32],
}

impl Writer {
    /// The thread body: runs until every handle is gone or a `Close` was served.
    pub(super) fn run(mut self, rx: Receiver<Request>) {
        // Requests in the previous group: the number of appenders that were waiting together.
        let mut previous = 0usize;
        loop {
            let first = if self.head_dirty {
                let due = self.head_written.map_or(Duration::ZERO, |t| {
                    HEAD_FILE_INTERVAL.saturating_sub(t.elapsed())
                });
                match rx.recv_timeout(due) {
                    Ok(req) => req,
                    Err(RecvTimeoutError::Timeout) => {
                        self.write_head_file();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(req) => req,
                    Err(_) => break,
                }
            };
            #[cfg(test)]
            self.shared.hooks.wait_until_released();
            let mut group = Group::new(first);
            group.take_queued(&rx);
            // The appenders just answered are resubmitting: the first of them wakes this
            // thread before the others have sent. Yielding the core a few times lets them
            // join this group instead of each paying a flush of its own. A lone appender
            // never waits (the previous group had one request), and the wait ends as soon as
            // arrivals stop.
            let mut idle = 0;
            while group.is_open() && group.requests.len() < previous && idle < LINGER_YIELDS {
                std::thread::yield_now();
                if group.take_queued(&rx) {
                    idle = 0;
                } else {
                    idle += 1;
                }
            }
            previous = group.requests.len();
            let closing = group.closing;
            self.commit(group.requests);
            if closing {
                // Whatever was queued behind the close is refused, not silently dropped.
                while let Ok(req) = rx.try_recv() {
                    refuse(req);
                }
                if self.head_dirty {
                    self.write_head_file();
                }
                tracing::debug!(next_seq = self.state.next_seq, "audit writer closed");
                return;
            }
            if self.head_dirty
                && self
                    .head_written
                    .is_none_or(|t| t.elapsed() >= HEAD_FILE_INTERVAL)
            {
                self.write_head_file();
            }
        }
        // Every handle is gone; everything that was queued has been committed above.
        if self.head_dirty {
            self.write_head_file();
        }
        tracing::debug!(next_seq = self.state.next_seq, "audit writer stopped");
    }

    /// Appends every request of `group` in order with one sled batch and one flush, then
    /// answers all of them.
    fn commit(&mut self, group: Vec<Request>) {
        let mut tentative = self.state;
        let mut unsigned: Vec<Unsigned> = Vec::new();
        let mut appends: Vec<(Reply<Range<u64>>, Range<u64>)> = Vec::new();
        let mut barriers: Vec<Reply<()>> = Vec::new();

        for req in group {
            match req {
                Request::Append { entries, reply } => {
                    let before = unsigned.len();
                    match chain_entries(&mut tentative, entries, &mut unsigned) {
                        Ok(range) => appends.push((reply, range)),
                        Err(e) => {
                            // Only this request fails; the ones around it are unaffected.
                            unsigned.truncate(before);
                            answer(reply, Err(e));
                        }
                    }
                }
                Request::Flush { reply } | Request::Close { reply } => barriers.push(reply),
            }
        }

        if !unsigned.is_empty() {
            let leaves: Vec<[u8; 32]> = unsigned.iter().map(|u| u.hash).collect();
            match self.insert(unsigned) {
                Ok(()) => {
                    let before = self.state.next_seq;
                    self.state = tentative;
                    self.shared.set_head(self.state);
                    self.grow_tree(before, &leaves);
                }
                Err(e) => {
                    // The batch is atomic: nothing was inserted and the chain is unchanged.
                    tracing::warn!(error = %e, "audit group insert failed");
                    for (reply, _) in appends.drain(..) {
                        answer(reply, Err(duplicate(&e)));
                    }
                }
            }
        }

        let flushed = self.flush();
        if let Err(e) = &flushed {
            // The entries are in the tree and stay part of the chain (they may still reach
            // disk later), exactly as a single append whose flush failed.
            tracing::warn!(error = %e, "audit flush failed");
        }
        for (reply, range) in appends {
            match &flushed {
                Ok(()) => {
                    tracing::debug!(
                        first = range.start,
                        end = range.end,
                        "audit entries appended"
                    );
                    answer(reply, Ok(range));
                }
                Err(e) => answer(reply, Err(duplicate(e))),
            }
        }
        for reply in barriers {
            answer(reply, flushed.as_ref().map(|_| ()).map_err(duplicate));
        }
    }

    /// Signs and encodes `unsigned` (in parallel when there are many) and inserts them all
    /// with one atomic sled batch.
    fn insert(&self, unsigned: Vec<Unsigned>) -> Result<(), AuditError> {
        #[cfg(test)]
        self.shared.hooks.injected_failure()?;
        let encoded = sign_all(&self.key, unsigned)?;
        let mut batch = sled::Batch::default();
        for (seq, bytes) in encoded {
            batch.insert(&seq_key(seq), bytes);
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), AuditError> {
        #[cfg(test)]
        self.shared.hooks.count_flush();
        // One flush of the database makes both the entries and their Merkle nodes durable.
        self.tree.flush()?;
        Ok(())
    }

    /// Stores the Merkle nodes of the `leaves` just inserted after entry `before - 1`, and
    /// signs and publishes the new tree head. The nodes are derived data: a failure is
    /// logged and repaired from the entries before the next group (the published head then
    /// stays at the last size whose nodes are stored).
    fn grow_tree(&mut self, before: u64, leaves: &[[u8; 32]]) {
        let grown = if self.merkle_size == before {
            self.merkle
                .append_batch(before, leaves)
                .and_then(|(batch, n)| {
                    self.merkle.tree().apply_batch(batch)?;
                    Ok(n)
                })
        } else {
            self.merkle.catch_up(&self.tree)
        };
        match grown {
            Ok(n) => self.merkle_size = n,
            Err(e) => {
                tracing::warn!(error = %e, "audit merkle node write failed; rebuilt later");
                return;
            }
        }
        match self.merkle.root(self.merkle_size) {
            Ok(root) => {
                let sth = TreeHead {
                    size: self.merkle_size,
                    time_ms: now_ms(),
                    root,
                }
                .sign(&self.key);
                self.shared.set_signed_head(sth);
                self.head_dirty = self.head_file.is_some();
            }
            Err(e) => tracing::warn!(error = %e, "audit merkle root unreadable"),
        }
    }

    /// Writes the latest signed head to the kept head file (atomically, durably).
    fn write_head_file(&mut self) {
        self.head_dirty = false;
        self.head_written = Some(Instant::now());
        if let Some(path) = &self.head_file
            && let Err(e) = head_file::store(path, &self.shared.signed_head())
        {
            tracing::warn!(error = %e, path = %path.display(), "cannot keep the audit head");
        }
    }
}

/// Gives `entries` their seqs and prev hashes after `state`, advancing it, and appends them to
/// `out`. On error `state` is unchanged (entries already pushed to `out` are the caller's to
/// drop).
fn chain_entries(
    state: &mut ChainState,
    entries: Vec<(AuditKind, Vec<u8>)>,
    out: &mut Vec<Unsigned>,
) -> Result<Range<u64>, AuditError> {
    let mut next = *state;
    let start = next.next_seq;
    for (kind, payload) in entries {
        let seq = next.next_seq;
        let time_ms = now_ms();
        let hash = entry_hash(seq, time_ms, kind.as_str(), &payload, &next.last_hash)?;
        out.push(Unsigned {
            seq,
            time_ms,
            kind,
            payload,
            prev_hash: next.last_hash,
            hash,
        });
        next = ChainState {
            next_seq: seq
                .checked_add(1)
                .ok_or(AuditError::TooLarge("seq space"))?,
            last_hash: hash,
        };
    }
    let range = start..next.next_seq;
    *state = next;
    Ok(range)
}

/// Signs and CBOR-encodes every entry. Signatures do not feed into the chain (hashes do, and
/// they are already fixed), so they can be computed on all cores at once.
fn sign_all(key: &SigningKey, unsigned: Vec<Unsigned>) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    if threads < 2 || unsigned.len() < PARALLEL_SIGN_MIN {
        return unsigned.into_iter().map(|u| sign_one(key, u)).collect();
    }
    let per_thread = unsigned.len().div_ceil(threads);
    let mut chunks: Vec<Vec<Unsigned>> = Vec::with_capacity(threads);
    let mut rest = unsigned.into_iter();
    loop {
        let chunk: Vec<Unsigned> = rest.by_ref().take(per_thread).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(chunk);
    }
    let mut last = chunks.pop().unwrap_or_default();
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|u| sign_one(key, u))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        // The writer thread signs the last chunk itself instead of idling.
        let mine: Result<Vec<_>, _> = last.drain(..).map(|u| sign_one(key, u)).collect();
        let mut all = Vec::new();
        for h in handles {
            match h.join() {
                Ok(part) => all.extend(part?),
                // A panic while signing is a bug; propagate it as one.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        all.extend(mine?);
        Ok(all)
    })
}

fn sign_one(key: &SigningKey, u: Unsigned) -> Result<(u64, Vec<u8>), AuditError> {
    let entry = AuditEntry::sign_hashed(
        u.seq,
        u.time_ms,
        u.kind.as_str(),
        u.payload,
        u.prev_hash,
        u.hash,
        key,
    );
    Ok((u.seq, entry.encode()?))
}

/// Sends a result to a waiter that may have gone away (a cancelled `append_async`): its entry
/// is written all the same, and nobody is left to tell.
fn answer<T>(reply: Reply<T>, result: Result<T, AuditError>) {
    let _ = reply.send(result);
}

/// Answers a request that arrived after a close.
fn refuse(req: Request) {
    match req {
        Request::Append { reply, .. } => answer(reply, Err(AuditError::Closed)),
        Request::Flush { reply } | Request::Close { reply } => {
            answer(reply, Err(AuditError::Closed))
        }
    }
}

/// A copy of a group-level error for each of the group's waiters.
fn duplicate(e: &AuditError) -> AuditError {
    match e {
        AuditError::Sled(e) => AuditError::Sled(e.clone()),
        AuditError::Encode { what, reason } => AuditError::Encode {
            what,
            reason: reason.clone(),
        },
        AuditError::Io(io) => AuditError::Io(std::io::Error::new(io.kind(), io.to_string())),
        AuditError::TooLarge(what) => AuditError::TooLarge(what),
        AuditError::Closed => AuditError::Closed,
        other => AuditError::Task(other.to_string()),
    }
}

#[cfg(test)]
pub(super) mod hooks {
    //! Test-only controls of the writer thread: hold it before it collects a group (so that
    //! a test can queue requests that must then share one group), inject a store failure,
    //! and count flushes.

    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Condvar, Mutex, PoisonError};

    use crate::audit::AuditError;

    #[derive(Default)]
    pub(in crate::audit) struct TestHooks {
        held: Mutex<bool>,
        released: Condvar,
        fail_next: AtomicBool,
        pub(in crate::audit) flushes: AtomicU64,
        pub(in crate::audit) requests: AtomicU64,
    }

    impl TestHooks {
        pub(in crate::audit) fn hold(&self) {
            *self.held.lock().unwrap_or_else(PoisonError::into_inner) = true;
        }

        pub(in crate::audit) fn release(&self) {
            *self.held.lock().unwrap_or_else(PoisonError::into_inner) = false;
            self.released.notify_all();
        }

        pub(super) fn wait_until_released(&self) {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            while *held {
                held = self
                    .released
                    .wait(held)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }

        pub(in crate::audit) fn fail_next_insert(&self) {
            self.fail_next.store(true, Ordering::SeqCst);
        }

        pub(super) fn injected_failure(&self) -> Result<(), AuditError> {
            if self.fail_next.swap(false, Ordering::SeqCst) {
                return Err(AuditError::Sled(sled::Error::Unsupported(
                    "injected test failure".into(),
                )));
            }
            Ok(())
        }

        pub(super) fn count_flush(&self) {
            self.flushes.fetch_add(1, Ordering::SeqCst);
        }
    }
}
