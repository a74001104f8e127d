//! The synchronization primitives of fibflow's hand-written protocols: the
//! park/wake protocol of idle workers (`runtime::idle`), the log's group
//! commit (`log::commit`) and its tail reservation (`log::completion`). They
//! are std's, parking_lot's and crossbeam's in a normal build, and [loom]'s
//! when the crate is built with `RUSTFLAGS="--cfg fibflow_loom"` (the
//! `.ci/loom` run), so that loom can explore every interleaving of those
//! protocols.
//!
//! The cfg is fibflow's own rather than the customary `loom`: tokio, a
//! dependency, has `cfg(loom)` code of its own that does not build outside its
//! repository.
//!
//! Only the protocols' own state goes through here. The ready queues
//! (crossbeam-skiplist and `runtime::ready`) and the mapped bytes stay outside
//! loom's view, so the loom models stand in for them.
//!
//! [loom]: https://docs.rs/loom

#[cfg(not(fibflow_loom))]
pub(crate) use crossbeam::sync::{Parker, Unparker};
#[cfg(not(fibflow_loom))]
pub(crate) use parking_lot::Mutex;
#[cfg(not(fibflow_loom))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(fibflow_loom))]
pub(crate) use std::{thread, thread_local};

#[cfg(fibflow_loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(fibflow_loom)]
pub(crate) use loom::{thread, thread_local};
#[cfg(fibflow_loom)]
pub(crate) use loom_shim::{Mutex, Parker, Unparker};

#[cfg(fibflow_loom)]
mod loom_shim {
    use loom::sync::{Arc, Condvar};
    use std::sync::PoisonError;

    /// parking_lot's `lock()` (no poisoning) over loom's mutex.
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }

    /// crossbeam's `Parker`: one token, kept if `unpark` comes before `park`.
    #[derive(Debug, Default)]
    pub(crate) struct Parker {
        inner: Arc<Token>,
    }

    #[derive(Debug, Default)]
    struct Token {
        set: loom::sync::Mutex<bool>,
        cond: Condvar,
    }

    /// Wakes the [`Parker`] it came from.
    #[derive(Clone, Debug)]
    pub(crate) struct Unparker {
        inner: Arc<Token>,
    }

    impl Parker {
        pub(crate) fn new() -> Self {
            Parker::default()
        }

        /// Blocks until the token is set, then takes it.
        pub(crate) fn park(&self) {
            let mut set = self
                .inner
                .set
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            while !*set {
                set = self
                    .inner
                    .cond
                    .wait(set)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            *set = false;
        }

        /// Owned, where crossbeam lends one: callers clone it either way.
        pub(crate) fn unparker(&self) -> Unparker {
            Unparker {
                inner: self.inner.clone(),
            }
        }
    }

    impl Unparker {
        /// Sets the token and wakes the parked thread, if any.
        pub(crate) fn unpark(&self) {
            *self
                .inner
                .set
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = true;
            self.inner.cond.notify_one();
        }
    }
}

/// Helpers of the `loom_model` tests.
#[cfg(all(test, fibflow_loom))]
pub(crate) mod model {
    /// Runs `f` under every interleaving loom explores, up to
    /// `LOOM_MAX_PREEMPTIONS` preemptions (3 when unset).
    pub(crate) fn check(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = Some(3);
        }
        builder.check(f);
    }

    /// Runs `work(input)` for each of `inputs` at once: the first on the
    /// model's own thread, each other on a thread of its own; returns when
    /// all have.
    pub(crate) fn on_threads<T: Copy + Send + 'static>(
        inputs: &[T],
        work: impl Fn(T) + Clone + Send + 'static,
    ) {
        let Some((&first, rest)) = inputs.split_first() else {
            return;
        };
        let threads: Vec<_> = rest
            .iter()
            .map(|&input| {
                let work = work.clone();
                loom::thread::spawn(move || work(input))
            })
            .collect();
        work(first);
        for t in threads {
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}
