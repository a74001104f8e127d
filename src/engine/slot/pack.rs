//! The frozen form of a task entry, written and read by hand.
//!
//! postcard through serde spent about 3,200 instructions on a plain finished task
//! (some 80 fields, each through several generic layers); this writes the same
//! fields directly, LEB128 varints for integers, a length before every string,
//! one byte for every `Option` tag and enum. The rare nested parts (an event's
//! message and metadata, a child round) go through postcard as a length-prefixed
//! blob. The layout is private to one process (it is never written to disk
//! except inside a snapshot, whose version names it), and unit tests check on
//! every freeze that [`read`] returns exactly what [`to_box`] was given.

use crate::codec::{OnChildFailure, TaskId, TaskKind};
use crate::engine::audit::{EventExtra, EventRow, EventType};
use crate::engine::task::{Attempt, AttemptOutcome, Task, TaskStatus};
use crate::engine::workflow::Round;
use crate::engine::TaskEntry;
use serde_json::Value;
use std::sync::Arc;

/// Bytes a plain entry fits in, written on the stack first.
const LOCAL: usize = 512;

/// Appends the encoding of `e` to `out` (the tests' entry point; freezing
/// uses [`to_box`]).
#[cfg(test)]
pub(super) fn write(e: &TaskEntry, out: &mut Vec<u8>) {
    let mut local = Local::new();
    encode(e, &mut local);
    match local.bytes() {
        Some(b) => out.extend_from_slice(b),
        None => {
            encode(e, &mut Spill { buf: out });
        }
    }
}

/// The encoding of `e` in an exact allocation.
pub(super) fn to_box(e: &TaskEntry) -> Box<[u8]> {
    let mut local = Local::new();
    encode(e, &mut local);
    match local.bytes() {
        Some(b) => Box::from(b),
        None => {
            let mut out = Vec::new();
            encode(e, &mut Spill { buf: &mut out });
            out.into_boxed_slice()
        }
    }
}

/// The first two bytes of the plain form. The full form starts with the
/// task id as a varint, which is never these: they would be a zero group
/// after a continued one, and varints are written in their shortest form.
const PLAIN: [u8; 2] = [0x80, 0x00];

/// The events of a task that completed on its first attempt: type, status
/// before and after, attempt. Their stage is 0 and they carry no extra.
const PLAIN_EVENTS: [(EventType, Option<TaskStatus>, Option<TaskStatus>, u32); 4] = [
    (EventType::Created, None, Some(TaskStatus::Pending), 0),
    (
        EventType::Claimed,
        Some(TaskStatus::Pending),
        Some(TaskStatus::Running),
        1,
    ),
    (EventType::Started, None, None, 1),
    (
        EventType::Completed,
        Some(TaskStatus::Running),
        Some(TaskStatus::Completed),
        1,
    ),
];

fn encode(e: &TaskEntry, w: &mut impl Sink) {
    if is_plain(e) {
        plain(e, w);
    } else {
        fields(e, w);
    }
}

/// Whether `e` (shrunk, see `slot::shrink`) is a top-level task that
/// completed on its first attempt with nothing else happening: all of its
/// fields but a few numbers, times and names are then known, and the plain
/// form writes only those (about 20 values instead of 80).
fn is_plain(e: &TaskEntry) -> bool {
    let t = &e.task;
    let task = t.kind == TaskKind::Async
        && t.status == TaskStatus::Completed
        && t.stage == 0
        && t.result.is_some()
        && t.error.is_none()
        && t.cron.is_none()
        && t.retry_count == 0
        && t.start_time.is_some()
        && t.worker.is_none()
        && t.tag.is_none()
        && t.parent_id.is_none()
        && t.root_id.is_none()
        && t.total_children == 0
        && t.completed_children == 0
        && t.context.is_none()
        && t.requires.is_empty()
        && t.dedup_key.is_none()
        && t.on_failure == OnChildFailure::Deliver
        && t.attempt == 1
        && t.current_stage_name.is_none()
        && t.progress_text.is_none()
        && t.progress_percent.is_none()
        && t.last_event_time.is_none()
        && t.last_event_type.is_none()
        && e.round.is_none()
        && e.suspend_reason.is_none()
        && e.interruptions == 0;
    let events = e.events.len() == PLAIN_EVENTS.len()
        && e.events
            .iter()
            .zip(PLAIN_EVENTS)
            .all(|(ev, (ty, from, to, attempt))| {
                ev.ty == ty
                    && ev.from == from
                    && ev.to == to
                    && ev.attempt == attempt
                    && ev.stage == 0
                    && ev.extra.is_none()
            });
    let attempt = match &e.attempts[..] {
        [a] => {
            a.task_id == TaskId(0)
                && a.number == 0
                && a.ended_at.is_some()
                && a.outcome == Some(AttemptOutcome::Completed)
                && a.error.is_none()
                && !a.timed_out
        }
        _ => false,
    };
    task && events && attempt
}

/// The plain form of an entry [`is_plain`] accepts.
fn plain(e: &TaskEntry, w: &mut impl Sink) {
    let t = &e.task;
    w.raw(&PLAIN);
    w.u64(t.id.0);
    w.str(&t.name);
    w.u64(zigzag(t.priority));
    w.json(&t.payload);
    w.json(t.result.as_ref().unwrap_or(&Value::Null));
    w.u64(t.max_retries.into());
    w.u64(t.timeout_ms);
    w.u64(t.retry_interval_ms);
    w.u64(t.next_run_time);
    w.u64(t.start_time.unwrap_or(0));
    w.u64(t.last_active_time);
    for ev in &e.events {
        w.u64(ev.time);
        w.u64(ev.seq.into());
    }
    for a in &e.attempts {
        w.str(&a.worker);
        w.u64(a.started_at);
        w.u64(a.ended_at.unwrap_or(0));
    }
}

/// Reads the plain form (after its first two bytes), filling in what it leaves out.
fn read_plain(r: &mut Reader<'_>) -> R<TaskEntry> {
    let id = TaskId(r.u64()?);
    let name = Arc::from(r.str()?);
    let priority = unzigzag(r.u64()?)?;
    let payload = r.json()?;
    let result = Some(r.json()?);
    let max_retries = r.u32()?;
    let timeout_ms = r.u64()?;
    let retry_interval_ms = r.u64()?;
    let next_run_time = r.u64()?;
    let start_time = Some(r.u64()?);
    let last_active_time = r.u64()?;
    let mut events = crate::engine::EventRows::with_capacity(PLAIN_EVENTS.len());
    for (ty, from, to, attempt) in PLAIN_EVENTS {
        events.push(EventRow {
            time: r.u64()?,
            seq: r.u32()?,
            attempt,
            stage: 0,
            ty,
            from,
            to,
            extra: None,
        });
    }
    let mut attempts = crate::engine::Attempts::with_capacity(1);
    attempts.push(Attempt {
        task_id: TaskId(0),
        number: 0,
        worker: Arc::from(r.str()?),
        started_at: r.u64()?,
        ended_at: Some(r.u64()?),
        outcome: Some(AttemptOutcome::Completed),
        error: None,
        timed_out: false,
    });
    let task = Task {
        id,
        name,
        kind: TaskKind::Async,
        status: TaskStatus::Completed,
        stage: 0,
        priority,
        payload,
        result,
        error: None,
        cron: None,
        max_retries,
        retry_count: 0,
        timeout_ms,
        retry_interval_ms,
        next_run_time,
        created_at: 0,
        start_time,
        last_active_time,
        worker: None,
        tag: None,
        parent_id: None,
        root_id: None,
        total_children: 0,
        completed_children: 0,
        context: None,
        requires: Vec::new(),
        dedup_key: None,
        on_failure: OnChildFailure::Deliver,
        attempt: 1,
        current_stage_name: None,
        progress_text: None,
        progress_percent: None,
        last_event_time: None,
        last_event_type: None,
    };
    if !r.0.is_empty() {
        return Err(Bad);
    }
    Ok(TaskEntry::new(task, events, attempts))
}

fn fields(e: &TaskEntry, w: &mut impl Sink) {
    let t = &e.task;
    w.u64(t.id.0);
    w.str(&t.name);
    w.u8(match t.kind {
        TaskKind::Async => 0,
        TaskKind::Cron => 1,
    });
    w.u8(t.status as u8);
    w.u64(t.stage.into());
    w.u64(zigzag(t.priority));
    w.json(&t.payload);
    w.opt(t.result.as_ref(), |w, v| w.json(v));
    w.opt_str(t.error.as_deref());
    w.opt_str(t.cron.as_deref());
    w.u64(t.max_retries.into());
    w.u64(t.retry_count.into());
    w.u64(t.timeout_ms);
    w.u64(t.retry_interval_ms);
    w.u64(t.next_run_time);
    w.u64(t.created_at);
    w.opt(t.start_time, |w, v| w.u64(v));
    w.u64(t.last_active_time);
    w.opt_str(t.worker.as_deref());
    w.opt_str(t.tag.as_deref());
    w.opt(t.parent_id, |w, v| w.u64(v.0));
    w.opt(t.root_id, |w, v| w.u64(v.0));
    w.u64(t.total_children.into());
    w.u64(t.completed_children.into());
    w.opt(t.context.as_deref(), |w, v| w.bytes(v));
    w.u64(t.requires.len() as u64);
    for r in &t.requires {
        w.str(r);
    }
    w.opt_str(t.dedup_key.as_deref());
    w.u8(match t.on_failure {
        OnChildFailure::Deliver => 0,
        OnChildFailure::FailParent => 1,
    });
    w.u64(t.attempt.into());
    w.opt_str(t.current_stage_name.as_deref());
    w.opt_str(t.progress_text.as_deref());
    w.opt(t.progress_percent, |w, v| w.u8(v));
    w.opt(t.last_event_time, |w, v| w.u64(v));
    w.opt(t.last_event_type, |w, v| w.u8(v as u8));
    w.u64(e.events.len() as u64);
    for ev in &e.events {
        w.u64(ev.time);
        w.u64(ev.seq.into());
        w.u64(ev.attempt.into());
        w.u64(ev.stage.into());
        w.u8(ev.ty as u8);
        w.opt(ev.from, |w, v| w.u8(v as u8));
        w.opt(ev.to, |w, v| w.u8(v as u8));
        w.opt(ev.extra.as_deref(), |w, x| w.blob(x));
    }
    w.u64(e.attempts.len() as u64);
    for a in &e.attempts {
        w.u64(a.task_id.0);
        w.u64(a.number.into());
        w.str(&a.worker);
        w.u64(a.started_at);
        w.opt(a.ended_at, |w, v| w.u64(v));
        w.opt(a.outcome, |w, v| w.u8(v as u8));
        w.opt_str(a.error.as_deref());
        w.u8(u8::from(a.timed_out));
    }
    w.opt(e.round.as_deref(), |w, r| w.blob(r));
    w.opt_str(e.suspend_reason.as_deref());
    w.u64(e.interruptions.into());
}

/// Reads an entry written by [`to_box`]; `None` if the bytes are not one.
pub(super) fn read(bytes: &[u8]) -> Option<TaskEntry> {
    match bytes.strip_prefix(&PLAIN) {
        Some(rest) => read_plain(&mut Reader(rest)).ok(),
        None => read_entry(&mut Reader(bytes)).ok(),
    }
}

/// Malformed bytes.
struct Bad;

type R<T> = Result<T, Bad>;

fn read_entry(r: &mut Reader<'_>) -> R<TaskEntry> {
    let task = Task {
        id: TaskId(r.u64()?),
        name: Arc::from(r.str()?),
        kind: match r.u8()? {
            0 => TaskKind::Async,
            1 => TaskKind::Cron,
            _ => return Err(Bad),
        },
        status: status(r.u8()?)?,
        stage: r.u32()?,
        priority: unzigzag(r.u64()?)?,
        payload: r.json()?,
        result: r.opt(Reader::json)?,
        error: r.opt_string()?,
        cron: r.opt_string()?,
        max_retries: r.u32()?,
        retry_count: r.u32()?,
        timeout_ms: r.u64()?,
        retry_interval_ms: r.u64()?,
        next_run_time: r.u64()?,
        created_at: r.u64()?,
        start_time: r.opt(Reader::u64)?,
        last_active_time: r.u64()?,
        worker: r.opt(|r| r.str().map(Arc::from))?,
        tag: r.opt_string()?,
        parent_id: r.opt(|r| r.u64().map(TaskId))?,
        root_id: r.opt(|r| r.u64().map(TaskId))?,
        total_children: r.u32()?,
        completed_children: r.u32()?,
        context: r.opt(|r| r.bytes().map(<[u8]>::to_vec))?,
        requires: {
            let n = r.len()?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(r.str()?.to_owned());
            }
            v
        },
        dedup_key: r.opt_string()?,
        on_failure: match r.u8()? {
            0 => OnChildFailure::Deliver,
            1 => OnChildFailure::FailParent,
            _ => return Err(Bad),
        },
        attempt: r.u32()?,
        current_stage_name: r.opt_string()?,
        progress_text: r.opt_string()?,
        progress_percent: r.opt(Reader::u8)?,
        last_event_time: r.opt(Reader::u64)?,
        last_event_type: r.opt(|r| event_type(r.u8()?))?,
    };
    let n = r.len()?;
    let mut events = crate::engine::EventRows::with_capacity(n);
    for _ in 0..n {
        events.push(EventRow {
            time: r.u64()?,
            seq: r.u32()?,
            attempt: r.u32()?,
            stage: r.u32()?,
            ty: event_type(r.u8()?)?,
            from: r.opt(|r| status(r.u8()?))?,
            to: r.opt(|r| status(r.u8()?))?,
            extra: r.opt(|r| r.blob::<EventExtra>().map(Box::new))?,
        });
    }
    let n = r.len()?;
    let mut attempts = crate::engine::Attempts::with_capacity(n);
    for _ in 0..n {
        attempts.push(Attempt {
            task_id: TaskId(r.u64()?),
            number: r.u32()?,
            worker: Arc::from(r.str()?),
            started_at: r.u64()?,
            ended_at: r.opt(Reader::u64)?,
            outcome: r.opt(|r| outcome(r.u8()?))?,
            error: r.opt_string()?,
            timed_out: match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(Bad),
            },
        });
    }
    let entry = TaskEntry {
        task,
        events,
        attempts,
        round: r.opt(|r| r.blob::<Round>().map(Box::new))?,
        suspend_reason: r.opt_string()?,
        interruptions: r.u32()?,
    };
    if r.0.is_empty() {
        Ok(entry)
    } else {
        Err(Bad)
    }
}

fn zigzag(v: i32) -> u64 {
    u64::from(((v << 1) ^ (v >> 31)) as u32)
}

fn unzigzag(v: u64) -> R<i32> {
    let v = u32::try_from(v).map_err(|_| Bad)?;
    Ok(((v >> 1) as i32) ^ -((v & 1) as i32))
}

fn status(b: u8) -> R<TaskStatus> {
    TaskStatus::ALL.get(usize::from(b)).copied().ok_or(Bad)
}

fn event_type(b: u8) -> R<EventType> {
    EventType::ALL.get(usize::from(b)).copied().ok_or(Bad)
}

fn outcome(b: u8) -> R<AttemptOutcome> {
    use AttemptOutcome as O;
    [
        O::Completed,
        O::Failed,
        O::Timeout,
        O::Paused,
        O::Suspended,
        O::Interrupted,
    ]
    .get(usize::from(b))
    .copied()
    .ok_or(Bad)
}

/// Where [`fields`] writes: the primitives, and the compound forms built on them.
trait Sink: Sized {
    fn u8(&mut self, v: u8);
    fn u64(&mut self, v: u64);
    fn raw(&mut self, b: &[u8]);

    #[inline]
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.raw(b);
    }

    #[inline]
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    /// JSON text, with `null` (the common payload and result) as an empty text.
    fn json(&mut self, v: &Value);

    /// A rare nested value, as a length-prefixed postcard blob.
    fn blob<T: serde::Serialize>(&mut self, v: &T) {
        let bytes = postcard::to_allocvec(v).unwrap_or_default();
        self.bytes(&bytes);
    }

    #[inline]
    fn opt<T>(&mut self, v: Option<T>, f: impl FnOnce(&mut Self, T)) {
        match v {
            None => self.u8(0),
            Some(x) => {
                self.u8(1);
                f(self, x);
            }
        }
    }

    #[inline]
    fn opt_str(&mut self, v: Option<&str>) {
        self.opt(v, Self::str);
    }
}

/// Writes into a buffer on the stack, where the cursor stays in a register
/// (stores into a `Vec` make the compiler reload its length after each byte).
/// An entry that does not fit is marked and written again through [`Spill`].
struct Local {
    buf: [u8; LOCAL],
    pos: usize,
    overflow: bool,
}

impl Local {
    fn new() -> Local {
        Local {
            buf: [0; LOCAL],
            pos: 0,
            overflow: false,
        }
    }

    /// What was written, unless it did not fit.
    fn bytes(&self) -> Option<&[u8]> {
        (!self.overflow).then(|| &self.buf[..self.pos])
    }

    /// Whether `n` more bytes fit; marks the overflow when not.
    #[inline]
    fn fits(&mut self, n: usize) -> bool {
        if self.pos + n <= LOCAL {
            return true;
        }
        self.spill();
        false
    }

    /// Gives up on the stack buffer: [`to_box`] starts again through [`Spill`].
    /// The cursor restarts so that later writes stay in bounds.
    fn spill(&mut self) {
        self.overflow = true;
        self.pos = 0;
    }
}

impl Sink for Local {
    // Each primitive checks the room it needs once, through `get_mut`; the
    // writes after that are into a fixed-size place the compiler can see.
    #[inline]
    fn u8(&mut self, v: u8) {
        match self.buf.get_mut(self.pos) {
            Some(b) => {
                *b = v;
                self.pos += 1;
            }
            None => self.spill(),
        }
    }

    #[inline]
    fn u64(&mut self, v: u64) {
        if v < 0x80 {
            return self.u8(v as u8);
        }
        let room = self
            .buf
            .get_mut(self.pos..self.pos + 10)
            .and_then(|r| <&mut [u8; 10]>::try_from(r).ok());
        match room {
            Some(out) => self.pos += varint10(v, out),
            None => self.spill(),
        }
    }

    #[inline]
    fn raw(&mut self, b: &[u8]) {
        match self.buf.get_mut(self.pos..self.pos + b.len()) {
            Some(dst) => {
                dst.copy_from_slice(b);
                self.pos += b.len();
            }
            None => self.spill(),
        }
    }

    /// The text is written after room for the longest length prefix, then
    /// moved up behind the prefix it turns out to need.
    fn json(&mut self, v: &Value) {
        if v.is_null() {
            self.u64(0);
            return;
        }
        if !self.fits(10) {
            return;
        }
        let start = self.pos + 10;
        let mut rest = &mut self.buf[start..];
        let room = rest.len();
        if serde_json::to_writer(&mut rest, v).is_err() {
            // Too long for the stack buffer (or, never for a `Value`, not
            // serializable): the whole entry is written again by `Spill`.
            self.spill();
            return;
        }
        let len = room - rest.len();
        self.pos += varint(len as u64, &mut self.buf[self.pos..]);
        self.buf.copy_within(start..start + len, self.pos);
        self.pos += len;
    }
}

/// Appends to a vector, for entries too large for [`Local`].
struct Spill<'a> {
    buf: &'a mut Vec<u8>,
}

impl Sink for Spill<'_> {
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    fn u64(&mut self, v: u64) {
        let mut b = [0u8; 10];
        let n = varint(v, &mut b);
        self.buf.extend_from_slice(&b[..n]);
    }

    fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// Written in place, then its length is put in front of it.
    fn json(&mut self, v: &Value) {
        if v.is_null() {
            self.u64(0);
            return;
        }
        let at = self.buf.len();
        if serde_json::to_writer(&mut *self.buf, v).is_err() {
            self.buf.truncate(at);
            self.buf.extend_from_slice(b"null");
        }
        let mut len = [0u8; 10];
        let n = varint((self.buf.len() - at) as u64, &mut len);
        self.buf.splice(at..at, len[..n].iter().copied());
    }
}

/// [`varint`] into exactly the room the longest one needs, so that no write
/// is checked.
#[inline]
fn varint10(mut v: u64, out: &mut [u8; 10]) -> usize {
    for (i, b) in out.iter_mut().enumerate() {
        if v < 0x80 {
            *b = v as u8;
            return i + 1;
        }
        *b = (v as u8) | 0x80;
        v >>= 7;
    }
    10 // unreachable: a u64 takes at most 10 groups of 7 bits
}

/// Writes `v` as a LEB128 varint at the start of `out` (at least 10 bytes
/// long); returns its length.
#[inline]
fn varint(mut v: u64, out: &mut [u8]) -> usize {
    let mut i = 0;
    while v >= 0x80 {
        out[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    out[i] = v as u8;
    i + 1
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> R<u8> {
        let (&b, rest) = self.0.split_first().ok_or(Bad)?;
        self.0 = rest;
        Ok(b)
    }

    fn u64(&mut self) -> R<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f).checked_shl(shift).ok_or(Bad)?;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Bad)
    }

    fn u32(&mut self) -> R<u32> {
        u32::try_from(self.u64()?).map_err(|_| Bad)
    }

    fn len(&mut self) -> R<usize> {
        let n = usize::try_from(self.u64()?).map_err(|_| Bad)?;
        // A length can never exceed what is left: refuses absurd allocations.
        if n <= self.0.len() {
            Ok(n)
        } else {
            Err(Bad)
        }
    }

    fn bytes(&mut self) -> R<&'a [u8]> {
        let n = self.len()?;
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(b)
    }

    fn str(&mut self) -> R<&'a str> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Bad)
    }

    fn opt_string(&mut self) -> R<Option<String>> {
        self.opt(|r| r.str().map(str::to_owned))
    }

    fn json(&mut self) -> R<Value> {
        let b = self.bytes()?;
        if b.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(b).map_err(|_| Bad)
    }

    fn blob<T: serde::de::DeserializeOwned>(&mut self) -> R<T> {
        postcard::from_bytes(self.bytes()?).map_err(|_| Bad)
    }

    /// An optional value: a tag byte, then the value if the tag is 1.
    fn opt<T>(&mut self, f: impl FnOnce(&mut Self) -> R<T>) -> R<Option<T>> {
        match self.u8()? {
            0 => Ok(None),
            1 => f(self).map(Some),
            _ => Err(Bad),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::codec::ChildOutcome;
    use serde_json::json;

    /// An entry with every optional part present and awkward values.
    fn full() -> TaskEntry {
        let mut round = Round::new(vec![TaskId(7), TaskId(9)]);
        round.outcomes.insert(
            TaskId(7),
            ChildOutcome::Completed(json!({"x": [1, 2.5, null]})),
        );
        let task = Task {
            id: TaskId(u64::MAX),
            name: "näme".into(),
            kind: TaskKind::Cron,
            status: TaskStatus::Suspended,
            stage: 3,
            priority: i32::MIN,
            payload: json!({"a": "b", "n": -1}),
            result: Some(Value::Null),
            error: Some("boom".into()),
            cron: Some("*/5 * * * *".into()),
            max_retries: 4,
            retry_count: 2,
            timeout_ms: u64::MAX,
            retry_interval_ms: 1500,
            next_run_time: u64::MAX - 1,
            created_at: 0,
            start_time: Some(12),
            last_active_time: 99,
            worker: Some("w-1".into()),
            tag: Some("t".into()),
            parent_id: Some(TaskId(1)),
            root_id: Some(TaskId(0)),
            total_children: 2,
            completed_children: 1,
            context: Some(vec![0, 255, 7]),
            requires: vec!["gpu".into(), String::new()],
            dedup_key: Some("k".into()),
            on_failure: OnChildFailure::FailParent,
            attempt: 2,
            current_stage_name: Some("s".into()),
            progress_text: Some(String::new()),
            progress_percent: Some(100),
            last_event_time: Some(5),
            last_event_type: Some(EventType::Checkpoint),
        };
        let events = vec![
            EventRow {
                time: 1,
                seq: 0,
                attempt: 0,
                stage: 0,
                ty: EventType::Created,
                from: Some(TaskStatus::Pending),
                to: Some(TaskStatus::Pending),
                extra: None,
            },
            EventRow {
                time: u64::MAX,
                seq: u32::MAX,
                attempt: u32::MAX,
                stage: 3,
                ty: EventType::Checkpoint,
                from: None,
                to: None,
                extra: Some(Box::new(EventExtra {
                    message: Some("m".into()),
                    metadata: json!({"code": "c", "deep": {"k": [true]}}),
                })),
            },
        ];
        let attempts = vec![
            Attempt {
                task_id: TaskId(0),
                number: 0,
                worker: "w-0".into(),
                started_at: 3,
                ended_at: Some(4),
                outcome: Some(AttemptOutcome::Interrupted),
                error: Some("stopped".into()),
                timed_out: true,
            },
            Attempt {
                task_id: TaskId(u64::MAX),
                number: 2,
                worker: "w-1".into(),
                started_at: 12,
                ended_at: None,
                outcome: None,
                error: None,
                timed_out: false,
            },
        ];
        TaskEntry {
            task,
            events: events.into(),
            attempts: attempts.into(),
            round: Some(Box::new(round)),
            suspend_reason: Some("needs a human".into()),
            interruptions: 1,
        }
    }

    #[test]
    fn every_field_survives_the_round_trip() {
        let e = full();
        let mut out = Vec::new();
        write(&e, &mut out);
        assert_eq!(read(&out), Some(e));
    }

    /// A payload that fits the stack buffer, one whose text alone does not,
    /// and one that fits only until later fields overflow it: the bytes are the
    /// same either way (`Local` or `Spill`), and they read back.
    #[test]
    fn json_round_trips_on_the_stack_and_spilled() {
        let long = "x".repeat(LOCAL * 2);
        let near = "y".repeat(LOCAL - 120);
        for payload in [json!({"a": [1, 2.5, "z"]}), json!(long), json!(near)] {
            let mut e = full();
            e.task.payload = payload.clone();
            e.task.result = Some(payload);
            let mut out = Vec::new();
            write(&e, &mut out);
            let mut spilled = Vec::new();
            fields(&e, &mut Spill { buf: &mut spilled });
            assert_eq!(out, spilled);
            assert_eq!(&*to_box(&e), &out[..]);
            assert_eq!(read(&out), Some(e));
        }
    }

    /// A task that completed on its first attempt, as `shrink` leaves it.
    fn plain_entry() -> TaskEntry {
        let mut e = full();
        let t = &mut e.task;
        (t.kind, t.status, t.stage, t.retry_count, t.attempt) =
            (TaskKind::Async, TaskStatus::Completed, 0, 0, 1);
        (t.error, t.cron, t.tag, t.dedup_key) = (None, None, None, None);
        (t.current_stage_name, t.progress_text) = (None, None);
        (t.parent_id, t.root_id, t.worker, t.context) = (None, None, None, None);
        (t.total_children, t.completed_children) = (0, 0);
        (t.progress_percent, t.last_event_time, t.last_event_type) = (None, None, None);
        t.requires.clear();
        t.on_failure = OnChildFailure::Deliver;
        e.events = PLAIN_EVENTS
            .iter()
            .enumerate()
            .map(|(i, &(ty, from, to, attempt))| EventRow {
                time: i as u64 * 300,
                seq: 1000 + i as u32 * 7,
                attempt,
                stage: 0,
                ty,
                from,
                to,
                extra: None,
            })
            .collect();
        e.attempts = [Attempt {
            task_id: TaskId(0),
            number: 0,
            worker: "default-1".into(),
            started_at: 300,
            ended_at: Some(900),
            outcome: Some(AttemptOutcome::Completed),
            error: None,
            timed_out: false,
        }]
        .into_iter()
        .collect();
        (e.round, e.suspend_reason, e.interruptions) = (None, None, 0);
        e
    }

    #[test]
    fn a_plain_entry_takes_the_short_form_and_reads_back() {
        let e = plain_entry();
        assert!(is_plain(&e));
        let mut out = Vec::new();
        write(&e, &mut out);
        assert!(out.starts_with(&PLAIN));
        let mut long = Vec::new();
        fields(&e, &mut Spill { buf: &mut long });
        assert!(out.len() < long.len(), "{} vs {}", out.len(), long.len());
        assert_eq!(&*to_box(&e), &out[..]);
        assert_eq!(read(&out), Some(e.clone()));
        // The full form of the same entry still reads (snapshots of version 2).
        assert_eq!(read(&long), Some(e));
        // A full form whose id is 0 starts with a zero byte, not the marker.
        let mut zero = full();
        zero.task.id = TaskId(0);
        let mut out = Vec::new();
        write(&zero, &mut out);
        assert!(!out.starts_with(&PLAIN));
        assert_eq!(read(&out), Some(zero));
    }

    /// Each thing the plain form leaves out, changed alone, sends the entry
    /// to the full form, which keeps it.
    #[test]
    fn an_entry_unlike_the_plain_one_in_any_way_keeps_every_field() {
        type Change = fn(&mut TaskEntry);
        let changes: Vec<Change> = vec![
            |e| e.task.kind = TaskKind::Cron,
            |e| e.task.status = TaskStatus::PermanentlyFailed,
            |e| e.task.stage = 1,
            |e| e.task.result = None,
            |e| e.task.error = Some("e".into()),
            |e| e.task.cron = Some("* * * * *".into()),
            |e| e.task.retry_count = 1,
            |e| e.task.start_time = None,
            |e| e.task.worker = Some("w".into()),
            |e| e.task.tag = Some("t".into()),
            |e| e.task.parent_id = Some(TaskId(3)),
            |e| e.task.root_id = Some(TaskId(3)),
            |e| e.task.total_children = 1,
            |e| e.task.completed_children = 1,
            |e| e.task.context = Some(vec![1]),
            |e| e.task.requires = vec!["gpu".into()],
            |e| e.task.dedup_key = Some("k".into()),
            |e| e.task.on_failure = OnChildFailure::FailParent,
            |e| e.task.attempt = 2,
            |e| e.task.current_stage_name = Some("s".into()),
            |e| e.task.progress_text = Some("p".into()),
            |e| e.task.progress_percent = Some(5),
            |e| e.task.last_event_time = Some(1),
            |e| e.task.last_event_type = Some(EventType::Completed),
            |e| e.round = Some(Box::new(Round::new(vec![TaskId(5)]))),
            |e| e.suspend_reason = Some("r".into()),
            |e| e.interruptions = 1,
            |e| {
                e.events.pop();
            },
            |e| e.events[1].ty = EventType::Started,
            |e| e.events[0].from = Some(TaskStatus::Pending),
            |e| e.events[2].to = Some(TaskStatus::Running),
            |e| e.events[3].attempt = 2,
            |e| e.events[2].stage = 1,
            |e| {
                e.events[0].extra = Some(Box::new(EventExtra {
                    message: Some("m".into()),
                    metadata: Value::Null,
                }))
            },
            |e| e.attempts[0].task_id = TaskId(9),
            |e| e.attempts[0].number = 4,
            |e| e.attempts[0].ended_at = None,
            |e| e.attempts[0].outcome = Some(AttemptOutcome::Failed),
            |e| e.attempts[0].error = Some("x".into()),
            |e| e.attempts[0].timed_out = true,
            |e| {
                let a = e.attempts[0].clone();
                e.attempts.push(a);
            },
        ];
        for (i, change) in changes.into_iter().enumerate() {
            let mut e = plain_entry();
            change(&mut e);
            assert!(!is_plain(&e), "change {i}");
            let mut out = Vec::new();
            write(&e, &mut out);
            assert!(!out.starts_with(&PLAIN), "change {i}");
            assert_eq!(read(&out), Some(e), "change {i}");
        }
    }

    /// In both forms: every truncation and an extra byte are refused.
    #[test]
    fn cut_or_extended_bytes_are_refused_without_panicking() {
        for e in [full(), plain_entry()] {
            let mut out = Vec::new();
            write(&e, &mut out);
            for cut in 0..out.len() {
                assert_eq!(read(&out[..cut]), None, "cut at {cut} of {}", out.len());
            }
            out.push(0);
            assert_eq!(read(&out), None, "a trailing byte");
        }
    }
}
