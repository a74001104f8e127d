//! Concurrency stress (black box): many submitters and control callers at once
//! (hot reload, pause, delete, stop). Each test runs its body under a watchdog, so
//! a deadlock fails with a message instead of hanging the suite.

mod common;

use common::{eventually, within, XorShift, PATIENCE};
use fibflow::{
    Durability, Error, Handler, HandlerOptions, Pool, SubmitOptions, TaskFilter, TaskId,
    TaskManager, TaskStatus,
};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, Weak};
use std::time::{Duration, Instant};

fn noop(mgr: &TaskManager, name: &str) {
    mgr.register(name, |_| Ok(json!(null).into())).unwrap();
}

fn all_terminal_or(mgr: &TaskManager, ok: &[TaskStatus]) -> Vec<(TaskId, TaskStatus)> {
    mgr.list_tasks(&TaskFilter::all())
        .into_iter()
        .filter(|t| !ok.contains(&t.status))
        .map(|t| (t.id, t.status))
        .collect()
}

// ---------------------------------------------------------------------------
// 1. Dedup keys under concurrent submit / submit_batch.
// ---------------------------------------------------------------------------

fn dedup_round(mgr: Arc<TaskManager>, seed: u64, threads: usize, keys: usize) {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let mgr = mgr.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut rng = XorShift::new(seed * 131 + t as u64);
                let mut order: Vec<usize> = (0..keys).collect();
                for i in (1..order.len()).rev() {
                    order.swap(i, rng.below(i as u64 + 1) as usize);
                }
                let mut seen: Vec<(usize, TaskId)> = Vec::new();
                barrier.wait();
                let mut i = 0;
                while i < order.len() {
                    if rng.below(3) == 0 {
                        // A batch of up to 8 keys, with one key repeated inside it.
                        let n = (1 + rng.below(8) as usize).min(order.len() - i);
                        let mut chunk: Vec<usize> = order[i..i + n].to_vec();
                        chunk.push(order[i]);
                        let ids = mgr
                            .submit_batch(chunk.iter().map(|&k| {
                                (
                                    "d",
                                    json!(k),
                                    SubmitOptions::new().dedup_key(format!("k{k}")),
                                )
                            }))
                            .expect("submit_batch");
                        assert_eq!(ids.len(), chunk.len());
                        seen.extend(chunk.into_iter().zip(ids));
                        i += n;
                    } else {
                        let k = order[i];
                        let id = mgr
                            .submit_with(
                                "d",
                                json!(k),
                                SubmitOptions::new().dedup_key(format!("k{k}")),
                            )
                            .expect("submit_with");
                        seen.push((k, id));
                        i += 1;
                    }
                }
                seen
            })
        })
        .collect();
    let mut by_key: BTreeMap<usize, BTreeSet<TaskId>> = BTreeMap::new();
    for h in handles {
        for (k, id) in h.join().expect("submitter panicked") {
            by_key.entry(k).or_default().insert(id);
        }
    }
    let bad: Vec<_> = by_key.iter().filter(|(_, ids)| ids.len() != 1).collect();
    assert!(
        bad.is_empty(),
        "seed {seed}: keys mapped to several ids: {bad:?}"
    );
    let tasks = mgr.list_tasks(&TaskFilter::all());
    assert_eq!(
        tasks.len(),
        keys,
        "seed {seed}: {} tasks for {keys} distinct keys",
        tasks.len()
    );
    let distinct: BTreeSet<TaskId> = by_key.values().flatten().copied().collect();
    assert_eq!(distinct.len(), keys, "seed {seed}: two keys share an id");
    for t in &tasks {
        let k = t.payload.as_u64().unwrap() as usize;
        assert_eq!(
            by_key[&k].iter().next(),
            Some(&t.id),
            "seed {seed}: task {} for key {k} is not the id submitters got",
            t.id.0
        );
        assert_eq!(t.dedup_key.as_deref(), Some(format!("k{k}").as_str()));
    }
}

#[test]
fn dedup_concurrent_submitters_one_task_per_key() {
    within("dedup rounds", Duration::from_secs(60), || {
        for seed in 0..8 {
            let mgr = Arc::new(TaskManager::builder().memory().build().unwrap());
            noop(&mgr, "d");
            if seed % 2 == 0 {
                mgr.start().unwrap();
            }
            dedup_round(mgr.clone(), seed, 6, 300);
            if seed % 2 == 0 {
                eventually("all dedup tasks complete", || {
                    all_terminal_or(&mgr, &[TaskStatus::Completed]).is_empty()
                });
            }
            mgr.stop(Duration::from_secs(5)).unwrap();
        }
    });
}

/// A key freed by deleting its task may be taken again, by exactly one new task,
/// even while many threads submit it and others delete.
#[test]
fn dedup_key_reuse_after_concurrent_delete() {
    within("dedup + delete", Duration::from_secs(60), || {
        for seed in 0..4u64 {
            let mgr = Arc::new(TaskManager::builder().memory().build().unwrap());
            noop(&mgr, "d");
            mgr.start().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let deleter = {
                let (mgr, stop) = (mgr.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::Acquire) {
                        n += mgr
                            .delete_tasks(&TaskFilter::all().status(TaskStatus::Completed))
                            .unwrap();
                        std::thread::yield_now();
                    }
                    n
                })
            };
            let subs: Vec<_> = (0..4)
                .map(|t| {
                    let mgr = mgr.clone();
                    std::thread::spawn(move || {
                        let mut rng = XorShift::new(seed * 7 + t);
                        for _ in 0..1500 {
                            let k = rng.below(20);
                            let id = mgr
                                .submit_with(
                                    "d",
                                    json!(k),
                                    SubmitOptions::new().dedup_key(format!("k{k}")),
                                )
                                .unwrap();
                            assert!(id.0 > 0);
                        }
                    })
                })
                .collect();
            for s in subs {
                s.join().expect("submitter panicked");
            }
            stop.store(true, Ordering::Release);
            deleter.join().unwrap();
            eventually("dedup tasks finish", || {
                all_terminal_or(&mgr, &[TaskStatus::Completed]).is_empty()
            });
            // At most one live task per key.
            let mut per_key: HashMap<String, Vec<TaskId>> = HashMap::new();
            for t in mgr.list_tasks(&TaskFilter::all()) {
                per_key
                    .entry(t.dedup_key.clone().unwrap())
                    .or_default()
                    .push(t.id);
            }
            let dup: Vec<_> = per_key.iter().filter(|(_, v)| v.len() > 1).collect();
            assert!(
                dup.is_empty(),
                "seed {seed}: key held by several live tasks: {dup:?}"
            );
            // A fresh submit of every key after the dust settles returns the live
            // task holding it, or creates one.
            for k in 0..20 {
                let id = mgr
                    .submit_with(
                        "d",
                        json!(k),
                        SubmitOptions::new().dedup_key(format!("k{k}")),
                    )
                    .unwrap();
                let t = mgr.get_task(id);
                assert!(
                    t.is_some(),
                    "seed {seed}: dedup returned id {} of a deleted task for k{k}",
                    id.0
                );
            }
            mgr.stop(Duration::from_secs(5)).unwrap();
        }
    });
}

// ---------------------------------------------------------------------------
// 2. Registration races.
// ---------------------------------------------------------------------------

/// `register_many` with the same name twice in one call is refused with a
/// typed error and registers nothing (it locked the name's gate twice and
/// hung until session 15).
#[test]
fn register_many_with_a_repeated_name_is_refused() {
    within("register_many([x, x])", Duration::from_secs(10), || {
        let mgr = TaskManager::builder().memory().build().unwrap();
        let h = || Handler::sync(|_| Ok(json!(1).into()));
        let r = mgr.register_many(vec![
            ("x".into(), h(), HandlerOptions::new()),
            ("y".into(), h(), HandlerOptions::new()),
            ("x".into(), h(), HandlerOptions::new()),
        ]);
        assert!(
            matches!(&r, Err(Error::InvalidOption(m)) if m.contains("`x` appears twice")),
            "{r:?}"
        );
        assert!(mgr.handler_names().is_empty(), "all or none");
    });
}

/// Two threads re-registering the same two handlers in opposite orders
/// (hot reload from two places) must not deadlock.
#[test]
fn concurrent_register_many_in_opposite_orders() {
    let rounds = Arc::new(AtomicU64::new(0));
    let seen = rounds.clone();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        within(
            "register_many [a,b] vs [b,a]",
            Duration::from_secs(10),
            move || {
                let mgr = Arc::new(TaskManager::builder().memory().build().unwrap());
                let h = || Handler::sync(|_| Ok(json!(1).into()));
                let ts: Vec<_> = (0..2)
                    .map(|t| {
                        let mgr = mgr.clone();
                        let rounds = rounds.clone();
                        std::thread::spawn(move || {
                            let names = if t == 0 { ["a", "b"] } else { ["b", "a"] };
                            for _ in 0..20_000 {
                                mgr.register_many(
                                    names
                                        .iter()
                                        .map(|n| (n.to_string(), h(), HandlerOptions::new()))
                                        .collect(),
                                )
                                .unwrap();
                                rounds.fetch_add(1, Ordering::Relaxed);
                            }
                        })
                    })
                    .collect();
                for t in ts {
                    t.join().unwrap();
                }
            },
        )
    }));
    if let Err(p) = r {
        let msg = p.downcast_ref::<String>().cloned().unwrap_or_default();
        panic!(
            "{msg} (after {} register_many calls in all; 40000 planned)",
            seen.load(Ordering::Relaxed)
        );
    }
}

// ---------------------------------------------------------------------------
// 3. Chaos: submitters + manager pause/resume + hot reload + unregister/register
//    + delete of finished tasks. Caps and single execution are tracked inside
//    the handlers. No pause_task here: a paused running task frees its slot by
//    design (SPEC §3) and may then run again while the old handler finishes.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Track {
    live: [AtomicUsize; 2],
    max_live: [AtomicUsize; 2],
    global_live: AtomicUsize,
    max_global: AtomicUsize,
    runs: Mutex<HashMap<u64, usize>>,
    double: Mutex<Vec<u64>>,
    executions: AtomicU64,
}

fn tracked(track: &Arc<Track>, h: usize, spin: bool) -> Handler {
    let track = track.clone();
    Handler::sync(move |ctx| {
        let id = ctx.id().0;
        {
            let mut r = track.runs.lock().unwrap();
            let n = r.entry(id).or_insert(0);
            *n += 1;
            if *n > 1 {
                track.double.lock().unwrap().push(id);
            }
        }
        let l = track.live[h].fetch_add(1, Ordering::SeqCst) + 1;
        track.max_live[h].fetch_max(l, Ordering::SeqCst);
        let g = track.global_live.fetch_add(1, Ordering::SeqCst) + 1;
        track.max_global.fetch_max(g, Ordering::SeqCst);
        track.executions.fetch_add(1, Ordering::Relaxed);
        if spin {
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(200) {
                std::hint::spin_loop();
            }
        } else {
            std::thread::yield_now();
        }
        track.global_live.fetch_sub(1, Ordering::SeqCst);
        track.live[h].fetch_sub(1, Ordering::SeqCst);
        *track.runs.lock().unwrap().get_mut(&id).unwrap() -= 1;
        let fail = ctx.payload()["fail"].as_bool().unwrap_or(false) && ctx.retry_count() == 0;
        if fail {
            return Err("planned failure".into());
        }
        Ok(json!({"ok": id}).into())
    })
}

#[test]
fn chaos_submit_pause_reload_unregister_delete_keeps_caps_and_single_runs() {
    within("chaos", Duration::from_secs(90), || {
        for seed in 0..3u64 {
            chaos_round(seed);
        }
    });
}

fn chaos_round(seed: u64) {
    const CAP0: usize = 2;
    const GLOBAL: usize = 3;
    let mgr = Arc::new(
        TaskManager::builder()
            .memory()
            .max_concurrent_tasks(GLOBAL)
            .pool(Pool::new("gpu").tags(["gpu"]).concurrency(2))
            .build()
            .unwrap(),
    );
    let track = Arc::new(Track::default());
    let opts0 = HandlerOptions::new().max_concurrent_tasks(CAP0);
    let opts1 = HandlerOptions::new().requires(["gpu"]).max_retries(3);
    mgr.register_handler("h0", tracked(&track, 0, true), opts0.clone())
        .unwrap();
    mgr.register_handler("h1", tracked(&track, 1, false), opts1.clone())
        .unwrap();
    mgr.start().unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let submitted = Arc::new(Mutex::new(Vec::<TaskId>::new()));
    let deleted = Arc::new(AtomicU64::new(0));
    let mut submitters = Vec::new();
    for t in 0..4u64 {
        let (mgr, submitted) = (mgr.clone(), submitted.clone());
        submitters.push(std::thread::spawn(move || {
            let mut rng = XorShift::new(seed * 1000 + t);
            let mut no_handler = 0;
            for i in 0..400 {
                let name = if rng.below(2) == 0 { "h0" } else { "h1" };
                let o = SubmitOptions::new().priority(rng.below(5) as i32);
                let payload = json!({"fail": rng.below(6) == 0, "i": i});
                let r = if rng.below(4) == 0 {
                    mgr.submit_batch((0..3).map(|_| (name, payload.clone(), o.clone())))
                } else {
                    mgr.submit_with(name, payload, o).map(|id| vec![id])
                };
                match r {
                    Ok(ids) => submitted.lock().unwrap().extend(ids),
                    // The chaos thread unregisters handlers for a moment (SPEC §8).
                    Err(Error::NoHandler(n)) => {
                        assert_eq!(n, name);
                        no_handler += 1;
                    }
                    Err(e) => panic!("submit failed: {e}"),
                }
            }
            no_handler
        }));
    }
    let mut chaos = Vec::new();
    {
        let (mgr, done, track) = (mgr.clone(), done.clone(), track.clone());
        let (o0, o1) = (opts0.clone(), opts1.clone());
        chaos.push(std::thread::spawn(move || {
            let mut rng = XorShift::new(seed + 99);
            while !done.load(Ordering::Acquire) {
                match rng.below(5) {
                    0 => {
                        mgr.pause();
                        std::thread::yield_now();
                        mgr.resume();
                    }
                    1 => mgr
                        .register_handler("h0", tracked(&track, 0, true), o0.clone())
                        .unwrap(),
                    2 => {
                        mgr.unregister(&["h1"]);
                        std::thread::yield_now();
                        mgr.register_handler("h1", tracked(&track, 1, false), o1.clone())
                            .unwrap();
                    }
                    3 => mgr
                        .register_many(vec![
                            ("h1".into(), tracked(&track, 1, false), o1.clone()),
                            ("h0".into(), tracked(&track, 0, true), o0.clone()),
                        ])
                        .unwrap(),
                    _ => std::thread::yield_now(),
                }
            }
        }));
    }
    {
        let (mgr, done, deleted) = (mgr.clone(), done.clone(), deleted.clone());
        chaos.push(std::thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                let n = mgr
                    .delete_tasks(&TaskFilter::all().status(TaskStatus::Completed).name("h0"))
                    .unwrap();
                deleted.fetch_add(n, Ordering::Relaxed);
                std::thread::park_timeout(Duration::from_millis(1));
            }
        }));
    }
    // Waiters on random submitted tasks while all this happens.
    {
        let (mgr, done, submitted) = (mgr.clone(), done.clone(), submitted.clone());
        chaos.push(std::thread::spawn(move || {
            let mut rng = XorShift::new(seed + 7);
            while !done.load(Ordering::Acquire) {
                let pick = {
                    let s = submitted.lock().unwrap();
                    (!s.is_empty()).then(|| s[rng.below(s.len() as u64) as usize])
                };
                if let Some(id) = pick {
                    match mgr.wait(id, Duration::from_millis(50)) {
                        Ok(t) => assert!(t.status.is_terminal(), "wait returned {:?}", t.status),
                        Err(Error::WaitTimeout { .. } | Error::NotFound(_)) => {}
                        Err(e) => panic!("wait: {e}"),
                    }
                } else {
                    std::thread::yield_now();
                }
            }
        }));
    }
    for s in submitters {
        s.join().expect("submitter panicked");
    }
    done.store(true, Ordering::Release);
    for c in chaos {
        c.join().expect("chaos thread panicked");
    }
    // Final state: registered, resumed.
    mgr.resume();
    mgr.register_many(vec![
        ("h0".into(), tracked(&track, 0, true), opts0.clone()),
        ("h1".into(), tracked(&track, 1, false), opts1.clone()),
    ])
    .unwrap();
    let ids = submitted.lock().unwrap().clone();
    let unique: BTreeSet<TaskId> = ids.iter().copied().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "seed {seed}: duplicate ids handed out"
    );
    let until = Instant::now() + PATIENCE;
    let mut missing = 0;
    for &id in &ids {
        let left = until.saturating_duration_since(Instant::now());
        match mgr.wait(id, left) {
            Ok(t) => assert_eq!(
                t.status,
                TaskStatus::Completed,
                "seed {seed}: task {} ended {:?} ({:?})",
                id.0,
                t.status,
                t.error
            ),
            Err(Error::NotFound(_)) => missing += 1,
            Err(e) => {
                let t = mgr.get_task(id);
                panic!(
                    "seed {seed}: task {} never finished: {e}; now {:?}; waiting_reason {:?}",
                    id.0,
                    t.map(|t| (t.status, t.name.to_string(), t.retry_count)),
                    mgr.waiting_reason(id)
                )
            }
        }
    }
    let double = track.double.lock().unwrap().clone();
    assert!(
        double.is_empty(),
        "seed {seed}: tasks ran twice at once: {double:?}"
    );
    let m0 = track.max_live[0].load(Ordering::SeqCst);
    let mg = track.max_global.load(Ordering::SeqCst);
    assert!(m0 <= CAP0, "seed {seed}: h0 ran {m0} at once, cap {CAP0}");
    assert!(
        mg <= GLOBAL,
        "seed {seed}: {mg} tasks ran at once, global cap {GLOBAL}"
    );
    // Deleted tasks were only completed h0 ones: everything else is still there.
    let left = mgr.list_tasks(&TaskFilter::all()).len() as u64;
    assert_eq!(
        left + missing,
        ids.len() as u64,
        "seed {seed}: {left} tasks left + {missing} deleted != {} submitted",
        ids.len()
    );
    assert_eq!(
        missing,
        deleted.load(Ordering::Relaxed),
        "seed {seed}: delete count"
    );
    mgr.stop(Duration::from_secs(5)).unwrap();
}

// ---------------------------------------------------------------------------
// 4. pause_task / resume_task on random tasks while others submit.
// ---------------------------------------------------------------------------

#[test]
fn pause_task_resume_task_storm_ends_all_completed() {
    within("pause_task storm", Duration::from_secs(90), || {
        for seed in 0..6u64 {
            let mgr = Arc::new(TaskManager::builder().memory().build().unwrap());
            let runs = Arc::new(AtomicU64::new(0));
            {
                let runs = runs.clone();
                mgr.register("p", move |_| {
                    runs.fetch_add(1, Ordering::Relaxed);
                    std::thread::yield_now();
                    Ok(json!(1).into())
                })
                .unwrap();
            }
            mgr.start().unwrap();
            let ids = Arc::new(Mutex::new(Vec::<TaskId>::new()));
            let done = Arc::new(AtomicBool::new(false));
            let subs: Vec<_> = (0..3)
                .map(|_| {
                    let (mgr, ids) = (mgr.clone(), ids.clone());
                    std::thread::spawn(move || {
                        for i in 0..500 {
                            let id = mgr.submit("p", json!(i)).unwrap();
                            ids.lock().unwrap().push(id);
                        }
                    })
                })
                .collect();
            let ctl: Vec<_> = (0..3u64)
                .map(|t| {
                    let (mgr, ids, done) = (mgr.clone(), ids.clone(), done.clone());
                    std::thread::spawn(move || {
                        let mut rng = XorShift::new(seed * 10 + t);
                        let mut errs = 0u64;
                        while !done.load(Ordering::Acquire) {
                            let id = {
                                let v = ids.lock().unwrap();
                                if v.is_empty() {
                                    continue;
                                }
                                v[rng.below(v.len() as u64) as usize]
                            };
                            let r = if rng.below(2) == 0 {
                                mgr.pause_task(id)
                            } else {
                                mgr.resume_task(id, None)
                            };
                            match r {
                                Ok(()) => {}
                                Err(Error::Transition(_)) => errs += 1,
                                Err(e) => {
                                    panic!("control call failed with an unexpected error: {e}")
                                }
                            }
                        }
                        errs
                    })
                })
                .collect();
            for s in subs {
                s.join().expect("submitter panicked");
            }
            done.store(true, Ordering::Release);
            for c in ctl {
                c.join().expect("control thread panicked");
            }
            // Resume whatever ended paused; everything must complete.
            let ids = ids.lock().unwrap().clone();
            let until = Instant::now() + PATIENCE;
            loop {
                for t in mgr.list_tasks(&TaskFilter::all().status(TaskStatus::Paused)) {
                    let _ = mgr.resume_task(t.id, None);
                }
                let left = all_terminal_or(&mgr, &[TaskStatus::Completed]);
                if left.is_empty() {
                    break;
                }
                if Instant::now() > until {
                    let detail: Vec<_> = left
                        .iter()
                        .take(5)
                        .map(|(id, st)| {
                            let t = mgr.get_task(*id).unwrap();
                            let ev: Vec<String> = mgr
                                .events(*id)
                                .unwrap()
                                .iter()
                                .map(|e| format!("{:?}", e.event_type))
                                .collect();
                            format!(
                                "task {} {st:?} attempt {} next_run {} reason {:?} events {ev:?}",
                                id.0,
                                t.attempt,
                                t.next_run_time,
                                mgr.waiting_reason(*id)
                            )
                        })
                        .collect();
                    panic!(
                        "seed {seed}: {} tasks never completed after resume (running() = {}): {detail:#?}",
                        left.len(),
                        mgr.running()
                    );
                }
                std::thread::park_timeout(Duration::from_millis(5));
            }
            assert_eq!(mgr.list_tasks(&TaskFilter::all()).len(), ids.len());
            assert!(runs.load(Ordering::Relaxed) >= ids.len() as u64);
            assert_eq!(
                mgr.running(),
                0,
                "seed {seed}: running() after all completed"
            );
            mgr.stop(Duration::from_secs(5)).unwrap();
        }
    });
}

// ---------------------------------------------------------------------------
// 5. Many waiters on tasks that fail, retry, complete.
// ---------------------------------------------------------------------------

#[test]
fn many_waiters_on_retrying_tasks_agree_with_final_state() {
    within("waiters", Duration::from_secs(60), || {
        for seed in 0..3u64 {
            let mgr = Arc::new(
                TaskManager::builder()
                    .memory()
                    .retry_interval(Duration::from_millis(1))
                    .build()
                    .unwrap(),
            );
            mgr.register_with("r", HandlerOptions::new().max_retries(3), |ctx| {
                // fail_times: 0..=3; 3 means permanently failed (3 executions).
                let f = ctx.payload()["f"].as_u64().unwrap() as u32;
                if ctx.retry_count() < f {
                    assert!(
                        !(f == 2 && ctx.retry_count() == 0),
                        "panicking attempt {}",
                        ctx.attempt()
                    );
                    return Err(format!("fail {}", ctx.retry_count()).into());
                }
                Ok(json!(ctx.retry_count()).into())
            })
            .unwrap();
            let mut rng = XorShift::new(seed);
            let specs: Vec<u64> = (0..300).map(|_| rng.below(4)).collect();
            let ids = mgr
                .submit_batch(
                    specs
                        .iter()
                        .map(|&f| ("r", json!({"f": f}), SubmitOptions::new())),
                )
                .unwrap();
            let ids = Arc::new(ids);
            let barrier = Arc::new(Barrier::new(9));
            let waiters: Vec<_> = (0..8u64)
                .map(|w| {
                    let (mgr, ids, barrier) = (mgr.clone(), ids.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let mut out = Vec::new();
                        barrier.wait();
                        let n = ids.len();
                        for k in 0..n {
                            let id = ids[(k * (w as usize + 1) * 7 + w as usize) % n];
                            let t = mgr
                                .wait(id, PATIENCE)
                                .unwrap_or_else(|e| panic!("wait {}: {e}", id.0));
                            out.push((id, t.status, t.result.clone()));
                        }
                        out
                    })
                })
                .collect();
            barrier.wait();
            mgr.start().unwrap();
            for w in waiters {
                for (id, status, result) in w.join().expect("waiter panicked") {
                    let idx = ids.iter().position(|&x| x == id).unwrap();
                    let f = specs[idx];
                    let want = if f >= 3 {
                        TaskStatus::PermanentlyFailed
                    } else {
                        TaskStatus::Completed
                    };
                    assert_eq!(
                        status, want,
                        "seed {seed}: waiter saw task {} (f={f}) as {status:?}",
                        id.0
                    );
                    if f < 3 {
                        assert_eq!(
                            result,
                            Some(json!(f)),
                            "seed {seed}: result of task {}",
                            id.0
                        );
                    }
                }
            }
            mgr.stop(Duration::from_secs(5)).unwrap();
        }
    });
}

// ---------------------------------------------------------------------------
// 6. Handlers that submit tasks, and handlers that wait on other tasks.
// ---------------------------------------------------------------------------

#[test]
fn handlers_submitting_a_tree_of_tasks_concurrently() {
    within("handler submits", Duration::from_secs(60), || {
        for _round in 0..3 {
            let mgr = Arc::new(TaskManager::builder().memory().build().unwrap());
            let weak: Arc<Mutex<Weak<TaskManager>>> = Arc::new(Mutex::new(Weak::new()));
            *weak.lock().unwrap() = Arc::downgrade(&mgr);
            {
                let weak = weak.clone();
                mgr.register("tree", move |ctx| {
                    let depth = ctx.payload()["d"].as_u64().unwrap();
                    let node = ctx.payload()["n"].as_u64().unwrap();
                    if depth > 0 {
                        let m = weak.lock().unwrap().upgrade().ok_or("manager gone")?;
                        // Children keyed by position: a retry would not duplicate them.
                        let items = (0..3).map(|c| {
                            let n = node * 3 + c + 1;
                            (
                                "tree",
                                json!({"d": depth - 1, "n": n}),
                                SubmitOptions::new().dedup_key(format!("n{n}")),
                            )
                        });
                        m.submit_batch(items)?;
                    }
                    Ok(json!(node).into())
                })
                .unwrap();
            }
            mgr.start().unwrap();
            // 4 roots of depth 5 from 4 threads: each 1+3+...+3^5 = 364 tasks.
            let roots: Vec<_> = (0..4u64)
                .map(|r| {
                    let mgr = mgr.clone();
                    std::thread::spawn(move || {
                        mgr.submit_with(
                            "tree",
                            json!({"d": 5, "n": 1_000_000 * (r + 1)}),
                            SubmitOptions::new().dedup_key(format!("root{r}")),
                        )
                        .unwrap()
                    })
                })
                .collect();
            for r in roots {
                r.join().unwrap();
            }
            let want = 4 * 364;
            eventually("tree of tasks complete", || {
                let all = mgr.list_tasks(&TaskFilter::all());
                all.len() == want && all.iter().all(|t| t.status == TaskStatus::Completed)
            });
            mgr.stop(Duration::from_secs(5)).unwrap();
        }
    });
}

/// Handlers that `wait` for tasks they submitted. With more waiting parents
/// than workers, every worker blocks in `wait` and the children cannot run until
/// the waits time out: the documented way out is the `wait` timeout (or
/// spawning children with `Outcome::Spawn`). This test pins that nothing
/// deadlocks for good: the parents' waits time out, they fail and retry, and
/// eventually all children complete; with fewer parents than workers, the
/// waits succeed.
#[test]
fn handlers_waiting_on_their_own_submissions() {
    within("handler waits", Duration::from_secs(60), || {
        for parents in [2usize, 6] {
            let weak: Arc<Mutex<Weak<TaskManager>>> = Arc::new(Mutex::new(Weak::new()));
            let timeouts = Arc::new(AtomicU64::new(0));
            let workers = 4;
            let mgr = Arc::new(
                TaskManager::builder()
                    .memory()
                    .max_concurrent_tasks(workers)
                    .build()
                    .unwrap(),
            );
            *weak.lock().unwrap() = Arc::downgrade(&mgr);
            noop(&mgr, "child");
            {
                let (weak, timeouts) = (weak.clone(), timeouts.clone());
                mgr.register_with(
                    "parent",
                    HandlerOptions::new().max_retries(100),
                    move |ctx| {
                        let m = weak.lock().unwrap().upgrade().ok_or("manager gone")?;
                        let id = m.submit_with(
                            "child",
                            json!(null),
                            SubmitOptions::new().dedup_key(format!("c{}", ctx.id().0)),
                        )?;
                        match m.wait(id, Duration::from_millis(200)) {
                            Ok(t) => Ok(json!(t.status == TaskStatus::Completed).into()),
                            Err(Error::WaitTimeout { .. }) => {
                                timeouts.fetch_add(1, Ordering::Relaxed);
                                Err("child did not finish in time".into())
                            }
                            Err(e) => Err(e.into()),
                        }
                    },
                )
                .unwrap();
            }
            mgr.start().unwrap();
            let ids = mgr
                .submit_batch((0..parents).map(|_| ("parent", json!(null), SubmitOptions::new())))
                .unwrap();
            for id in ids {
                let t = mgr.wait(id, PATIENCE).expect("parent finished");
                assert_eq!(
                    t.status,
                    TaskStatus::Completed,
                    "parents={parents}: {:?}",
                    t.error
                );
            }
            let to = timeouts.load(Ordering::Relaxed);
            eprintln!("parents={parents}, workers={workers}: {to} wait timeouts inside handlers");
            if parents < workers {
                assert_eq!(
                    to, 0,
                    "with free workers the children should run while parents wait"
                );
            }
            mgr.stop(Duration::from_secs(5)).unwrap();
        }
    });
}

// ---------------------------------------------------------------------------
// 7. stop(deadline) while other threads submit.
// ---------------------------------------------------------------------------

fn stop_round(mgr: Arc<TaskManager>, threads: usize) -> (Vec<TaskId>, fibflow::StopReport) {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let subs: Vec<_> = (0..threads)
        .map(|t| {
            let (mgr, barrier) = (mgr.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                barrier.wait();
                let mut i = 0u64;
                loop {
                    i += 1;
                    let r = if i.is_multiple_of(5) {
                        mgr.submit_batch((0..4).map(|k| ("s", json!(k), SubmitOptions::new())))
                    } else {
                        mgr.submit_with("s", json!(i), SubmitOptions::new().tag(format!("t{t}")))
                            .map(|id| vec![id])
                    };
                    match r {
                        Ok(ids) => acked.extend(ids),
                        Err(Error::Stopped) => break,
                        Err(e) => panic!("submit during stop: expected Stopped, got {e:?}"),
                    }
                }
                // Every later call is refused the same way.
                for _ in 0..3 {
                    match mgr.submit("s", json!(0)) {
                        Err(Error::Stopped) => {}
                        other => panic!("submit after stop: {other:?}"),
                    }
                }
                acked
            })
        })
        .collect();
    barrier.wait();
    // Let the submitters get going, then stop.
    let start = Instant::now();
    while mgr.list_tasks(&TaskFilter::all()).len() < 200 && start.elapsed() < Duration::from_secs(5)
    {
        std::thread::yield_now();
    }
    let report = mgr.stop(Duration::from_millis(200)).expect("stop");
    let mut acked = Vec::new();
    for s in subs {
        acked.extend(s.join().expect("submitter panicked"));
    }
    (acked, report)
}

#[test]
fn stop_while_submitting_in_memory() {
    within(
        "stop while submitting (memory)",
        Duration::from_secs(60),
        || {
            for round in 0..10 {
                let mgr = Arc::new(TaskManager::builder().memory().build().unwrap());
                let slow = round % 2 == 1;
                mgr.register("s", move |ctx| {
                    if slow && ctx.payload().as_u64() == Some(1) {
                        // Past the stop deadline: must be reported as interrupted.
                        let t = Instant::now();
                        while t.elapsed() < Duration::from_millis(400) {
                            if ctx.check().is_err() {
                                break;
                            }
                            std::thread::park_timeout(Duration::from_millis(5));
                        }
                    }
                    Ok(json!(1).into())
                })
                .unwrap();
                mgr.start().unwrap();
                let (acked, report) = stop_round(mgr.clone(), 6);
                let unique: BTreeSet<TaskId> = acked.iter().copied().collect();
                assert_eq!(unique.len(), acked.len(), "round {round}: duplicate ids");
                for id in &acked {
                    assert!(
                        mgr.get_task(*id).is_some(),
                        "round {round}: acknowledged task {} missing",
                        id.0
                    );
                }
                for id in &report.interrupted {
                    let t = mgr.get_task(*id).expect("interrupted task exists");
                    assert_eq!(
                        t.status,
                        TaskStatus::Pending,
                        "round {round}: interrupted task {} is {:?}",
                        id.0,
                        t.status
                    );
                }
                let running = mgr.list_tasks(&TaskFilter::all().status(TaskStatus::Running));
                assert!(
                    running.is_empty(),
                    "round {round}: tasks left running after stop: {:?}",
                    running.iter().map(|t| t.id.0).collect::<Vec<_>>()
                );
                assert!(matches!(mgr.start(), Err(Error::Stopped)));
            }
        },
    );
}

#[test]
fn stop_while_submitting_durable_keeps_every_ack() {
    within(
        "stop while submitting (durable)",
        Duration::from_secs(120),
        || {
            for round in 0..12 {
                let dir = tempfile::tempdir().unwrap();
                let durability = match round % 3 {
                    0 => Durability::Os,
                    1 => Durability::Sync,
                    _ => Durability::Batched {
                        interval: Duration::from_millis(5),
                    },
                };
                let mgr = Arc::new(
                    TaskManager::builder()
                        .dir(dir.path())
                        .durability(durability)
                        .build()
                        .unwrap(),
                );
                mgr.register("s", |_| Ok(json!(1).into())).unwrap();
                mgr.start().unwrap();
                let (acked, _report) = stop_round(mgr.clone(), 6);
                drop(mgr);
                let re = TaskManager::builder()
                    .dir(dir.path())
                    .durability(durability)
                    .build()
                    .unwrap();
                let lost: Vec<u64> = acked
                    .iter()
                    .filter(|id| re.get_task(**id).is_none())
                    .map(|id| id.0)
                    .collect();
                assert!(
                lost.is_empty(),
                "round {round} ({durability:?}): {} of {} acknowledged submits lost after stop + reopen: {:?}",
                lost.len(),
                acked.len(),
                &lost[..lost.len().min(10)]
            );
                let running = re.list_tasks(&TaskFilter::all().status(TaskStatus::Running));
                assert!(running.is_empty());
                re.stop(Duration::from_secs(5)).unwrap();
            }
        },
    );
}

// ---------------------------------------------------------------------------
// 8. Durable directory under concurrent submitters, every durability mode.
// ---------------------------------------------------------------------------

#[test]
fn durable_concurrent_submitters_every_mode_reopen_has_all() {
    within("durable submitters", Duration::from_secs(120), || {
        for (m, durability) in [
            Durability::Sync,
            Durability::Os,
            Durability::Batched {
                interval: Duration::from_millis(3),
            },
        ]
        .into_iter()
        .enumerate()
        {
            let dir = tempfile::tempdir().unwrap();
            let mgr = Arc::new(
                TaskManager::builder()
                    .dir(dir.path())
                    .durability(durability)
                    .segment_size(256 * 1024)
                    .build()
                    .unwrap(),
            );
            let fails = Arc::new(AtomicU64::new(0));
            {
                let fails = fails.clone();
                mgr.register_with("w", HandlerOptions::new().max_retries(2), move |ctx| {
                    if ctx.payload()["i"].as_u64().unwrap() % 7 == 0 && ctx.retry_count() == 0 {
                        fails.fetch_add(1, Ordering::Relaxed);
                        return Err("first attempt fails".into());
                    }
                    Ok(json!(ctx.payload()["i"]).into())
                })
                .unwrap();
            }
            if m != 1 {
                mgr.start().unwrap();
            }
            let subs: Vec<_> = (0..6u64)
                .map(|t| {
                    let mgr = mgr.clone();
                    std::thread::spawn(move || {
                        let mut out: Vec<(Option<String>, TaskId)> = Vec::new();
                        for i in 0..250u64 {
                            let key = (i % 3 == 0).then(|| format!("k{}", i % 60));
                            let mut o = SubmitOptions::new();
                            if let Some(k) = &key {
                                o = o.dedup_key(k.clone());
                            }
                            let id = mgr.submit_with("w", json!({"i": t * 1000 + i}), o).unwrap();
                            out.push((key, id));
                        }
                        out
                    })
                })
                .collect();
            let mut acked = Vec::new();
            for s in subs {
                acked.extend(s.join().expect("submitter panicked"));
            }
            let mut keyed: HashMap<String, BTreeSet<TaskId>> = HashMap::new();
            for (k, id) in &acked {
                if let Some(k) = k {
                    keyed.entry(k.clone()).or_default().insert(*id);
                }
            }
            assert!(
                keyed.values().all(|s| s.len() == 1),
                "{durability:?}: key with several ids"
            );
            let distinct: BTreeSet<TaskId> = acked.iter().map(|(_, id)| *id).collect();
            let before = mgr.list_tasks(&TaskFilter::all()).len();
            assert_eq!(before, distinct.len(), "{durability:?}: live count");
            mgr.stop(Duration::from_secs(5)).unwrap();
            drop(mgr);
            let re = Arc::new(
                TaskManager::builder()
                    .dir(dir.path())
                    .durability(durability)
                    .build()
                    .unwrap(),
            );
            let after = re.list_tasks(&TaskFilter::all());
            assert_eq!(
                after.len(),
                distinct.len(),
                "{durability:?}: reopened count"
            );
            for id in &distinct {
                assert!(
                    re.get_task(*id).is_some(),
                    "{durability:?}: task {} lost",
                    id.0
                );
            }
            // Dedup keys survive the reopen.
            for (k, ids) in &keyed {
                re.register("w", |_| Ok(json!(0).into())).unwrap();
                let id = re
                    .submit_with(
                        "w",
                        json!({"i": 0}),
                        SubmitOptions::new().dedup_key(k.clone()),
                    )
                    .unwrap();
                assert_eq!(
                    Some(&id),
                    ids.iter().next(),
                    "{durability:?}: key {k} after reopen"
                );
            }
            re.start().unwrap();
            eventually("reopened tasks all complete", || {
                all_terminal_or(&re, &[TaskStatus::Completed]).is_empty()
            });
            re.stop(Duration::from_secs(5)).unwrap();
        }
    });
}

// ---------------------------------------------------------------------------
// 9. Manager pause(): after it returns and running handlers end, nothing new
//    starts while submitters keep submitting.
// ---------------------------------------------------------------------------

#[test]
fn manager_pause_gates_claims_under_concurrent_submitters() {
    within("pause gate", Duration::from_secs(60), || {
        for _round in 0..4 {
            let mgr = Arc::new(TaskManager::builder().memory().build().unwrap());
            let started = Arc::new(AtomicU64::new(0));
            {
                let started = started.clone();
                mgr.register("g", move |_| {
                    started.fetch_add(1, Ordering::SeqCst);
                    Ok(json!(1).into())
                })
                .unwrap();
            }
            mgr.start().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let subs: Vec<_> = (0..4)
                .map(|_| {
                    let (mgr, stop) = (mgr.clone(), stop.clone());
                    std::thread::spawn(move || {
                        let mut n = 0u64;
                        while !stop.load(Ordering::Acquire) {
                            mgr.submit("g", json!(n)).unwrap();
                            n += 1;
                            if n.is_multiple_of(64) {
                                std::thread::yield_now();
                            }
                        }
                        n
                    })
                })
                .collect();
            eventually("some tasks ran", || started.load(Ordering::SeqCst) > 100);
            mgr.pause();
            eventually("running handlers end after pause", || mgr.running() == 0);
            let at_pause = started.load(Ordering::SeqCst);
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(300) {
                std::thread::park_timeout(Duration::from_millis(10));
            }
            let after = started.load(Ordering::SeqCst);
            assert_eq!(
                after, at_pause,
                "handlers started while the manager was paused"
            );
            mgr.resume();
            stop.store(true, Ordering::Release);
            let total: u64 = subs.into_iter().map(|s| s.join().unwrap()).sum();
            eventually("all complete after resume", || {
                all_terminal_or(&mgr, &[TaskStatus::Completed]).is_empty()
            });
            assert_eq!(mgr.list_tasks(&TaskFilter::all()).len() as u64, total);
            assert_eq!(
                started.load(Ordering::SeqCst),
                total,
                "every task ran exactly once"
            );
            mgr.stop(Duration::from_secs(5)).unwrap();
        }
    });
}

// ---------------------------------------------------------------------------
// 10. A submit_batch refused with Stopped part way creates nothing
//     (SPEC §13: "Nothing in the log is changed by a rejected call").
// ---------------------------------------------------------------------------

#[test]
fn submit_batch_refused_by_stop_leaves_no_tasks_behind() {
    within("batch vs stop", Duration::from_secs(60), || {
        let mut partial_rounds = Vec::new();
        for round in 0..6 {
            let dir = tempfile::tempdir().unwrap();
            let mgr = Arc::new(
                TaskManager::builder()
                    .dir(dir.path())
                    .durability(Durability::Os)
                    .build()
                    .unwrap(),
            );
            mgr.register("b", |_| Ok(json!(1).into())).unwrap();
            // Not started: nothing runs, so every task stays visible as pending.
            let barrier = Arc::new(Barrier::new(4));
            let subs: Vec<_> = (0..3)
                .map(|_| {
                    let (mgr, barrier) = (mgr.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let mut acked = Vec::new();
                        let mut refused = 0;
                        barrier.wait();
                        loop {
                            match mgr.submit_batch(
                                (0..2000).map(|i| ("b", json!(i), SubmitOptions::new())),
                            ) {
                                Ok(ids) => acked.extend(ids),
                                Err(Error::Stopped) => {
                                    refused += 1;
                                    break;
                                }
                                Err(e) => panic!("batch: {e:?}"),
                            }
                        }
                        (acked, refused)
                    })
                })
                .collect();
            barrier.wait();
            eventually("batches under way", || {
                mgr.list_tasks(&TaskFilter::all()).len() > 3000
            });
            mgr.stop(Duration::from_secs(1)).unwrap();
            let mut acked = BTreeSet::new();
            for s in subs {
                let (a, _) = s.join().expect("submitter panicked");
                acked.extend(a);
            }
            let live: BTreeSet<TaskId> = mgr
                .list_tasks(&TaskFilter::all())
                .iter()
                .map(|t| t.id)
                .collect();
            drop(mgr);
            let re = TaskManager::builder()
                .dir(dir.path())
                .durability(Durability::Os)
                .build()
                .unwrap();
            let reopened: BTreeSet<TaskId> = re
                .list_tasks(&TaskFilter::all())
                .iter()
                .map(|t| t.id)
                .collect();
            let lost: Vec<_> = acked.difference(&reopened).collect();
            assert!(
                lost.is_empty(),
                "round {round}: acknowledged tasks lost: {}",
                lost.len()
            );
            let extra_live = live.difference(&acked).count();
            let extra = reopened.difference(&acked).count();
            if extra > 0 || extra_live > 0 {
                partial_rounds.push((round, extra_live, extra));
            }
            re.stop(Duration::from_secs(1)).unwrap();
        }
        assert!(
            partial_rounds.is_empty(),
            "submit_batch returned Err(Stopped) yet left tasks nobody was told of \
             (round, live extra, in the log after reopen): {partial_rounds:?}"
        );
    });
}

// ---------------------------------------------------------------------------
// 11. Workflows from many submitters while the manager is paused/resumed and
//     the handlers are hot-reloaded: every fan-in sees each child exactly once.
// ---------------------------------------------------------------------------

fn wf_handler() -> Handler {
    Handler::sync(|ctx| {
        let depth = ctx.payload()["d"].as_u64().unwrap_or(0);
        match ctx.stage() {
            0 if depth > 0 => {
                let kids = (0..4)
                    .map(|i| fibflow::ChildSpec::new("wf", json!({"d": depth - 1, "i": i})))
                    .collect();
                Ok(fibflow::Outcome::spawn(kids))
            }
            0 => {
                if ctx.payload()["i"].as_u64() == Some(3) && ctx.retry_count() == 0 {
                    return Err("leaf 3 fails once".into());
                }
                Ok(json!(1).into())
            }
            _ => {
                // Sum of the children's results; each entry exactly once, sorted.
                let entries = ctx
                    .result()
                    .and_then(|r| r.as_array())
                    .ok_or("no entries")?;
                let ids: Vec<u64> = entries
                    .iter()
                    .map(|e| e["task_id"].as_u64().unwrap_or(0))
                    .collect();
                let mut sorted = ids.clone();
                sorted.sort_unstable();
                sorted.dedup();
                if sorted != ids || ids.len() != 4 {
                    return Ok(json!({"bad": ids}).into());
                }
                let sum: u64 = entries
                    .iter()
                    .map(|e| e["result"].as_u64().unwrap_or(1000))
                    .sum();
                Ok(json!(sum).into())
            }
        }
    })
}

#[test]
fn workflows_from_many_threads_with_pause_and_reload() {
    within("workflows", Duration::from_secs(60), || {
        for seed in 0..3u64 {
            let mgr = Arc::new(
                TaskManager::builder()
                    .memory()
                    .max_concurrent_tasks(4)
                    .build()
                    .unwrap(),
            );
            let opts = HandlerOptions::new().max_concurrent_tasks(3).max_retries(3);
            mgr.register_handler("wf", wf_handler(), opts.clone())
                .unwrap();
            mgr.start().unwrap();
            let done = Arc::new(AtomicBool::new(false));
            let chaos = {
                let (mgr, done, opts) = (mgr.clone(), done.clone(), opts.clone());
                std::thread::spawn(move || {
                    let mut rng = XorShift::new(seed);
                    while !done.load(Ordering::Acquire) {
                        match rng.below(3) {
                            0 => {
                                mgr.pause();
                                std::thread::yield_now();
                                mgr.resume();
                            }
                            1 => mgr
                                .register_handler("wf", wf_handler(), opts.clone())
                                .unwrap(),
                            _ => std::thread::park_timeout(Duration::from_micros(200)),
                        }
                    }
                })
            };
            let subs: Vec<_> = (0..4)
                .map(|_| {
                    let mgr = mgr.clone();
                    std::thread::spawn(move || {
                        (0..6)
                            .map(|_| mgr.submit("wf", json!({"d": 2})).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let roots: Vec<TaskId> = subs.into_iter().flat_map(|s| s.join().unwrap()).collect();
            for &r in &roots {
                let t = mgr
                    .wait(r, PATIENCE)
                    .unwrap_or_else(|e| panic!("root {}: {e}", r.0));
                assert_eq!(
                    t.status,
                    TaskStatus::Completed,
                    "seed {seed}: root {} {:?}",
                    r.0,
                    t.error
                );
                assert_eq!(
                    t.result,
                    Some(json!(16)),
                    "seed {seed}: root {} result",
                    r.0
                );
            }
            done.store(true, Ordering::Release);
            chaos.join().unwrap();
            // 24 roots x (1 + 4 + 16) tasks.
            let all = mgr.list_tasks(&TaskFilter::all());
            assert_eq!(all.len(), 24 * 21, "seed {seed}: task count");
            let bad: Vec<_> = all
                .iter()
                .filter(|t| t.status != TaskStatus::Completed)
                .map(|t| (t.id.0, t.status))
                .collect();
            assert!(bad.is_empty(), "seed {seed}: not completed: {bad:?}");
            mgr.stop(Duration::from_secs(5)).unwrap();
        }
    });
}

// ---------------------------------------------------------------------------
// 12. Stale queue entries (of deleted tasks, or of tasks paused and resumed)
//     must not hide a runnable task: found by the pause_task storm above,
//     which sometimes ended with ~1500 tasks `pending`, "queued: waiting for
//     a free worker", running() = 0, for 30 s. Deterministic versions.
// ---------------------------------------------------------------------------

/// Many pending tasks deleted before `start`, then one more submitted: the
/// last one must run.
#[test]
fn deleted_pending_tasks_do_not_hide_a_new_task() {
    within("deleted backlog", Duration::from_secs(60), || {
        let mgr = TaskManager::builder()
            .memory()
            .max_concurrent_tasks(2)
            .build()
            .unwrap();
        noop(&mgr, "n");
        mgr.submit_batch((0..20_000).map(|i| ("n", json!(i), SubmitOptions::new())))
            .unwrap();
        let n = mgr.delete_tasks(&TaskFilter::all()).unwrap();
        assert_eq!(n, 20_000);
        let id = mgr.submit("n", json!("last")).unwrap();
        mgr.start().unwrap();
        match mgr.wait(id, Duration::from_secs(10)) {
            Ok(t) => assert_eq!(t.status, TaskStatus::Completed),
            Err(e) => panic!(
                "the one live task never ran after 20,000 pending tasks were deleted: {e}; \
                 status {:?}, waiting_reason {:?}, running() {}",
                mgr.get_task(id).map(|t| t.status),
                mgr.waiting_reason(id),
                mgr.running()
            ),
        }
        mgr.stop(Duration::from_secs(5)).unwrap();
    });
}

/// Same, with pending tasks deleted while the manager runs but is paused.
#[test]
fn deleted_pending_tasks_while_paused_do_not_hide_the_rest() {
    within("deleted backlog (paused)", Duration::from_secs(60), || {
        let mgr = TaskManager::builder()
            .memory()
            .max_concurrent_tasks(2)
            .build()
            .unwrap();
        noop(&mgr, "n");
        noop(&mgr, "keep");
        mgr.start().unwrap();
        mgr.pause();
        mgr.submit_batch((0..20_000).map(|i| ("n", json!(i), SubmitOptions::new())))
            .unwrap();
        let keep = mgr.submit("keep", json!(1)).unwrap();
        mgr.delete_tasks(&TaskFilter::all().name("n")).unwrap();
        mgr.resume();
        match mgr.wait(keep, Duration::from_secs(10)) {
            Ok(t) => assert_eq!(t.status, TaskStatus::Completed),
            Err(e) => panic!(
                "task never ran after 20,000 queued tasks ahead of it were deleted: {e}; \
                 status {:?}, waiting_reason {:?}, running() {}",
                mgr.get_task(keep).map(|t| t.status),
                mgr.waiting_reason(keep),
                mgr.running()
            ),
        }
        mgr.stop(Duration::from_secs(5)).unwrap();
    });
}

/// One task paused and resumed many times (each resume at a later millisecond)
/// before `start`: every resume queues an entry, the older ones are stale.
#[test]
fn many_pause_resume_cycles_before_start_then_the_task_runs() {
    within("pause/resume backlog", Duration::from_secs(60), || {
        let clock = fibflow::ManualClock::new(1_700_000_000_000);
        let mgr = TaskManager::builder()
            .memory()
            .clock(clock.clone())
            .max_concurrent_tasks(1)
            .build()
            .unwrap();
        noop(&mgr, "n");
        let id = mgr.submit("n", json!(1)).unwrap();
        for _ in 0..5_000 {
            mgr.pause_task(id).unwrap();
            clock.advance(Duration::from_millis(1));
            mgr.resume_task(id, None).unwrap();
        }
        mgr.start().unwrap();
        match mgr.wait(id, Duration::from_secs(10)) {
            Ok(t) => assert_eq!(t.status, TaskStatus::Completed),
            Err(e) => panic!(
                "task never ran after 5,000 pause/resume cycles: {e}; status {:?}, \
                 waiting_reason {:?}, running() {}",
                mgr.get_task(id).map(|t| t.status),
                mgr.waiting_reason(id),
                mgr.running()
            ),
        }
        mgr.stop(Duration::from_secs(5)).unwrap();
    });
}
