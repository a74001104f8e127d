//! The record schema and its binary encoding.
//!
//! Every state transition of the engine is one [`Record`]. A group of records that
//! must be applied together (a parent suspending while its children are created) is
//! a [`Batch`]; one batch is one frame in the log, so recovery applies it whole or
//! not at all.
//!
//! # Wire format (version 1)
//!
//! | bytes | field |
//! |---|---|
//! | 0 | format version, `1` |
//! | 1.. | the batch encoded with [postcard] 1.x |
//!
//! postcard is used because its wire format is specified and frozen for the 1.x
//! series (<https://postcard.jamesmunns.com/wire-format>), it is maintained, compact
//! (varint integers) and fast, and it never needs a schema registry. Its one limit is
//! that it cannot carry self-describing values, so the JSON payloads, results and
//! metadata are stored as JSON text inside the record (see `json_value`). The
//! enum variant order of [`Record`] is part of the format: new variants are only
//! ever appended, and a change to an existing variant needs a new format version.
//! See `docs/wire-format.md`.
#![deny(clippy::indexing_slicing)]

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::sync::Arc;

/// The format version written in front of every encoded batch.
pub const FORMAT_VERSION: u8 = 1;

/// The opaque, unique, increasing identity of a task.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Milliseconds since the Unix epoch: the time unit of every record.
pub type UnixMs = u64;

/// The kind of a task: a one-shot task or a recurring cron task.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Runs until it completes or fails for good.
    Async,
    /// Runs on a cron schedule; a successful round returns it to `pending`.
    Cron,
}

/// What a parent does when one of its children fails for good.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnChildFailure {
    /// The parent resumes and sees the error entry (fib-flow's runtime behaviour).
    #[default]
    Deliver,
    /// An async parent becomes `permanently_failed`, a cron parent `paused`.
    FailParent,
}

/// How the retry delay grows with each retry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
pub enum BackoffKind {
    /// The same delay every time.
    #[default]
    Fixed,
    /// `base * (retry + 1)`.
    Linear,
    /// `base * 2^retry`.
    Exponential,
}

/// Everything needed to create a task. Options are already resolved (submit
/// option, else handler registration, else manager default) when this is written.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct NewTask {
    /// The new task's id.
    pub id: TaskId,
    /// The handler name.
    #[serde(deserialize_with = "interned::deserialize")]
    pub name: Arc<str>,
    /// Async or cron.
    pub kind: TaskKind,
    /// The handler input.
    #[serde(with = "json_value")]
    pub payload: Value,
    /// Higher runs first.
    pub priority: i32,
    /// A free-form label used by queries and stats.
    pub tag: Option<String>,
    /// Total time one attempt may run, in milliseconds; 0 means no limit.
    pub timeout_ms: u64,
    /// Maximum executions including the first.
    pub max_retries: u32,
    /// Base retry delay in milliseconds.
    pub retry_interval_ms: u64,
    /// Capability tags a worker must have.
    pub requires: Vec<String>,
    /// A key that makes a second submit return this task instead.
    pub dedup_key: Option<String>,
    /// The cron expression of a cron task.
    pub cron: Option<String>,
    /// When the task first becomes eligible.
    pub next_run_ms: UnixMs,
    /// The parent of a child task.
    pub parent_id: Option<TaskId>,
    /// The root of the workflow this task belongs to.
    pub root_id: Option<TaskId>,
    /// What the parent does if this child fails for good.
    pub on_failure: OnChildFailure,
    /// Creation time.
    pub created_ms: UnixMs,
}

/// Why an attempt failed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum FailKind {
    /// The handler returned an error (or panicked).
    Error,
    /// `start_time + timeout` passed.
    TimeoutTotal,
    /// No heartbeat within the heartbeat window.
    TimeoutHeartbeat,
}

/// A child's outcome as delivered to its parent.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum ChildOutcome {
    /// The child completed with this result.
    Completed(#[serde(with = "json_value")] Value),
    /// The child failed for good with this error.
    Failed(String),
}

/// One state transition. Each record changes exactly one task.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum Record {
    /// A task was created (`task_created`).
    Submit(Box<NewTask>),
    /// A worker claimed a pending task and opened `attempt`.
    Claim {
        /// The task.
        id: TaskId,
        /// The attempt number it opens.
        attempt: u32,
        /// The worker's name.
        #[serde(deserialize_with = "interned::deserialize")]
        worker: Arc<str>,
        /// When.
        at_ms: UnixMs,
    },
    /// The attempt succeeded. For a cron task `next_run_ms` is the next occurrence.
    Complete {
        /// The task.
        id: TaskId,
        /// The attempt that produced the result.
        attempt: u32,
        /// The handler's result.
        #[serde(with = "json_value")]
        result: Value,
        /// The next round of a cron task.
        next_run_ms: Option<UnixMs>,
        /// When.
        at_ms: UnixMs,
    },
    /// The attempt failed or timed out; the engine decides retry or exhaustion.
    Fail {
        /// The task.
        id: TaskId,
        /// The failed attempt.
        attempt: u32,
        /// The error text.
        error: String,
        /// Why it failed.
        kind: FailKind,
        /// When a retry would run (computed by the runtime, jitter included).
        retry_at_ms: UnixMs,
        /// When.
        at_ms: UnixMs,
    },
    /// The handler asked for children; they follow as `Submit` records in the same batch.
    Spawn {
        /// The parent.
        id: TaskId,
        /// The attempt that spawned.
        attempt: u32,
        /// The children, in creation order.
        children: Vec<(TaskId, String)>,
        /// A new context for the parent, if given.
        context: Option<Vec<u8>>,
        /// When.
        at_ms: UnixMs,
    },
    /// The handler suspended explicitly.
    Suspend {
        /// The task.
        id: TaskId,
        /// The attempt that suspended.
        attempt: u32,
        /// Why (non-empty).
        reason: String,
        /// A new context, if given.
        context: Option<Vec<u8>>,
        /// When.
        at_ms: UnixMs,
    },
    /// A child's final outcome reached its parent (exactly once per child).
    ChildDone {
        /// The parent.
        parent: TaskId,
        /// The child.
        child: TaskId,
        /// The outcome.
        outcome: ChildOutcome,
        /// Whether this failure fails the parent.
        fail_parent: bool,
        /// When.
        at_ms: UnixMs,
    },
    /// `pause_task`: running or pending → paused.
    Pause {
        /// The task.
        id: TaskId,
        /// When.
        at_ms: UnixMs,
    },
    /// `resume_task`: suspended or paused → pending.
    Resume {
        /// The task.
        id: TaskId,
        /// The reason for a suspended task (default `manual`).
        reason: Option<String>,
        /// When.
        at_ms: UnixMs,
    },
    /// `cancel_task`: suspended → permanently failed.
    Cancel {
        /// The task.
        id: TaskId,
        /// The reason (default "Task cancelled").
        reason: Option<String>,
        /// When.
        at_ms: UnixMs,
    },
    /// A running task whose process stopped: its attempt closes `interrupted`.
    Recover {
        /// The task.
        id: TaskId,
        /// Interruptions in a row after which the task is quarantined.
        quarantine_after: u32,
        /// Why (crash or shutdown).
        message: String,
        /// When.
        at_ms: UnixMs,
    },
    /// Handler progress (`task_progress`).
    Progress {
        /// The task.
        id: TaskId,
        /// The open attempt.
        attempt: u32,
        /// New stage name, if given.
        stage_name: Option<String>,
        /// New progress text, if given.
        text: Option<String>,
        /// New percentage, if given.
        percent: Option<u8>,
        /// Structured metadata.
        #[serde(with = "json_value")]
        metadata: Value,
        /// When.
        at_ms: UnixMs,
    },
    /// Handler audit checkpoint (`task_checkpoint`).
    Checkpoint {
        /// The task.
        id: TaskId,
        /// The open attempt.
        attempt: u32,
        /// The checkpoint code.
        code: String,
        /// An optional message.
        message: Option<String>,
        /// Structured metadata.
        #[serde(with = "json_value")]
        metadata: Value,
        /// When.
        at_ms: UnixMs,
    },
    /// The task and its history are deleted.
    Delete {
        /// The task.
        id: TaskId,
    },
    /// A pending cron task's next run moved by the catch-up policy (appended in v1:
    /// variants are only ever added at the end).
    Reschedule {
        /// The task.
        id: TaskId,
        /// Its new next run.
        next_run_ms: UnixMs,
        /// When.
        at_ms: UnixMs,
    },
    /// The retry of a failed or timed-out task is due: it becomes pending again
    /// (`task_retry_scheduled`).
    Retry {
        /// The task.
        id: TaskId,
        /// When.
        at_ms: UnixMs,
    },
}

impl Record {
    /// The task this record changes.
    pub fn task_id(&self) -> TaskId {
        match self {
            Record::Submit(t) => t.id,
            Record::ChildDone { parent, .. } => *parent,
            Record::Claim { id, .. }
            | Record::Complete { id, .. }
            | Record::Fail { id, .. }
            | Record::Spawn { id, .. }
            | Record::Suspend { id, .. }
            | Record::Pause { id, .. }
            | Record::Resume { id, .. }
            | Record::Cancel { id, .. }
            | Record::Recover { id, .. }
            | Record::Progress { id, .. }
            | Record::Checkpoint { id, .. }
            | Record::Delete { id }
            | Record::Reschedule { id, .. }
            | Record::Retry { id, .. } => *id,
        }
    }
}

/// Records applied together, whole or not at all.
pub type Batch = Vec<Record>;

/// Why bytes could not be decoded into a batch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The record is empty.
    #[error("empty record: the log holds a zero-length record, which fibflow never writes; run `fibflow verify` on the directory")]
    Empty,
    /// Written by a newer or unknown format.
    #[error("record format version {0} is not supported by this build (it reads version {FORMAT_VERSION}); open the directory with the fibflow version that wrote it")]
    UnsupportedVersion(u8),
    /// The body does not parse.
    #[error("record body does not decode: {0}; the log is damaged or from another program")]
    Body(#[from] postcard::Error),
}

/// Why a batch could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// serde refused a value (for example a map with non-string keys in a payload).
    #[error("cannot encode record: {0}; payloads and results must be JSON-compatible")]
    Body(#[from] postcard::Error),
}

/// Encodes a batch into `out` (cleared first), version byte included.
pub fn encode_into(batch: &[Record], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.clear();
    out.push(FORMAT_VERSION);
    let taken = std::mem::take(out);
    *out = postcard::to_extend(batch, taken)?;
    Ok(())
}

/// Encodes a batch into a new buffer.
pub fn encode(batch: &[Record]) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(128);
    encode_into(batch, &mut out)?;
    Ok(out)
}

/// Decodes a batch written by [`encode`]. Never panics on any input.
pub fn decode(bytes: &[u8]) -> Result<Batch, DecodeError> {
    let mut batch = Vec::new();
    decode_into(bytes, &mut batch)?;
    Ok(batch)
}

/// [`decode`] into `out` (cleared first), so that replay reuses one vector
/// for every frame. On an error `out` holds an unspecified prefix of the batch.
pub fn decode_into(bytes: &[u8], out: &mut Vec<Record>) -> Result<(), DecodeError> {
    out.clear();
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    // postcard writes a sequence as its length (a varint, like `usize`) and then
    // the elements: read them one by one, as `Vec<Record>`'s own visitor would.
    let (count, mut rest) = postcard::take_from_bytes::<usize>(body)?;
    for _ in 0..count {
        let (record, after) = postcard::take_from_bytes::<Record>(rest)?;
        out.push(record);
        rest = after;
    }
    Ok(())
}

/// Interning of the names records carry (handler and worker names), so that
/// replayed tasks share one `Arc<str>` per name as live operation does.
///
/// Decoding interns into the table that [`Interner::install`] put on the
/// decoding thread, if any; without one each name gets its own `Arc`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Interner {
    names: std::collections::HashSet<Arc<str>>,
    /// The names handed out last: a replay sees few names over and over, and a
    /// comparison is cheaper than hashing.
    recent: [Option<Arc<str>>; 4],
    next: usize,
}

thread_local! {
    static INTERNER: std::cell::RefCell<Option<Interner>> = const { std::cell::RefCell::new(None) };
}

impl Interner {
    /// The shared copy of `name`.
    pub(crate) fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.recent.iter().flatten().find(|n| ***n == *name) {
            return Arc::clone(n);
        }
        let shared = match self.names.get(name) {
            Some(n) => Arc::clone(n),
            None => {
                let n: Arc<str> = Arc::from(name);
                self.names.insert(Arc::clone(&n));
                n
            }
        };
        if let Some(slot) = self.recent.get_mut(self.next % 4) {
            *slot = Some(Arc::clone(&shared));
        }
        self.next = self.next.wrapping_add(1);
        shared
    }

    /// The shared copy of the name whose UTF-8 bytes are `name`: a name seen
    /// lately is found by its bytes, before they are validated again.
    pub(crate) fn intern_bytes(&mut self, name: &[u8]) -> Result<Arc<str>, std::str::Utf8Error> {
        if let Some(n) = self.recent.iter().flatten().find(|n| n.as_bytes() == name) {
            return Ok(Arc::clone(n));
        }
        Ok(self.intern(std::str::from_utf8(name)?))
    }

    /// The shared copy of `name`, which may already be one.
    pub(crate) fn intern_arc(&mut self, name: &Arc<str>) -> Arc<str> {
        if let Some(n) = self.names.get(name) {
            return Arc::clone(n);
        }
        self.names.insert(Arc::clone(name));
        Arc::clone(name)
    }

    /// Runs `f` with this table installed for decoding on the current thread.
    pub(crate) fn install<R>(&mut self, f: impl FnOnce() -> R) -> R {
        /// Takes the table back, also if `f` panics.
        struct Restore<'a>(&'a mut Interner);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                if let Some(t) = INTERNER.with(|i| i.borrow_mut().take()) {
                    *self.0 = t;
                }
            }
        }
        let table = std::mem::take(self);
        INTERNER.with(|i| *i.borrow_mut() = Some(table));
        let _restore = Restore(self);
        f()
    }
}

/// A string field read without an intermediate `String` where the format can
/// lend it (postcard from a slice does): `Cow<str>`'s own `Deserialize` always copies.
struct StrVisitor;

impl<'de> serde::de::Visitor<'de> for StrVisitor {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v))
    }
}

/// Borrows bytes from the input where the format allows.
struct BytesVisitor;

impl<'de> serde::de::Visitor<'de> for BytesVisitor {
    type Value = std::borrow::Cow<'de, [u8]>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(v))
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v.to_vec()))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v))
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(v.as_bytes()))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v.as_bytes().to_vec()))
    }
}

/// Reads a name through the installed [`Interner`], if any.
mod interned {
    use serde::Deserializer;
    use std::sync::Arc;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
        if d.is_human_readable() {
            let name = d.deserialize_str(super::StrVisitor)?;
            return Ok(super::INTERNER.with(|i| match i.borrow_mut().as_mut() {
                Some(table) => table.intern(&name),
                None => Arc::from(&*name),
            }));
        }
        // postcard writes a string as its bytes: read them as bytes, so that
        // a name met lately is not validated as UTF-8 again.
        let name = d.deserialize_bytes(super::BytesVisitor)?;
        super::INTERNER
            .with(|i| match i.borrow_mut().as_mut() {
                Some(table) => table.intern_bytes(&name),
                None => std::str::from_utf8(&name).map(Arc::from),
            })
            .map_err(serde::de::Error::custom)
    }
}

/// The task of the first record of a batch written by [`encode`], read without
/// decoding the batch: every record's first field is the id its
/// [`Record::task_id`] returns, so this is the version byte, the record count,
/// the variant index and then that id, all varints. `None` if the bytes do not
/// start like a non-empty batch (decoding them will say why).
///
/// Replay uses it to route a frame to the thread that owns the task's shard; a
/// frame's records all belong to one shard, since a batch is applied and
/// appended under one shard lock.
pub fn peek_task_id(bytes: &[u8]) -> Option<TaskId> {
    // Every replay walker peeks at every frame: the common shape (a count and
    // a variant of one byte each) is read without the general loop.
    if let [FORMAT_VERSION, 1..=0x7f, 0..=0x7f, id @ ..] = bytes {
        let mut v = 0u64;
        for (i, &b) in id.iter().take(10).enumerate() {
            v |= u64::from(b & 0x7f).checked_shl(7 * i as u32)?;
            if b & 0x80 == 0 {
                return Some(TaskId(v));
            }
        }
        return None;
    }
    peek_task_id_general(bytes)
}

/// [`peek_task_id`] for any shape of batch.
fn peek_task_id_general(bytes: &[u8]) -> Option<TaskId> {
    let (&version, mut rest) = bytes.split_first()?;
    if version != FORMAT_VERSION {
        return None;
    }
    let mut varint = || -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, r) = rest.split_first()?;
            rest = r;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    };
    let count = varint()?;
    if count == 0 {
        return None;
    }
    let _variant = varint()?;
    varint().map(TaskId)
}

/// The deepest nesting of arrays and objects a stored JSON value may have.
/// Stored values are parsed back with serde_json, which refuses more than 128
/// levels; values deeper than this are refused when they come in (a payload,
/// a result, children's payloads, event metadata), never stored unreadable.
pub const MAX_JSON_DEPTH: usize = 100;

/// Whether `v` nests arrays and objects at most [`MAX_JSON_DEPTH`] levels
/// deep. It never allocates (every submit checks its payload), and its
/// recursion stops at the limit, so any depth is checked safely.
pub(crate) fn json_depth_ok(v: &serde_json::Value) -> bool {
    /// Whether `v`, under `above` containers, stays within the limit.
    fn within(v: &serde_json::Value, above: usize) -> bool {
        use serde_json::Value;
        match v {
            Value::Array(a) => above < MAX_JSON_DEPTH && a.iter().all(|c| within(c, above + 1)),
            Value::Object(o) => above < MAX_JSON_DEPTH && o.values().all(|c| within(c, above + 1)),
            _ => true,
        }
    }
    within(v, 0)
}

/// The error text for a value deeper than [`MAX_JSON_DEPTH`].
pub(crate) fn too_deep(what: &str) -> String {
    format!(
        "{what} nests arrays or objects more than {MAX_JSON_DEPTH} levels deep, more than fibflow stores: flatten it"
    )
}

/// Stores a JSON value as JSON text in binary formats (postcard cannot carry
/// self-describing values), and as itself in human-readable ones (serde_json), so
/// the public snapshot types still serialize to natural JSON.
pub(crate) mod json_value {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub(crate) fn serialize<S: Serializer>(value: &Value, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return value.serialize(s);
        }
        // `Value`'s Display is its compact JSON text: written without an
        // intermediate String.
        s.collect_str(value)
    }

    /// A value that serializes as its JSON text.
    pub(crate) struct Text<'a>(pub(crate) &'a Value);

    impl Serialize for Text<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(self.0)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        if d.is_human_readable() {
            return Value::deserialize(d);
        }
        // postcard writes the text as its bytes; serde_json checks the UTF-8
        // of what it parses, so it is not validated twice.
        let text = d.deserialize_bytes(super::BytesVisitor)?;
        // The most common value (no payload, no result) without a parser.
        if *text == *b"null" {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&text).map_err(serde::de::Error::custom)
    }
}

/// [`json_value`] for an optional value.
pub(crate) mod opt_json_value {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub(crate) fn serialize<S: Serializer>(value: &Option<Value>, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return value.serialize(s);
        }
        value.as_ref().map(super::json_value::Text).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
        if d.is_human_readable() {
            return Option::<Value>::deserialize(d);
        }
        let text = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        text.map(|t| serde_json::from_str(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests;
