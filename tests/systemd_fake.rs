//! `DbusSystemd` against a fake systemd manager served over a peer-to-peer D-Bus socket pair
//! (tests/support/fake_manager.rs): the real proxies, the real job waiting, fake answers.

#[path = "support/fake_manager.rs"]
mod fake_manager;

use std::time::{Duration, Instant};

use fake_manager::{Call, Fake, JobTiming, StraySignal, UnitRow};
use kechi::systemd::{JobResult, KillWho, ScopeSpec, Systemd, SystemdError, UnitInfo};
use zbus::zvariant::{OwnedValue, Value};

const DEADLINE: Duration = Duration::from_secs(5);

fn spec() -> ScopeSpec {
    ScopeSpec {
        unit: "kechi-demo-1.scope".into(),
        slice: "kechi-demo.slice".into(),
        description: "kechi demo worker 1".into(),
        pids: vec![4242, 4243],
        memory_max: Some(256 << 20),
        memory_high: Some(200 << 20),
        memory_swap_max: None,
        kill_signal: libc::SIGTERM,
        cpu_weight: None,
        stop_timeout: Duration::from_secs(30),
    }
}

fn subscribes(fake: &Fake) -> usize {
    fake.calls()
        .iter()
        .filter(|c| **c == Call::Subscribe)
        .count()
}

#[tokio::test]
async fn subscribe_once_on_connect() {
    let (fake, sd) = Fake::start().await;
    assert_eq!(fake.calls(), vec![Call::Subscribe]);
    sd.start_scope(&spec(), DEADLINE).await.unwrap();
    sd.stop_unit("kechi-demo-1.scope", DEADLINE).await.unwrap();
    sd.kill_unit("kechi-demo-1.scope", KillWho::All, libc::SIGKILL)
        .await
        .unwrap();
    assert_eq!(subscribes(&fake), 1, "{:?}", fake.calls());
}

#[tokio::test]
async fn start_scope_job_removed_before_reply() {
    let (fake, sd) = Fake::start().await;
    fake.set_timing(JobTiming::BeforeReply);
    sd.start_scope(&spec(), DEADLINE).await.unwrap();
    match &fake.calls()[1] {
        Call::StartTransientUnit {
            name, mode, aux, ..
        } => {
            assert_eq!(name, "kechi-demo-1.scope");
            assert_eq!(mode, "fail");
            assert_eq!(*aux, 0);
        }
        other => panic!("expected StartTransientUnit, got {other:?}"),
    }
}

#[tokio::test]
async fn start_scope_job_removed_after_reply() {
    let (fake, sd) = Fake::start().await;
    fake.set_timing(JobTiming::AfterReply(Duration::from_millis(100)));
    let t0 = Instant::now();
    sd.start_scope(&spec(), DEADLINE).await.unwrap();
    // It did wait for the signal, not just for the reply.
    assert!(
        t0.elapsed() >= Duration::from_millis(100),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn start_scope_failed_job() {
    let (fake, sd) = Fake::start().await;
    fake.set_job_result("failed");
    let err = sd.start_scope(&spec(), DEADLINE).await.unwrap_err();
    match err {
        SystemdError::Job { unit, result } => {
            assert_eq!(unit, "kechi-demo-1.scope");
            assert_eq!(result, JobResult::Failed);
        }
        other => panic!("expected Job error, got {other:?}"),
    }
}

#[tokio::test]
async fn start_scope_failed_job_after_reply() {
    let (fake, sd) = Fake::start().await;
    fake.set_job_result("dependency");
    fake.set_timing(JobTiming::AfterReply(Duration::from_millis(30)));
    let err = sd.start_scope(&spec(), DEADLINE).await.unwrap_err();
    assert!(
        matches!(
            err,
            SystemdError::Job {
                result: JobResult::Dependency,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn start_scope_unknown_result_string() {
    let (fake, sd) = Fake::start().await;
    fake.set_job_result("frobnicated");
    let err = sd.start_scope(&spec(), DEADLINE).await.unwrap_err();
    match err {
        SystemdError::Job {
            result: JobResult::Other(s),
            ..
        } => assert_eq!(s, "frobnicated"),
        other => panic!("expected Job error, got {other:?}"),
    }
}

#[tokio::test]
async fn start_scope_no_job_removed_times_out() {
    let (fake, sd) = Fake::start().await;
    fake.set_timing(JobTiming::Never);
    let deadline = Duration::from_millis(300);
    let t0 = Instant::now();
    let err = sd.start_scope(&spec(), deadline).await.unwrap_err();
    let took = t0.elapsed();
    match err {
        SystemdError::JobTimeout { unit, waited } => {
            assert_eq!(unit, "kechi-demo-1.scope");
            assert_eq!(waited, deadline);
        }
        other => panic!("expected JobTimeout, got {other:?}"),
    }
    assert!(took >= deadline, "gave up after {took:?}");
    assert!(took < deadline + Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn job_removed_for_another_job_is_not_ours() {
    let (fake, sd) = Fake::start().await;
    // The same unit's earlier job fails, and another unit's job ends, just before ours is done.
    fake.state().stray = vec![
        StraySignal {
            id: 7,
            job: "/org/freedesktop/systemd1/job/7".into(),
            unit: "kechi-demo-1.scope".into(),
            result: "failed".into(),
        },
        StraySignal {
            id: 8,
            job: "/org/freedesktop/systemd1/job/8".into(),
            unit: "other.service".into(),
            result: "canceled".into(),
        },
    ];
    for timing in [
        JobTiming::BeforeReply,
        JobTiming::AfterReply(Duration::from_millis(30)),
    ] {
        fake.set_timing(timing);
        sd.start_scope(&spec(), DEADLINE).await.unwrap();
        assert_eq!(
            sd.stop_unit("kechi-demo-1.scope", DEADLINE).await.unwrap(),
            JobResult::Done
        );
    }
}

#[tokio::test]
async fn only_another_jobs_removal_times_out() {
    let (fake, sd) = Fake::start().await;
    fake.set_timing(JobTiming::Never);
    fake.state().stray = vec![StraySignal {
        id: 7,
        job: "/org/freedesktop/systemd1/job/7".into(),
        unit: "kechi-demo-1.scope".into(),
        result: "done".into(),
    }];
    let err = sd
        .start_scope(&spec(), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, SystemdError::JobTimeout { .. }), "{err:?}");
}

#[tokio::test]
async fn scope_properties_on_the_wire() {
    let (fake, sd) = Fake::start().await;
    sd.start_scope(&spec(), DEADLINE).await.unwrap();
    let props = fake.last_start_properties();
    let got: Vec<(&str, &str)> = props
        .iter()
        .map(|p| (p.name.as_str(), p.signature.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("Description", "s"),
            ("Slice", "s"),
            ("PIDs", "au"),
            ("MemoryAccounting", "b"),
            ("MemoryMax", "t"),
            ("MemoryHigh", "t"),
            ("KillSignal", "i"),
            ("TimeoutStopUSec", "t"),
            ("SendSIGKILL", "b"),
            ("OOMPolicy", "s"),
            ("CollectMode", "s"),
        ]
    );
    let value = |name: &str| -> Value<'static> {
        props
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .value
            .try_clone()
            .unwrap()
            .into()
    };
    assert_eq!(value("Description"), Value::from("kechi demo worker 1"));
    assert_eq!(value("Slice"), Value::from("kechi-demo.slice"));
    assert_eq!(
        Vec::<u32>::try_from(value("PIDs")).unwrap(),
        vec![4242, 4243]
    );
    assert_eq!(value("MemoryAccounting"), Value::Bool(true));
    assert_eq!(value("MemoryMax"), Value::U64(256 << 20));
    assert_eq!(value("MemoryHigh"), Value::U64(200 << 20));
    assert_eq!(value("KillSignal"), Value::I32(libc::SIGTERM));
    assert_eq!(value("TimeoutStopUSec"), Value::U64(30_000_000));
    assert_eq!(value("SendSIGKILL"), Value::Bool(true));
    assert_eq!(value("OOMPolicy"), Value::from("continue"));
    assert_eq!(value("CollectMode"), Value::from("inactive-or-failed"));
}

#[tokio::test]
async fn scope_properties_infinity_and_swap() {
    let (fake, sd) = Fake::start().await;
    let mut s = spec();
    s.memory_max = None;
    s.memory_high = None;
    s.memory_swap_max = Some(Some(0));
    sd.start_scope(&s, DEADLINE).await.unwrap();
    s.memory_swap_max = Some(None);
    sd.start_scope(&s, DEADLINE).await.unwrap();

    let starts: Vec<_> = fake
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::StartTransientUnit { properties, .. } => Some(properties),
            _ => None,
        })
        .collect();
    assert_eq!(starts.len(), 2);
    for (props, swap) in starts.iter().zip([0, u64::MAX]) {
        let get = |name: &str| {
            props
                .iter()
                .find(|p| p.name == name)
                .unwrap_or_else(|| panic!("no {name}"))
        };
        for name in ["MemoryMax", "MemoryHigh"] {
            assert_eq!(get(name).signature, "t");
            assert_eq!(*get(name).value, Value::U64(u64::MAX), "{name}");
        }
        assert_eq!(get("MemorySwapMax").signature, "t");
        assert_eq!(*get("MemorySwapMax").value, Value::U64(swap));
    }
}

#[tokio::test]
async fn start_scope_unit_exists_is_a_call_error() {
    let (fake, sd) = Fake::start().await;
    fake.state().unit_exists.insert("kechi-demo-1.scope".into());
    let err = sd.start_scope(&spec(), DEADLINE).await.unwrap_err();
    match err {
        SystemdError::Call {
            method,
            unit,
            source,
        } if matches!(*source, zbus::Error::MethodError(..)) => {
            let zbus::Error::MethodError(name, _, _) = *source else {
                unreachable!()
            };
            assert_eq!(method, "StartTransientUnit");
            assert_eq!(unit, "kechi-demo-1.scope");
            assert_eq!(name.as_str(), "org.freedesktop.systemd1.UnitExists");
        }
        other => panic!("expected a Call error, got {other:?}"),
    }
}

#[tokio::test]
async fn stop_unit_returns_the_job_result() {
    let (fake, sd) = Fake::start().await;
    assert_eq!(
        sd.stop_unit("kechi-demo-1.scope", DEADLINE).await.unwrap(),
        JobResult::Done
    );
    fake.set_job_result("timeout");
    fake.set_timing(JobTiming::AfterReply(Duration::from_millis(20)));
    assert_eq!(
        sd.stop_unit("kechi-demo-2.scope", DEADLINE).await.unwrap(),
        JobResult::Timeout
    );
    fake.set_job_result("canceled");
    fake.set_timing(JobTiming::BeforeReply);
    assert_eq!(
        sd.stop_unit("kechi-demo-3.scope", DEADLINE).await.unwrap(),
        JobResult::Canceled
    );
    let stops: Vec<_> = fake
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::StopUnit { .. }))
        .collect();
    assert_eq!(
        stops[0],
        Call::StopUnit {
            name: "kechi-demo-1.scope".into(),
            mode: "replace".into()
        }
    );
    assert_eq!(stops.len(), 3);
}

#[tokio::test]
async fn stop_unit_not_loaded() {
    let (fake, sd) = Fake::start().await;
    fake.set_not_loaded("gone.scope");
    let err = sd.stop_unit("gone.scope", DEADLINE).await.unwrap_err();
    assert!(
        matches!(&err, SystemdError::NoSuchUnit(u) if u == "gone.scope"),
        "{err:?}"
    );
}

#[tokio::test]
async fn stop_unit_no_job_removed_times_out() {
    let (fake, sd) = Fake::start().await;
    fake.set_timing(JobTiming::Never);
    let err = sd
        .stop_unit("kechi-demo-1.scope", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SystemdError::JobTimeout { unit, .. } if unit == "kechi-demo-1.scope"),
        "{err:?}"
    );
}

#[tokio::test]
async fn kill_unit_args_and_no_such_unit() {
    let (fake, sd) = Fake::start().await;
    sd.kill_unit("kechi-demo-1.scope", KillWho::All, libc::SIGTERM)
        .await
        .unwrap();
    sd.kill_unit("kechi-demo-1.scope", KillWho::Main, libc::SIGHUP)
        .await
        .unwrap();
    fake.set_not_loaded("gone.scope");
    let err = sd
        .kill_unit("gone.scope", KillWho::All, libc::SIGKILL)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SystemdError::NoSuchUnit(u) if u == "gone.scope"),
        "{err:?}"
    );
    assert_eq!(
        fake.calls()[1..],
        [
            Call::KillUnit {
                name: "kechi-demo-1.scope".into(),
                whom: "all".into(),
                signal: libc::SIGTERM,
            },
            Call::KillUnit {
                name: "kechi-demo-1.scope".into(),
                whom: "main".into(),
                signal: libc::SIGHUP,
            },
            Call::KillUnit {
                name: "gone.scope".into(),
                whom: "all".into(),
                signal: libc::SIGKILL,
            },
        ]
    );
}

#[tokio::test]
async fn list_units_maps_rows() {
    let (fake, sd) = Fake::start().await;
    let row = |name: &str, active: &str, sub: &str| UnitRow {
        name: name.into(),
        load_state: "loaded".into(),
        active_state: active.into(),
        sub_state: sub.into(),
    };
    fake.state().units = vec![
        row("kechi-demo-1.scope", "active", "running"),
        row("kechi-demo-2.scope", "deactivating", "stop-sigterm"),
        row("kechi-demo-3.scope", "failed", "failed"),
    ];
    let units = sd
        .list_units(&["kechi-demo-*.scope", "kechi-demo.slice"])
        .await
        .unwrap();
    let info = |name: &str, active: &str, sub: &str| UnitInfo {
        name: name.into(),
        active_state: active.into(),
        sub_state: sub.into(),
    };
    assert_eq!(
        units,
        vec![
            info("kechi-demo-1.scope", "active", "running"),
            info("kechi-demo-2.scope", "deactivating", "stop-sigterm"),
            info("kechi-demo-3.scope", "failed", "failed"),
        ]
    );
    assert_eq!(
        fake.calls()[1],
        Call::ListUnitsByPatterns {
            states: vec![],
            patterns: vec!["kechi-demo-*.scope".into(), "kechi-demo.slice".into()],
        }
    );
}

#[tokio::test]
async fn list_units_empty() {
    let (_fake, sd) = Fake::start().await;
    assert_eq!(sd.list_units(&["nothing-*"]).await.unwrap(), vec![]);
}

#[tokio::test]
async fn unit_pids() {
    let (fake, sd) = Fake::start().await;
    let cg = "/kechi.slice/kechi-demo.slice/kechi-demo-1.scope".to_string();
    fake.state().processes.insert(
        "kechi-demo-1.scope".into(),
        vec![
            (cg.clone(), 4242, "starlet master".into()),
            (cg.clone(), 4250, "starlet worker".into()),
            (cg, 4251, "starlet worker".into()),
        ],
    );
    assert_eq!(
        sd.unit_pids("kechi-demo-1.scope").await.unwrap(),
        vec![4242, 4250, 4251]
    );
    // Loaded but empty.
    assert_eq!(
        sd.unit_pids("kechi-demo-2.scope").await.unwrap(),
        Vec::<u32>::new()
    );
    fake.set_not_loaded("gone.scope");
    let err = sd.unit_pids("gone.scope").await.unwrap_err();
    assert!(
        matches!(&err, SystemdError::NoSuchUnit(u) if u == "gone.scope"),
        "{err:?}"
    );
}

#[tokio::test]
async fn service_environment() {
    let (fake, sd) = Fake::start().await;
    let env = ["KECHI_WORKERS=4", "PLACK_ENV=production", "EMPTY="];
    fake.add_service("kechi@demo.service", &env).await;
    assert_eq!(
        sd.service_environment("kechi@demo.service").await.unwrap(),
        env
    );
    assert!(fake.calls().contains(&Call::GetUnit {
        name: "kechi@demo.service".into()
    }));
    let err = sd
        .service_environment("kechi@other.service")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SystemdError::NoSuchUnit(u) if u == "kechi@other.service"),
        "{err:?}"
    );
}

#[tokio::test]
async fn cpu_weight_is_set_for_the_runtime_only_and_reset_with_the_invalid_weight() {
    let (fake, sd) = Fake::start().await;
    sd.set_cpu_weight("kechi-demo-1.scope", Some(20))
        .await
        .unwrap();
    sd.set_cpu_weight("kechi-demo-1.scope", None).await.unwrap();
    let sent: Vec<(bool, String, String, OwnedValue)> = fake.calls()[1..]
        .iter()
        .map(|c| match c {
            Call::SetUnitProperties {
                name,
                runtime,
                properties,
            } => {
                assert_eq!(name, "kechi-demo-1.scope");
                assert_eq!(properties.len(), 1);
                let p = &properties[0];
                (
                    *runtime,
                    p.name.clone(),
                    p.signature.clone(),
                    p.value.try_clone().unwrap(),
                )
            }
            other => panic!("unexpected call {other:?}"),
        })
        .collect();
    assert_eq!(sent.len(), 2);
    for (runtime, name, sig, _) in &sent {
        assert!(runtime, "a weight for the worker's life only, not saved");
        assert_eq!((name.as_str(), sig.as_str()), ("CPUWeight", "t"));
    }
    assert_eq!(u64::try_from(sent[0].3.try_clone().unwrap()).unwrap(), 20);
    assert_eq!(
        u64::try_from(sent[1].3.try_clone().unwrap()).unwrap(),
        u64::MAX
    );
}

#[tokio::test]
async fn reset_failed_tolerates_no_such_unit() {
    let (fake, sd) = Fake::start().await;
    sd.reset_failed("kechi-demo-1.scope").await.unwrap();
    fake.set_not_loaded("gone.scope");
    sd.reset_failed("gone.scope").await.unwrap();
    assert_eq!(fake.state().reset, vec!["kechi-demo-1.scope".to_string()]);
    assert_eq!(
        fake.calls()[1..],
        [
            Call::ResetFailedUnit {
                name: "kechi-demo-1.scope".into()
            },
            Call::ResetFailedUnit {
                name: "gone.scope".into()
            },
        ]
    );
}

#[tokio::test]
async fn two_scopes_at_once_each_get_their_own_job() {
    let (fake, sd) = Fake::start().await;
    fake.set_timing(JobTiming::AfterReply(Duration::from_millis(50)));
    let mut a = spec();
    a.unit = "kechi-demo-1.scope".into();
    let mut b = spec();
    b.unit = "kechi-demo-2.scope".into();
    let (ra, rb) = tokio::join!(sd.start_scope(&a, DEADLINE), sd.start_scope(&b, DEADLINE));
    ra.unwrap();
    rb.unwrap();
}

#[tokio::test]
async fn connection_lost_while_waiting_for_a_job() {
    let (fake, sd) = Fake::start().await;
    fake.set_timing(JobTiming::Never);
    let closer = {
        let fake = fake.clone();
        async move {
            while !fake
                .calls()
                .iter()
                .any(|c| matches!(c, Call::StopUnit { .. }))
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Let the reply go out first, then hang up.
            tokio::time::sleep(Duration::from_millis(50)).await;
            fake.server().clone().close().await.unwrap();
        }
    };
    let t0 = Instant::now();
    let (res, ()) = tokio::join!(sd.stop_unit("kechi-demo-1.scope", DEADLINE), closer);
    let err = res.unwrap_err();
    assert!(
        matches!(
            &err,
            SystemdError::Call {
                method: "StopUnit",
                source,
                ..
            } if matches!(**source, zbus::Error::Failure(_))
        ),
        "{err:?}"
    );
    assert!(
        t0.elapsed() < DEADLINE,
        "noticed only after {:?}",
        t0.elapsed()
    );
}

/// The deadline covers the whole wait, the method call included: a manager that takes longer
/// than the deadline to answer at all is a timeout, not a wait without end.
#[tokio::test]
async fn deadline_bounds_a_call_that_is_not_answered() {
    let (fake, sd) = Fake::start().await;
    fake.state().reply_delay = Duration::from_secs(3);
    let deadline = Duration::from_millis(300);
    let t0 = Instant::now();
    let err = sd
        .stop_unit("kechi-demo-1.scope", deadline)
        .await
        .unwrap_err();
    assert!(matches!(err, SystemdError::JobTimeout { .. }), "{err:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
}

/// The bus daemon going away closes the link: `link_lost` says so, calls fail, `reconnect`
/// fails while nothing answers and then connects and subscribes again, and calls work.
#[tokio::test]
async fn reconnects_after_the_link_is_lost() {
    let (fake, sd, servers) = Fake::start_reconnectable().await;
    assert!(sd.can_reconnect());
    sd.start_scope(&spec(), DEADLINE).await.unwrap();
    // Not lost yet.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sd.link_lost())
            .await
            .is_err()
    );
    *servers.refuse.lock().unwrap() = true;
    let first = servers.conns.lock().unwrap()[0].clone();
    first.close().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), sd.link_lost())
        .await
        .expect("link_lost resolves when the connection closes");
    assert!(sd.link_is_closed());
    assert!(sd.start_scope(&spec(), DEADLINE).await.is_err());
    assert!(matches!(
        sd.reconnect().await,
        Err(SystemdError::Connect { .. })
    ));
    *servers.refuse.lock().unwrap() = false;
    sd.reconnect().await.unwrap();
    assert!(!sd.link_is_closed());
    assert_eq!(servers.conns.lock().unwrap().len(), 2);
    assert_eq!(subscribes(&fake), 2, "subscribed again on the new link");
    sd.start_scope(&spec(), DEADLINE).await.unwrap();
    sd.stop_unit("kechi-demo-1.scope", DEADLINE).await.unwrap();
}

/// A link made from a bare connection cannot be re-established, and says so.
#[tokio::test]
async fn a_bare_connection_cannot_reconnect() {
    let (_fake, sd) = Fake::start().await;
    assert!(!sd.can_reconnect());
    assert!(sd.reconnect().await.is_err());
}
