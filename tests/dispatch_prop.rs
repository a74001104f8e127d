//! Property tests of dispatch (issue 2): the run order of a single worker equals
//! sorting by (priority desc, ready time, id); no task ever runs on a pool lacking
//! a capability it requires; no task runs twice concurrently; handlers stay
//! within their caps and a blocked type (capped, or not yet registered) never
//! keeps the others from running, whatever the size of its backlog.

mod common;

use common::PATIENCE;
use fibflow::{HandlerOptions, ManualClock, Pool, SubmitOptions, TaskId, TaskManager, TaskStatus};
use proptest::prelude::*;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

const T0: u64 = 1_700_000_000_000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::proptest_cases(24)))]

    #[test]
    fn one_worker_runs_tasks_in_priority_then_ready_time_then_id_order(
        tasks in prop::collection::vec((-3i32..4, 0u64..50), 1..40)
    ) {
        let clock = ManualClock::new(T0);
        let mgr = TaskManager::builder().memory().clock(clock.clone()).max_concurrent_tasks(1).build().unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let o = order.clone();
        mgr.register("rec", move |ctx| {
            o.lock().unwrap().push(ctx.id());
            Ok(json!(null).into())
        }).unwrap();
        let mut expected = Vec::new();
        for (priority, back_ms) in &tasks {
            // A ready time in the past, so ready-time order differs from id order.
            let run_at = UNIX_EPOCH + Duration::from_millis(T0 - back_ms);
            let id = mgr.submit_with("rec", json!(null), SubmitOptions::new().priority(*priority).run_at(run_at)).unwrap();
            expected.push((-priority, T0 - back_ms, id));
        }
        mgr.start().unwrap();
        for &(_, _, id) in &expected {
            mgr.wait(id, PATIENCE).unwrap();
        }
        expected.sort();
        let want: Vec<TaskId> = expected.into_iter().map(|e| e.2).collect();
        prop_assert_eq!(order.lock().unwrap().clone(), want);
    }

    #[test]
    fn tasks_run_only_where_capabilities_allow_and_never_twice_at_once(
        pools in prop::collection::vec(prop::sample::subsequence(vec!["gpu", "tpu", "ram"], 0..=3), 1..4),
        tasks in prop::collection::vec(prop::sample::subsequence(vec!["gpu", "tpu", "ram"], 0..=2), 1..30),
    ) {
        let mut b = TaskManager::builder().memory().max_concurrent_tasks(2);
        let mut pool_tags: HashMap<String, HashSet<&str>> = HashMap::new();
        pool_tags.insert("default".into(), HashSet::new());
        for (i, tags) in pools.iter().enumerate() {
            let name = format!("p{i}");
            pool_tags.insert(name.clone(), tags.iter().copied().collect());
            b = b.pool(Pool::new(name).tags(tags.clone()).concurrency(2));
        }
        let mgr = b.build().unwrap();
        let running: Arc<Mutex<HashSet<TaskId>>> = Arc::default();
        let seen: Arc<Mutex<Vec<(TaskId, String)>>> = Arc::default();
        let (r, s) = (running.clone(), seen.clone());
        mgr.register_with("job", HandlerOptions::new(), move |ctx| {
            assert!(r.lock().unwrap().insert(ctx.id()), "task {} runs twice at once", ctx.id());
            for _ in 0..50 {
                std::thread::yield_now();
            }
            s.lock().unwrap().push((ctx.id(), ctx.worker().to_owned()));
            r.lock().unwrap().remove(&ctx.id());
            Ok(json!(null).into())
        }).unwrap();
        mgr.start().unwrap();
        let mut runnable = Vec::new();
        let mut stuck = Vec::new();
        for req in &tasks {
            let id = mgr.submit_with("job", json!(null), SubmitOptions::new().requires(req.clone())).unwrap();
            let servable = pool_tags.values().any(|t| req.iter().all(|r| t.contains(r)));
            if servable { runnable.push((id, req.clone())) } else { stuck.push(id) }
        }
        for (id, _) in &runnable {
            prop_assert_eq!(mgr.wait(*id, PATIENCE).unwrap().status, TaskStatus::Completed);
        }
        let seen = seen.lock().unwrap().clone();
        for (id, req) in &runnable {
            let worker = &seen.iter().find(|(t, _)| t == id).unwrap().1;
            let pool = worker.rsplit_once('-').unwrap().0;
            let tags = &pool_tags[pool];
            prop_assert!(req.iter().all(|r| tags.contains(r)), "task {} needing {:?} ran on {}", id, req, worker);
        }
        prop_assert_eq!(seen.len(), runnable.len(), "each runnable task ran exactly once");
        for id in stuck {
            prop_assert_eq!(mgr.get_task(id).unwrap().status, TaskStatus::Pending);
            prop_assert!(mgr.waiting_reason(id).unwrap().unwrap().contains("no worker pool"));
        }
    }

    #[test]
    fn caps_hold_and_blocked_types_never_starve_the_rest(
        tasks in prop::collection::vec((0usize..3, -2i32..3), 1..400),
    ) {
        // Handlers h0..h2 with caps 1..=3, three workers, random priorities.
        let mgr = TaskManager::builder().memory().max_concurrent_tasks(3).build().unwrap();
        let running: Arc<Vec<std::sync::atomic::AtomicUsize>> =
            Arc::new((0..3).map(|_| std::sync::atomic::AtomicUsize::new(0)).collect());
        let over = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handler = |k: usize, cap: usize| {
            let (running, over) = (running.clone(), over.clone());
            move |_: &fibflow::TaskContext| -> fibflow::HandlerResult {
                let now = running[k].fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                if now > cap {
                    over.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                for _ in 0..200 {
                    std::hint::spin_loop();
                }
                running[k].fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                Ok(json!(null).into())
            }
        };
        for k in 0..3 {
            mgr.register_with(&format!("h{k}"), HandlerOptions::new().max_concurrent_tasks(k + 1), handler(k, k + 1)).unwrap();
        }
        mgr.start().unwrap();
        let mut ids = Vec::new();
        for (k, priority) in &tasks {
            let id = mgr.submit_with(&format!("h{k}"), json!(null), SubmitOptions::new().priority(*priority)).unwrap();
            ids.push(id);
        }
        for &id in &ids {
            prop_assert_eq!(mgr.wait(id, PATIENCE).unwrap().status, TaskStatus::Completed);
        }
        prop_assert!(!over.load(std::sync::atomic::Ordering::SeqCst), "a handler ran above its cap");
    }
}
