//! Query cost against history size (issue 5): a filtered, paged query — by tag and
//! status, 50 per page, the first and a middle page — over 10,000 and over
//! 1,000,000 tasks, in one run. The tagged set is the same 2,000 tasks in both;
//! only the rest of the history grows, which is what "cost does not grow with
//! history" means for a user paging through one tag. Target: ≤ 2× for 1M vs 10k.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fibflow::{Page, SubmitOptions, TaskFilter, TaskManager, TaskStatus};
use serde_json::Value;
use std::time::Duration;

const TAGGED: usize = 2_000;

fn manager(history: usize) -> TaskManager {
    let mgr = TaskManager::builder().memory().build().expect("manager");
    mgr.register("q", |_| Ok(Value::Null.into()))
        .expect("register");
    let batch = 10_000;
    let mut made = 0;
    while made < history {
        let n = batch.min(history - made);
        let tasks = (0..n).map(|i| {
            let k = made + i;
            let o = if k % (history / TAGGED) == 0 {
                SubmitOptions::new().tag("hot")
            } else {
                SubmitOptions::new().tag(format!("cold-{}", k % 97))
            };
            ("q".to_string(), Value::Null, o)
        });
        mgr.submit_batch(tasks).expect("submit");
        made += n;
    }
    mgr
}

fn bench(c: &mut Criterion) {
    let filter = TaskFilter::all().tag("hot").status(TaskStatus::Pending);
    let mut group = c.benchmark_group("query_by_tag_and_status");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    let mut medians = Vec::new();
    for history in [10_000usize, 1_000_000] {
        let mgr = manager(history);
        let total = mgr.query_tasks(&filter, Page::default()).total;
        assert_eq!(total, TAGGED);
        for (label, offset) in [("first_page", 0), ("middle_page", TAGGED / 2)] {
            let page = Page {
                limit: 50,
                offset,
                descending: false,
            };
            group.bench_with_input(BenchmarkId::new(label, history), &page, |b, page| {
                b.iter(|| mgr.query_tasks(&filter, *page).items.len());
            });
            // The summary's figure: the median of 51 single queries (a mean would
            // let one descheduling on this shared machine decide the ratio).
            let mut times: Vec<Duration> = (0..51)
                .map(|_| {
                    let t = std::time::Instant::now();
                    std::hint::black_box(mgr.query_tasks(&filter, page).items.len());
                    t.elapsed()
                })
                .collect();
            times.sort();
            medians.push((label, history, times[times.len() / 2]));
        }
    }
    group.finish();
    for label in ["first_page", "middle_page"] {
        let small = medians
            .iter()
            .find(|m| m.0 == label && m.1 == 10_000)
            .map(|m| m.2);
        let large = medians
            .iter()
            .find(|m| m.0 == label && m.1 == 1_000_000)
            .map(|m| m.2);
        if let (Some(s), Some(l)) = (small, large) {
            println!(
                "{label}: 10k history {s:?}, 1M history {l:?}, ratio {:.2}",
                l.as_secs_f64() / s.as_secs_f64()
            );
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
