//! Human in the loop: expense reports suspend until someone approves them. An
//! "approver" thread lists the tasks waiting for approval, resumes two of them and
//! cancels the third; the resumed runs see the context saved when they suspended.
//!
//! Run: `cargo run --release --example approval`

use fibflow::{Outcome, TaskFilter, TaskManager, TaskStatus};
use serde_json::json;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mgr = TaskManager::builder()
        .memory()
        .max_concurrent_tasks(4)
        .build()?;
    mgr.register("expense", |ctx| {
        let who = ctx.payload()["who"].as_str().unwrap_or("?").to_owned();
        let amount = ctx.payload()["amount"].as_u64().unwrap_or(0);
        if ctx.stage() == 0 {
            // Prepare the report, save it as context, and wait for a person.
            let draft = format!("{who} asks for {amount} EUR");
            return Ok(Outcome::Suspend {
                reason: "awaiting_approval".into(),
                context: Some(draft.into_bytes()),
            });
        }
        let draft = String::from_utf8_lossy(ctx.context().unwrap_or_default()).into_owned();
        Ok(json!({ "paid": amount, "report": draft, "stage": ctx.stage() }).into())
    })?;
    mgr.start()?;

    let requests = [("ana", 120), ("ben", 80), ("cy", 5000)];
    let mut ids = Vec::new();
    for (who, amount) in requests {
        let id = mgr.submit("expense", json!({ "who": who, "amount": amount }))?;
        println!("submitted expense {id}: {who}, {amount} EUR");
        ids.push(id);
    }

    let waiting = TaskFilter {
        suspend_reason: Some("awaiting_approval".into()),
        ..TaskFilter::default()
    };
    std::thread::scope(|s| -> Result<(), String> {
        let approver = s.spawn(|| -> Result<(), String> {
            let until = Instant::now() + Duration::from_secs(20);
            let mut pending = mgr.list_tasks(&waiting);
            while pending.len() < requests.len() {
                if Instant::now() > until {
                    return Err("the expenses never reached the approval step".into());
                }
                std::thread::sleep(Duration::from_millis(5));
                pending = mgr.list_tasks(&waiting);
            }
            println!("approver thread: {} tasks await approval", pending.len());
            for t in pending {
                let amount = t.payload["amount"].as_u64().unwrap_or(0);
                if amount > 1000 {
                    mgr.cancel_task(t.id, Some("rejected: over the 1000 EUR limit"))
                        .map_err(|e| e.to_string())?;
                    println!("approver thread: cancelled {} ({amount} EUR)", t.id);
                } else {
                    mgr.resume_task(t.id, Some("approved by the finance team"))
                        .map_err(|e| e.to_string())?;
                    println!("approver thread: approved {} ({amount} EUR)", t.id);
                }
            }
            Ok(())
        });
        approver
            .join()
            .map_err(|_| "approver thread panicked".to_string())?
    })?;

    let mut outcomes = Vec::new();
    for id in &ids {
        let t = mgr.wait(*id, Duration::from_secs(20))?;
        match t.status {
            TaskStatus::Completed => println!(
                "expense {id}: completed at stage {} -> {}",
                t.stage,
                t.result.clone().unwrap_or_default()
            ),
            _ => println!(
                "expense {id}: {} -> {}",
                t.status,
                t.error.clone().unwrap_or_default()
            ),
        }
        let resumed = mgr
            .events(*id)?
            .iter()
            .find_map(|e| e.metadata.get("resume_reason").cloned());
        if let Some(r) = resumed {
            println!("  resume_reason: {r}");
        }
        outcomes.push(t.status);
    }
    mgr.stop(Duration::from_secs(5))?;
    if outcomes
        != [
            TaskStatus::Completed,
            TaskStatus::Completed,
            TaskStatus::PermanentlyFailed,
        ]
    {
        return Err(format!("unexpected outcomes: {outcomes:?}").into());
    }
    println!("ok: two approved and paid, one cancelled");
    Ok(())
}
