#![allow(clippy::indexing_slicing)]
use super::*;
use proptest::prelude::*;
use serde_json::json;

fn new_task(id: u64) -> NewTask {
    NewTask {
        id: TaskId(id),
        name: "n".into(),
        kind: TaskKind::Async,
        payload: json!({"a": [1, 2, {"b": null}], "s": "ü"}),
        priority: -3,
        tag: Some("t".into()),
        timeout_ms: 60_000,
        max_retries: 3,
        retry_interval_ms: 0,
        requires: vec!["gpu".into()],
        dedup_key: None,
        cron: Some("* * * * *".into()),
        next_run_ms: 5,
        parent_id: Some(TaskId(1)),
        root_id: None,
        on_failure: OnChildFailure::FailParent,
        created_ms: 4,
    }
}

fn check(batch: &[Record]) {
    let bytes = encode(batch).unwrap();
    assert_eq!(bytes[0], FORMAT_VERSION);
    assert_eq!(decode(&bytes).unwrap(), batch);
    assert_eq!(peek_task_id(&bytes), batch.first().map(Record::task_id));
    for r in batch {
        let one = encode(std::slice::from_ref(r)).unwrap();
        assert_eq!(peek_task_id(&one), Some(r.task_id()), "{r:?}");
    }
}

#[test]
fn table_round_trips() {
    check(&[]);
    check(&[Record::Submit(Box::new(new_task(7)))]);
    check(&[
        Record::Claim {
            id: TaskId(7),
            attempt: 1,
            worker: "w".into(),
            at_ms: 9,
        },
        Record::Complete {
            id: TaskId(7),
            attempt: 1,
            result: json!([1]),
            next_run_ms: None,
            at_ms: 10,
        },
        Record::Fail {
            id: TaskId(7),
            attempt: 1,
            error: "e".into(),
            kind: FailKind::TimeoutHeartbeat,
            retry_at_ms: 3,
            at_ms: 2,
        },
        Record::ChildDone {
            parent: TaskId(1),
            child: TaskId(2),
            outcome: ChildOutcome::Completed(json!({"k": 1.5})),
            fail_parent: false,
            at_ms: 1,
        },
        Record::Progress {
            id: TaskId(1),
            attempt: 2,
            stage_name: None,
            text: Some("x".into()),
            percent: Some(50),
            metadata: Value::Null,
            at_ms: 1,
        },
        Record::Delete { id: TaskId(3) },
    ]);
}

#[test]
fn refuses_unknown_version_and_empty_input() {
    assert!(matches!(decode(&[]), Err(DecodeError::Empty)));
    assert!(matches!(
        decode(&[9, 0]),
        Err(DecodeError::UnsupportedVersion(9))
    ));
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_record() -> impl Strategy<Value = Record> {
    prop_oneof![
        (any::<u64>(), arb_json()).prop_map(|(id, p)| {
            let mut t = new_task(id);
            t.payload = p;
            Record::Submit(Box::new(t))
        }),
        (any::<u64>(), any::<u32>(), ".{0,6}", any::<u64>()).prop_map(
            |(id, attempt, worker, at_ms)| Record::Claim {
                id: TaskId(id),
                attempt,
                worker: worker.into(),
                at_ms
            }
        ),
        (any::<u64>(), arb_json(), proptest::option::of(any::<u64>())).prop_map(
            |(id, result, next)| {
                Record::Complete {
                    id: TaskId(id),
                    attempt: 1,
                    result,
                    next_run_ms: next,
                    at_ms: 0,
                }
            }
        ),
        (any::<u64>(), ".{0,12}").prop_map(|(id, r)| Record::Suspend {
            id: TaskId(id),
            attempt: 2,
            reason: r,
            context: Some(vec![1, 2, 3]),
            at_ms: 1
        }),
        any::<u64>().prop_map(|id| Record::Delete { id: TaskId(id) }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_batch_round_trips(batch in prop::collection::vec(arb_record(), 0..6)) {
        let bytes = encode(&batch).unwrap();
        prop_assert_eq!(decode(&bytes).unwrap(), batch);
    }

    #[test]
    fn peeks_short_form_agrees_with_the_general_one(
        head in prop::collection::vec(0u8..=255, 0..4),
        tail in prop::collection::vec(0u8..=255, 0..14),
    ) {
        let mut bytes = vec![FORMAT_VERSION];
        bytes.extend(head);
        bytes.extend(tail);
        prop_assert_eq!(peek_task_id(&bytes), peek_task_id_general(&bytes));
        prop_assert_eq!(peek_task_id(&bytes[1..]), peek_task_id_general(&bytes[1..]));
    }

    #[test]
    fn peek_names_the_first_records_task(batch in prop::collection::vec(arb_record(), 1..4)) {
        let bytes = encode(&batch).unwrap();
        prop_assert_eq!(peek_task_id(&bytes), Some(batch[0].task_id()));
    }

    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes);
        let mut v = vec![FORMAT_VERSION];
        v.extend_from_slice(&bytes);
        let _ = decode(&v);
    }
}

#[test]
fn decoding_interns_names_into_the_installed_table() {
    let claim = |id, worker: &str| Record::Claim {
        id: TaskId(id),
        attempt: 1,
        worker: worker.into(),
        at_ms: 9,
    };
    let batch = vec![
        Record::Submit(Box::new(new_task(2))),
        Record::Submit(Box::new(new_task(3))),
        claim(2, "w1"),
        claim(3, "w1"),
        claim(3, "w2"),
    ];
    let bytes = encode(&batch).unwrap();
    let names_of = |b: &[Record]| -> Vec<Arc<str>> {
        b.iter()
            .map(|r| match r {
                Record::Submit(t) => Arc::clone(&t.name),
                Record::Claim { worker, .. } => Arc::clone(worker),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let mut table = Interner::default();
    let seeded = table.intern("n");
    let mut out = Vec::new();
    table.install(|| decode_into(&bytes, &mut out)).unwrap();
    assert_eq!(out, batch);
    let names = names_of(&out);
    assert!(Arc::ptr_eq(&names[0], &seeded) && Arc::ptr_eq(&names[1], &seeded));
    assert!(Arc::ptr_eq(&names[2], &names[3]));
    assert!(!Arc::ptr_eq(&names[3], &names[4]));
    // The table came back with what decoding added.
    assert!(Arc::ptr_eq(&table.intern("w2"), &names[4]));
    // Without a table every name is its own copy, and nothing is left installed.
    let plain = names_of(&decode(&bytes).unwrap());
    assert!(!Arc::ptr_eq(&plain[0], &plain[1]));
    assert_eq!(plain, names);
}

/// The depth check accepts exactly `MAX_JSON_DEPTH` levels, arrays and
/// objects alike, and refuses one more.
#[test]
fn json_depth_limit_is_exact() {
    let nest = |levels: usize, object: bool| {
        (0..levels).fold(json!(0), |v, _| {
            if object {
                json!({ "k": v })
            } else {
                json!([v])
            }
        })
    };
    for object in [false, true] {
        assert!(json_depth_ok(&nest(MAX_JSON_DEPTH, object)));
        assert!(!json_depth_ok(&nest(MAX_JSON_DEPTH + 1, object)));
    }
    assert!(json_depth_ok(&json!("scalar")));
}
