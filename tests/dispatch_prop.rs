//! Property tests of dispatch (issue 2): the run order of a single worker equals
//! sorting by (priority desc, ready time, id); no task ever runs on a pool lacking
//! a capability it requires; no task runs twice concurrently.

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
}
