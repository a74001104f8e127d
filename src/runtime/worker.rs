//! Worker threads: take the best ready task, claim it, run its handler, record
//! the outcome. Also the timer thread's handling of due tasks and attempts.

use super::context::{AttemptCtl, ContextInner, TaskContext};
use super::dispatch::{Place, Queue, ReadyItem};
use super::error::{Error, Result};
use super::ready::ReadyEntry;
use super::registry::{ChildSpec, Handler, HandlerResult, Outcome, Registered};
use super::submit::normalize_tags;
use super::Core;
use crate::codec::{FailKind, NewTask, Record, TaskId, TaskKind};
use crate::engine::schedule::{next_round, RetryStrategy};
use crate::engine::{Shard, TaskEntry, TaskStatus};
use crate::sync::Parker;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// How many queued entries a worker looks at per queue in one pick. Entries of
/// handlers at their cap or unregistered are moved aside as they are met
/// (`Dispatcher::hold`), so a later pick does not meet them again.
const SCAN_LIMIT: usize = 256;

/// A worker's handle on its core (see [`ContextInner::core`]).
type Handle = Arc<std::sync::Weak<Core>>;

/// What one worker thread keeps between its tasks.
struct Mine {
    core: Handle,
    /// The context of this worker's last attempt, reused for its next one
    /// when nothing else holds it (a handler may keep a clone): a no-op task
    /// then costs no allocation and no free for its context.
    spare: std::cell::Cell<Option<Arc<ContextInner>>>,
}

/// A claimed task, ready to run.
pub(crate) struct Job {
    ctx: TaskContext,
    kind: TaskKind,
    cron: Option<String>,
    next_run_time: u64,
}

/// The body of worker thread `w`.
pub(crate) fn worker_main(core: &Arc<Core>, w: usize, parker: &Parker) {
    let pool = core.workers[w].pool;
    // This worker's handle on the core, shared by the contexts it makes.
    let me = Mine {
        core: Arc::new(Arc::downgrade(core)),
        spare: std::cell::Cell::new(None),
    };
    while !core.stopping.load(Ordering::Acquire) {
        let job = match core
            .try_take(w, &me)
            .or_else(|| core.spin_for_work(w, pool, &me))
        {
            Some(job) => job,
            None => {
                core.dispatch.idle.go_idle(pool, w);
                match core.try_take(w, &me) {
                    Some(job) => {
                        core.dispatch.idle.leave_idle(pool, w);
                        job
                    }
                    None => {
                        // An idle worker keeps nothing of its last task alive
                        // (its payload, or a registration since replaced).
                        drop(me.spare.take());
                        parker.park();
                        core.dispatch.idle.woke(pool, w);
                        continue;
                    }
                }
            }
        };
        core.dispatch.wake_if_more(pool);
        me.spare.set(Some(core.run_job(w, job)));
    }
    core.drop_handed(w);
}

impl Core {
    /// Spins briefly before parking: a futex sleep and wake costs several
    /// microseconds, more than a short burst of polling when work keeps coming.
    fn spin_for_work(&self, w: usize, pool: usize, me: &Mine) -> Option<Job> {
        self.dispatch.idle.start_searching(pool);
        let backoff = crossbeam::utils::Backoff::new();
        let mut found = None;
        while found.is_none() && !backoff.is_completed() && self.gate_open() {
            backoff.snooze();
            found = self.try_take(w, me);
        }
        self.dispatch.idle.stop_searching(pool);
        found.or_else(|| self.try_take(w, me))
    }

    /// Takes the best task this worker may run, with its slots, and claims it.
    fn try_take(&self, w: usize, me: &Mine) -> Option<Job> {
        let pool = &self.dispatch.pools[self.workers[w].pool];
        // Bounds the looks that find nothing to run (a hand-off that comes
        // back, a slot lost to a handed task). A stale entry dropped (its task
        // deleted, or queued again since) costs none: a queue may hold any
        // number of them, and returning with work still queued would park
        // this worker with nothing left to wake it.
        let mut tries = 64;
        while tries > 0 {
            tries -= 1;
            // A slot and a task another worker handed this one come first.
            if self.global.handed(w) {
                match self.take_handed(w, me) {
                    Some(job) => return Some(job),
                    None => continue,
                }
            }
            // Read before the gate: a pause after it changes the count, so
            // an entry taken before a pause is not claimed after the resume
            // that follows (a worse task, taken while better ones were being
            // submitted to the paused manager, would run first).
            let pauses = self.pauses.load(Ordering::Acquire);
            if !self.gate_open() || self.global.is_full() {
                return None;
            }
            // Read after the gate, each look: lists read before it would
            // miss a queue created meanwhile (the first task of a new
            // requirement, submitted to a paused manager, say).
            // A guard, not an Arc clone: workers would otherwise contend on one refcount.
            let lists = pool.queues.load();
            let (queues, others) = (&lists.served, &lists.others);
            let binding = self.global.binding();
            if binding {
                // A cap that can bind is taken before the look: a worker
                // holding an entry it took while it waits for a slot would
                // hide that entry from the worker that gets the slot, which
                // would run a worse one (SPEC §3). Entries out of their
                // queues then belong to slot holders only, which run them.
                let queued = queues.iter().any(|q| !q.set.is_empty())
                    || others
                        .iter()
                        .any(|q| !q.set.is_empty() && self.receivers(q).next().is_some());
                if !queued {
                    return None;
                }
                if let Err(hit) = self.global.start_look(w) {
                    if hit {
                        self.dispatch.idle.wake_each_pool();
                    }
                    if self.global.handed(w) {
                        continue;
                    }
                    return None;
                }
            }
            let Some((qi, place, reg)) = self.pick(queues, others) else {
                if binding && self.global.end_look_empty(w) {
                    self.dispatch.idle.wake_each_pool();
                }
                if self.global.handed(w) {
                    continue;
                }
                return None;
            };
            if let Some(q) = qi.checked_sub(queues.len()).and_then(|i| others.get(i)) {
                self.hand_off(w, q, place, reg, pauses);
                continue;
            }
            let queue = &*queues[qi];
            let slot = if binding {
                self.global.end_look_with_task(w)
            } else {
                self.global.try_acquire(w)
            };
            if !slot {
                // Handed a task meanwhile: that one comes first. The entry
                // goes back before the slot looked with is uncounted.
                let item = place.item(reg.name.clone());
                self.give_back(&reg, Some((queue, item)));
                if self.global.unreserve() {
                    self.dispatch.idle.wake_each_pool();
                }
                continue;
            }
            match self.claim(w, place, reg, me, pauses) {
                Ok(job) => return Some(job),
                Err(reg) => {
                    if self.unclaimed(w, queue, place, &reg, pauses) {
                        return None;
                    }
                    tries += 1;
                }
            }
        }
        None
    }

    /// A claim of the entry at `place` failed: frees the slots taken for it.
    /// Paused (or paused and resumed since the entry was taken), the task
    /// waits in its queue and this returns true; otherwise it is no longer
    /// runnable and its entry is dropped.
    fn unclaimed(
        &self,
        w: usize,
        queue: &Queue,
        place: Place,
        reg: &Arc<Registered>,
        pauses: u64,
    ) -> bool {
        let paused =
            self.paused.load(Ordering::Acquire) || self.pauses.load(Ordering::Acquire) != pauses;
        let unrun = paused.then(|| (queue, place.item(reg.name.clone())));
        self.give_back(reg, unrun);
        if self.global.release(w) {
            self.dispatch.idle.wake_each_pool();
        }
        paused
    }

    /// Claims what another worker handed this one (see [`Core::hand_off`]).
    fn take_handed(&self, w: usize, me: &Mine) -> Option<Job> {
        let h = self.global.take_handed(w)?;
        match self.claim(w, h.place, h.reg, me, h.pauses) {
            Ok(job) => Some(job),
            Err(reg) => {
                self.unclaimed(w, &h.queue, h.place, &reg, h.pauses);
                None
            }
        }
    }

    /// Worker `w` stops: nothing is handed to it any more, and what it was
    /// handed and did not claim goes back.
    pub(crate) fn drop_handed(&self, w: usize) {
        while let Some(h) = self.global.retire(w) {
            self.put_back(&h);
            if self.global.release(w) {
                self.dispatch.idle.wake_each_pool();
            }
        }
    }

    /// The best task was in a queue this worker's pool does not serve, with
    /// a slot of its handler taken for it: counts a global slot for it and
    /// hands both to a worker of a pool that serves the queue and holds no
    /// slot (with a binding global cap, the slot this worker `w` took), so that the slot goes to the best task whichever pool can run
    /// it (SPEC §3). Left to that pool's own workers, a slot freed by a
    /// worker of another pool went to the best task of that worker's pool,
    /// which loops into its next look first. If no such worker is free
    /// (any more), the entry goes back.
    fn hand_off(&self, w: usize, q: &Arc<Queue>, place: Place, reg: Arc<Registered>, pauses: u64) {
        // A binding cap's slot, which this worker took before its look, is
        // the one handed on (otherwise no global slot is counted).
        if self.global.binding() {
            self.global.disown(w);
        }
        let mut h = super::Handoff {
            queue: q.clone(),
            place,
            reg,
            pauses,
        };
        for to in self.receivers(q) {
            match self.global.hand(to, h) {
                Ok(()) => {
                    self.dispatch.idle.unpark(to);
                    return;
                }
                Err(back) => h = back,
            }
        }
        self.put_back(&h);
        if self.global.unreserve() {
            self.dispatch.idle.wake_each_pool();
        }
    }

    /// Puts a handoff's entry back in its queue and frees its handler slot
    /// (the global slot is the caller's to free).
    fn put_back(&self, h: &super::Handoff) {
        let item = h.place.item(h.reg.name.clone());
        self.give_back(&h.reg, Some((&h.queue, item)));
    }

    /// The workers that serve queue `q` and run no task.
    fn receivers<'a>(&'a self, q: &'a Queue) -> impl Iterator<Item = usize> + 'a {
        (0..self.workers.len()).filter(move |&w| {
            q.servers.contains(&self.workers[w].pool) && self.global.can_receive(w)
        })
    }

    /// Frees a slot of `reg` (putting `unrun` back in its queue first), and
    /// returns one held entry of the handler to its queue.
    pub(super) fn give_back(&self, reg: &Registered, unrun: Option<(&Queue, ReadyItem)>) {
        let gate = reg
            .slots
            .tight(self.workers.len())
            .then(|| reg.slots.gate.lock());
        if let Some((queue, item)) = unrun {
            queue.set.insert(item);
        }
        let cap_was_hit = reg.slots.release();
        self.dispatch.release_held(&reg.name, 1);
        drop(gate);
        if cap_was_hit {
            self.dispatch.idle.wake_each_pool();
        }
    }

    /// Removes the best runnable entry from the queues this worker's pool
    /// serves, holding one of its handler's slots.
    ///
    /// The slot is taken *before* the entry is removed. Taken after, two workers
    /// could race for a handler's last slot, each holding a different entry of it,
    /// and the loser of the better entry would put it back while the winner ran
    /// the worse one: a per-handler cap would then break priority order.
    ///
    /// `others` are the queues the pool does not serve: an entry of one of
    /// them is the best only if a cap can bind (the global one, or its
    /// handler's) and a worker that serves it holds no slot; its index then
    /// counts on from the end of `queues`, and the caller hands it off.
    fn pick(
        &self,
        queues: &[Arc<Queue>],
        others: &[Arc<Queue>],
    ) -> Option<(usize, Place, Arc<Registered>)> {
        let binding = self.global.binding();
        loop {
            // The best entry is removed through its own handle, which saves the
            // search that removing by key would repeat.
            let mut best = None;
            for (qi, q) in queues.iter().chain(others).enumerate() {
                let other = qi >= queues.len();
                if other && (q.set.is_empty() || self.receivers(q).next().is_none()) {
                    continue;
                }
                // Each look starts again at the queue's front rather than
                // stepping on past the entries just moved aside: a task queued
                // meanwhile ahead of them (a timer round queuing a better
                // one) would be behind an iterator's position, and the scan
                // would take a worse entry after it.
                for _ in 0..SCAN_LIMIT {
                    let Some(entry) = q.set.front() else { break };
                    // One lookup: the registration is cloned only for the
                    // entry that stops this queue's scan.
                    let free = self.registry.with(&entry.value().name, |r| {
                        if r.slots.is_full() {
                            Err(r.slots.clone())
                        } else {
                            Ok(r.clone())
                        }
                    });
                    match free {
                        // Another pool's task, which that pool's workers
                        // take themselves when no cap can bind.
                        Some(Ok(reg))
                            if other && !binding && !reg.slots.tight(self.workers.len()) =>
                        {
                            break;
                        }
                        Some(Ok(reg)) => {
                            if best
                                .as_ref()
                                .is_none_or(|(_, b, _): &(usize, ReadyEntry<'_>, _)| {
                                    entry.value() < b.value()
                                })
                            {
                                best = Some((qi, entry, reg));
                            }
                            break;
                        }
                        // At its cap: held until one of its slots frees.
                        Some(Err(slots)) => {
                            let _gate = slots.tight(self.workers.len()).then(|| slots.gate.lock());
                            self.dispatch.hold(q, &entry, || slots.is_full());
                        }
                        // Not registered: held until it is, under its gate
                        // (see `Core::register`).
                        None => {
                            let name = &entry.value().name;
                            let slots = self.registry.slots_of(name);
                            let _gate = slots.gate.lock();
                            self.dispatch
                                .hold(q, &entry, || !self.registry.contains(name));
                        }
                    }
                }
            }
            let (qi, entry, reg) = best?;
            if reg.slots.tight(self.workers.len()) {
                let slots = reg.slots.clone();
                let gate = slots.gate.lock();
                if !reg.slots.try_acquire() {
                    continue; // its last slot went to another worker: scan again
                }
                // A slot freed since the scan may have put a better entry of
                // this handler back in a queue, this one or another pool's
                // (`release_held` runs under this gate): take the best now.
                if let Some((qi, item)) = self
                    .take_best_of(queues, others, &reg.name)
                    .or_else(|| entry.remove().then(|| (qi, entry.value().place())))
                {
                    drop(gate);
                    return Some((qi, item, reg));
                }
                drop(gate);
                self.give_back(&reg, None);
                continue;
            }
            // The cap cannot bind, so no gate is needed.
            if !reg.slots.try_acquire() {
                continue; // the cap was lowered since the scan
            }
            if entry.remove() {
                return Some((qi, entry.value().place(), reg));
            }
            // Another worker took or held the entry (or the cap was lowered).
            self.give_back(&reg, None);
        }
    }

    /// Removes the best entry of handler `name` within the scan limit of
    /// each queue (`others` only where a worker that serves it holds no
    /// slot); its index counts as in [`Core::pick`].
    fn take_best_of(
        &self,
        queues: &[Arc<Queue>],
        others: &[Arc<Queue>],
        name: &str,
    ) -> Option<(usize, Place)> {
        loop {
            let mut best: Option<(usize, ReadyEntry<'_>)> = None;
            for (qi, q) in queues.iter().chain(others).enumerate() {
                if qi >= queues.len() && self.receivers(q).next().is_none() {
                    continue;
                }
                let first = q.set.first_of(SCAN_LIMIT, |v| &*v.name == name);
                if let Some(e) = first {
                    if best.as_ref().is_none_or(|(_, b)| e.value() < b.value()) {
                        best = Some((qi, e));
                    }
                }
            }
            let (qi, e) = best?;
            if e.remove() {
                return Some((qi, e.value().place()));
            }
        }
    }

    /// Claims the task of the queue entry at `place` under its shard lock. If the task is no longer runnable,
    /// the registration comes back, so that a claim costs no reference count
    /// of its own (a line every worker writes).
    fn claim(
        &self,
        w: usize,
        place: Place,
        reg: Arc<Registered>,
        me: &Mine,
        pauses: u64,
    ) -> std::result::Result<Job, Arc<Registered>> {
        let id = place.id;
        // `now` stamps the claim; windows count from `base`, `now` rounded up,
        // so none ends early.
        let (now, base) = self.clock.now_ms_floor_ceil();
        let _wakes = self.dispatch.defer_wakes();
        let mut shard = self.store.lock(id);
        // `stop` sets `stopping` before it records running attempts as
        // interrupted under this lock, so a worker that passed the gate just
        // before `stop` cannot claim a task that `stop` has just given back.
        // (The dropped queue entry is rebuilt from the table at the next open.)
        if self.stopping.load(Ordering::Acquire) {
            return Err(reg);
        }
        // Likewise `pause`: a task submitted after `pause()` returned reaches
        // its shard after the flag, so a worker that passed the gate before the
        // pause cannot claim it, nor after a `resume` since (the count of
        // pauses moved). `try_take` puts the entry back.
        if self.paused.load(Ordering::Acquire) || self.pauses.load(Ordering::Acquire) != pauses {
            return Err(reg);
        }
        let Some(e) = shard.live(id) else {
            return Err(reg);
        };
        if e.task.status != TaskStatus::Pending {
            return Err(reg);
        }
        // An entry queued before the task was queued again with another
        // ready time or priority (paused and resumed, say) is stale: it would
        // run the task from its old place. The entry `make_ready` queued with
        // the task's current values is in a queue too.
        if e.task.next_run_time != place.ready_at || e.task.priority != place.priority {
            return Err(reg);
        }
        if e.task.next_run_time > now {
            // Queued when due, so either a stale entry of a task rescheduled
            // since (the timer already holds it) or a system clock set back
            // since: the timer queues it again when due, so a clock step never
            // leaves a task pending with no entry anywhere.
            self.timer.schedule(e.task.next_run_time, id);
            return Err(reg);
        }
        let attempt = e.task.attempt + 1;
        let worker = self.workers[w].name.clone();
        let record = Record::Claim {
            id,
            attempt,
            worker: worker.clone(),
            at_ms: now,
        };
        match self.store.commit(&mut shard, record) {
            // A claim is not acknowledged to anyone, so nobody waits for its LSN.
            Ok((applied, mut lsn)) => self.settle(&mut shard, id, applied, &mut lsn),
            Err(_) => return Err(reg),
        }
        match shard.live(id) {
            Some(e) => {
                let job = Self::job(e, reg, worker, base, me);
                // Published before the shard's lock is let go: `stop` passes
                // every shard's lock before it reads the slots, so an attempt
                // claimed before `stopping` was set is always found there.
                self.timer.set_slot(w, Some(job.ctx.inner.clone()));
                Ok(job)
            }
            None => Err(reg),
        }
    }

    fn job(e: &TaskEntry, reg: Arc<Registered>, worker: Arc<str>, base: u64, me: &Mine) -> Job {
        let t = &e.task;
        let deadline = if t.timeout_ms == 0 {
            u64::MAX
        } else {
            base.saturating_add(t.timeout_ms)
        };
        let hb = reg
            .options
            .heartbeat_window
            .map_or(0, super::clock::ceil_ms);
        let ctl = AttemptCtl::new(t.id, t.attempt, deadline, hb, base);
        let inner = ContextInner {
            core: Arc::clone(&me.core),
            ctl,
            reg,
            payload: t.payload.clone(),
            result: t.result.clone(),
            context: t.context.clone(),
            stage: t.stage,
            retry_count: t.retry_count,
            worker,
            parent_id: t.parent_id,
            root_id: t.root_id,
        };
        let inner = match me.spare.take() {
            Some(mut spare) => match Arc::get_mut(&mut spare) {
                Some(ctx) => {
                    *ctx = inner;
                    spare
                }
                None => Arc::new(inner),
            },
            None => Arc::new(inner),
        };
        Job {
            ctx: TaskContext { inner },
            kind: t.kind,
            cron: t.cron.clone(),
            next_run_time: t.next_run_time,
        }
    }

    /// Runs the handler of a claimed task and records its outcome. Returns
    /// the attempt's context for the worker's next attempt to reuse.
    fn run_job(self: &Arc<Self>, w: usize, job: Job) -> Arc<ContextInner> {
        // `claim` published the attempt in this worker's timer slot.
        let inner = job.ctx.inner.clone();
        let result = self.call(&job);
        // No timeout fires once the handler is done; the slot stays until
        // the outcome is recorded, so that a `stop` meanwhile finds the
        // attempt (and interrupts it, or sees it finished).
        inner.ctl.done.store(true, Ordering::Release);
        self.finish(w, &job, result);
        self.timer.set_slot(w, None);
        // The global slot first: while this worker still holds it, it can
        // receive no handoff, and a handler slot freed before would go to a
        // worse task if this worker was the only one that can run the best
        // (`Core::receivers`).
        if self.global.release(w) {
            self.dispatch.idle.wake_each_pool();
        }
        if inner.ctl.take_slot() {
            self.give_back(&inner.reg, None);
        }
        drop(job);
        inner
    }

    fn call(&self, job: &Job) -> HandlerResult {
        let outcome = match &job.ctx.inner.reg.handler {
            Handler::Sync(f) => catch_unwind(AssertUnwindSafe(|| f(&job.ctx))),
            Handler::Async(f) => {
                let inner = job.ctx.inner.clone();
                // Making the future runs the closure's synchronous part, which
                // may panic too: it is inside the guard.
                catch_unwind(AssertUnwindSafe(|| {
                    let fut = self.in_runtime(|| f(job.ctx.clone()));
                    self.block_on(async move {
                        tokio::select! {
                            // Cancellation first: a handler that was cancelled
                            // while busy between awaits never runs past its next
                            // await (an unbiased select polls in random order).
                            biased;
                            () = inner.ctl.notify.notified() => Err("the attempt was cancelled at an await point (timeout or stop)".into()),
                            r = fut => r,
                        }
                    })
                    .unwrap_or_else(|| Err("the task manager is shutting down".into()))
                }))
            }
        };
        outcome.unwrap_or_else(|panic| {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".to_owned());
            // SPEC §4: the panic message is the error.
            Err(msg.into())
        })
    }

    /// The retry delay for the next retry of `e`, from the handler's strategy, else
    /// the pool's, else the task's fixed interval.
    fn retry_at(
        &self,
        e: &TaskEntry,
        reg: Option<&Registered>,
        pool: Option<usize>,
        now: u64,
    ) -> u64 {
        // A pool's strategy is for handlers that set neither a strategy nor
        // an interval of their own (`Pool::retry_strategy`).
        let handler_interval = reg.is_some_and(|r| r.options.retry_interval.is_some());
        let strategy = reg
            .and_then(|r| r.options.retry)
            .or_else(|| {
                pool.filter(|_| !handler_interval)
                    .and_then(|p| self.config.pools.get(p))
                    .and_then(|p| p.retry)
            })
            .unwrap_or_else(|| {
                RetryStrategy::fixed(std::time::Duration::from_millis(e.task.retry_interval_ms))
            });
        let d = strategy.delay(e.task.retry_count, rand::random::<f64>());
        // From `now` rounded up: a retry never comes before its interval.
        self.clock
            .now_ms_ceil()
            .max(now)
            .saturating_add(super::clock::ceil_ms(d))
    }

    /// Records the outcome of an attempt; a stale one (timed out, paused) is dropped.
    fn finish(&self, w: usize, job: &Job, result: HandlerResult) {
        let id = job.ctx.id();
        let attempt = job.ctx.attempt();
        let now = self.now();
        let _wakes = self.dispatch.defer_wakes();
        let mut shard = self.store.lock(id);
        let Some(e) = shard.live(id) else { return };
        if e.task.status != TaskStatus::Running || e.task.attempt != attempt {
            return; // stale: the manager drops its own late writes silently
        }
        // The outcome's record, and the children a spawn creates with it.
        let result = match result {
            Ok(Outcome::Complete(v)) if !crate::codec::json_depth_ok(&v) => {
                Err(crate::codec::too_deep("the handler's result").into())
            }
            other => other,
        };
        let (first, rest): (Record, Vec<Record>) = match result {
            Ok(Outcome::Complete(value)) => {
                let next_run_ms = self.cron_next(job, now);
                (
                    Record::Complete {
                        id,
                        attempt,
                        result: value,
                        next_run_ms,
                        at_ms: now,
                    },
                    Vec::new(),
                )
            }
            Ok(Outcome::Spawn { children, context }) => {
                match self.children(&shard, e, children, now) {
                    Ok(subs) => {
                        let list = subs.iter().map(|c| (c.id, c.name.to_string())).collect();
                        let spawn = Record::Spawn {
                            id,
                            attempt,
                            children: list,
                            context,
                            at_ms: now,
                        };
                        let subs = subs.into_iter().map(|c| Record::Submit(Box::new(c)));
                        (spawn, subs.collect())
                    }
                    Err(err) => (
                        self.fail_record(
                            e,
                            Some(&job.ctx.inner.reg),
                            w,
                            err.to_string(),
                            FailKind::Error,
                            now,
                        ),
                        Vec::new(),
                    ),
                }
            }
            Ok(Outcome::Suspend { reason, context }) if !reason.trim().is_empty() => (
                Record::Suspend {
                    id,
                    attempt,
                    reason,
                    context,
                    at_ms: now,
                },
                Vec::new(),
            ),
            Ok(Outcome::Suspend { .. }) => {
                let err =
                    "Suspension requires a non-empty reason: return Outcome::Suspend with a reason"
                        .to_owned();
                let fail =
                    self.fail_record(e, Some(&job.ctx.inner.reg), w, err, FailKind::Error, now);
                (fail, Vec::new())
            }
            Err(err) => {
                let err = err.to_string();
                let fail =
                    self.fail_record(e, Some(&job.ctx.inner.reg), w, err, FailKind::Error, now);
                (fail, Vec::new())
            }
        };
        self.commit_outcome(&mut shard, first, rest, &job.ctx.inner.reg, w);
    }

    fn fail_record(
        &self,
        e: &TaskEntry,
        reg: Option<&Registered>,
        w: usize,
        error: String,
        kind: FailKind,
        now: u64,
    ) -> Record {
        let pool = self.workers.get(w).map(|x| x.pool);
        Record::Fail {
            id: e.task.id,
            attempt: e.task.attempt,
            error,
            kind,
            retry_at_ms: self.retry_at(e, reg, pool, now),
            at_ms: now,
        }
    }

    /// Records an attempt's outcome; one too large for the log fails the
    /// attempt instead, retried with the attempt's registration `reg` and the
    /// strategy of worker `w`'s pool like any other failure.
    fn commit_outcome(
        &self,
        shard: &mut Shard,
        first: Record,
        rest: Vec<Record>,
        reg: &Registered,
        w: usize,
    ) {
        let id = first.task_id();
        let result = if rest.is_empty() {
            // The common case, without a batch's vectors.
            self.store
                .commit(shard, first)
                .map(|(a, mut lsn)| self.settle(shard, id, a, &mut lsn))
        } else {
            // The children first: their `task_created` events come before the
            // parent's `task_subtasks_created` that names them (SPEC §5, and
            // fib-flow's order), as events sort by (time, id).
            let batch: Vec<Record> = rest.into_iter().chain(std::iter::once(first)).collect();
            let ids: Vec<TaskId> = batch.iter().map(Record::task_id).collect();
            self.store
                .commit_batch(shard, batch)
                .map(|(applied, mut lsn)| {
                    for (a, id) in applied.into_iter().zip(ids) {
                        if let Some(a) = a {
                            self.settle(shard, id, a, &mut lsn);
                        }
                    }
                })
        };
        match result {
            Ok(()) => {}
            // The outcome does not fit in one log record (a huge result or a spawn
            // of very many children): nothing changed, so fail the attempt instead.
            Err(Error::Log(e @ crate::log::LogError::RecordTooLarge { .. })) => {
                let Some(e_task) = shard.live(id) else {
                    return;
                };
                let error = format!(
                    "the handler's outcome is too large to record ({e}); return a smaller result or spawn children in several rounds"
                );
                let id = e_task.task.id;
                let record =
                    self.fail_record(e_task, Some(reg), w, error, FailKind::Error, self.now());
                if let Ok((a, mut lsn)) = self.store.commit(shard, record) {
                    self.settle(shard, id, a, &mut lsn);
                }
            }
            Err(_) => {} // the log is poisoned: every later write reports it
        }
    }

    /// The next round of a cron task after a success.
    fn cron_next(&self, job: &Job, now: u64) -> Option<u64> {
        if job.kind != TaskKind::Cron {
            return None;
        }
        let s = self.cron(job.cron.as_deref()?).ok()?;
        next_round(&s, self.config.catch_up, job.next_run_time, now)
    }

    /// Builds the children of a spawn: option from the spec, else the child
    /// handler's registration, else the parent.
    fn children(
        &self,
        _shard: &Shard,
        parent: &TaskEntry,
        specs: Vec<ChildSpec>,
        now: u64,
    ) -> Result<Vec<NewTask>> {
        if specs.is_empty() {
            return Err(Error::InvalidOption(
                "a spawn needs at least one child".into(),
            ));
        }
        let p = &parent.task;
        specs
            .into_iter()
            .map(|c| {
                let reg = self
                    .registry
                    .get(&c.name)
                    .ok_or_else(|| Error::NoHandler(c.name.clone()))?;
                let o = &reg.options;
                let ms = super::clock::ceil_ms;
                // Added to the handler's, as a submission's are: a child
                // never runs on a worker that lacks what its handler needs.
                let requires = match c.requires {
                    Some(r) => o.requires.iter().cloned().chain(r).collect(),
                    None if !o.requires.is_empty() => o.requires.clone(),
                    None => p.requires.clone(),
                };
                if let Some(t) = &c.tag {
                    super::error::check_task_tag(t)?;
                }
                if !crate::codec::json_depth_ok(&c.payload) {
                    return Err(Error::InvalidOption(crate::codec::too_deep(&format!(
                        "the payload of child `{}`",
                        c.name
                    ))));
                }
                Ok(NewTask {
                    id: self.store.alloc_id(Some(p.id)),
                    name: reg.name.clone(),
                    kind: TaskKind::Async,
                    payload: c.payload,
                    priority: c.priority.or(o.priority).unwrap_or(p.priority),
                    tag: c.tag.or_else(|| p.tag.clone()),
                    timeout_ms: c.timeout.or(o.timeout).map_or(p.timeout_ms, ms),
                    max_retries: c.max_retries.or(o.max_retries).unwrap_or(p.max_retries),
                    retry_interval_ms: c
                        .retry_interval
                        .or(o.retry_interval)
                        .map_or(p.retry_interval_ms, ms),
                    requires: normalize_tags(requires)?,
                    dedup_key: None,
                    cron: None,
                    next_run_ms: now,
                    parent_id: Some(p.id),
                    root_id: Some(p.root_id.unwrap_or(p.id)),
                    on_failure: c.on_failure,
                    created_ms: now,
                })
            })
            .collect()
    }

    /// The timer found an attempt past its deadline or heartbeat window.
    ///
    /// The attempt fails with its own registration's retry strategy (SPEC §8:
    /// a running attempt keeps the handler it started with, as a failure
    /// reported by the handler does), and its handler slot frees now, as it
    /// does on a pause (SPEC §3): a sync handler may run on past its timeout,
    /// and it must not hold its handler type at its cap meanwhile.
    pub(crate) fn attempt_due(&self, inner: &ContextInner) {
        let ctl = &inner.ctl;
        let now = self.now();
        let kind = if now >= ctl.deadline_ms {
            FailKind::TimeoutTotal
        } else {
            FailKind::TimeoutHeartbeat
        };
        {
            let _wakes = self.dispatch.defer_wakes();
            let mut shard = self.store.lock(ctl.id);
            let owned = shard
                .live(ctl.id)
                .filter(|e| e.task.status == TaskStatus::Running && e.task.attempt == ctl.attempt);
            let Some(e) = owned else {
                // Paused (or otherwise ended) while its handler runs on: SPEC §4,
                // it never times out, and the timer must not find it due again
                // at every round (that was a busy loop until the handler returned).
                ctl.detach();
                return;
            };
            let error = match kind {
                // fib-flow's texts (its timeout sweep), which its tests match.
                FailKind::TimeoutHeartbeat => "Task heartbeat timed out".to_owned(),
                _ => "Task exceeded total timeout limit".to_owned(),
            };
            let worker = e.task.worker.clone();
            let w = self
                .workers
                .iter()
                .position(|x| Some(&x.name) == worker.as_ref())
                .unwrap_or(usize::MAX);
            let record = self.fail_record(e, Some(&inner.reg), w, error, kind, now);
            self.commit_outcome(&mut shard, record, Vec::new(), &inner.reg, w);
            ctl.cancel(if kind == FailKind::TimeoutTotal { 1 } else { 2 });
        }
        // After the shard's lock, as on a pause; the worker does not free the
        // slot again when the handler returns.
        if ctl.take_slot() {
            self.give_back(&inner.reg, None);
        }
    }
}
