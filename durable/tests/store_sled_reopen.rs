//! What a SledStore acknowledged is there after it is reopened, and the tasks its last
//! holder had are released at once, at a new version.

use durable::Target;
use durable::store::{Claim, CreatePromise, NewTask, SettlePromise};
use durable::{Param, SledStore, State, Store, TaskState};

#[tokio::test]
async fn acknowledged_writes_survive_a_reopen_and_held_tasks_are_released() {
    let dir = tempfile::tempdir().unwrap();
    let version = {
        let store = SledStore::open(dir.path()).unwrap();
        let mut req = CreatePromise::new("root", Param::call("f", 1, "[1,2]".into()));
        req.task = Some(NewTask::new(Target::any("g")));
        store.create(req).await.unwrap();
        let claim = Claim {
            pid: "worker".into(),
            group: "g".into(),
            process: "p".into(),
            ttl: 60_000,
            max: 1,
            functions: Vec::new(),
        };
        let held = store.claim(claim).await.unwrap().pop().unwrap();
        let mut child = CreatePromise::new("root.1", Param::call("g", 1, "3".into()));
        child.fence = Some(held.fence());
        store.create(child).await.unwrap();
        let settle = SettlePromise {
            id: "root.1".into(),
            state: State::Resolved,
            value: "9".into(),
            ikey: None,
            strict: false,
            fence: Some(held.fence()),
        };
        store.settle(settle).await.unwrap();
        held.task.version
    };
    let store = SledStore::open(dir.path()).unwrap();
    let child = store.get("root.1").await.unwrap().unwrap();
    assert_eq!((child.state, child.value.as_deref()), (State::Resolved, Some("9")));
    assert_eq!(store.get("root").await.unwrap().unwrap().param, Param::call("f", 1, "[1,2]".into()));
    let task = store.task("root").await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Pending, "the dead holder's task is released on open");
    assert!(task.version > version);
    let claim = Claim {
        pid: "worker".into(),
        group: "g".into(),
        process: "q".into(),
        ttl: 60_000,
        max: 1,
        functions: Vec::new(),
    };
    let again = store.claim(claim).await.unwrap().pop().unwrap();
    assert_eq!(again.preload.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["root.1"]);
}

#[tokio::test]
async fn schedules_survive_a_reopen_with_their_fires() {
    let dir = tempfile::tempdir().unwrap();
    let schedule = |id: &str, next: u64| {
        let every = durable::ScheduleSpec::every(std::time::Duration::from_secs(60));
        durable::Schedule::new(id, every, Param::call("report", 1, "null".into()), 0, Some(next))
    };
    {
        let store = SledStore::open(dir.path()).unwrap();
        let mut kept = store.put_schedule(schedule("kept", 60_000), false).await.unwrap();
        store.put_schedule(schedule("gone", 60_000), false).await.unwrap();
        kept.next = Some(120_000);
        kept.fired = 1;
        let mut fire = CreatePromise::new("kept@1", Param::call("report", 1, "null".into()));
        fire.task = Some(NewTask::new(Target::any("g")));
        assert!(store.update_schedule(kept, vec![fire]).await.unwrap());
        assert!(store.remove_schedule("gone").await.unwrap());
    }
    let store = SledStore::open(dir.path()).unwrap();
    let kept = store.schedule("kept").await.unwrap().expect("the schedule is there");
    assert_eq!((kept.version, kept.next, kept.fired), (2, Some(120_000), 1));
    assert!(store.schedule("gone").await.unwrap().is_none(), "a removed schedule stays removed");
    let due: Vec<String> = store.schedules(Some(120_000)).await.unwrap().into_iter().map(|s| s.id).collect();
    assert_eq!(due, ["kept"], "and it is due again when it was");
    assert_eq!(store.task("kept@1").await.unwrap().unwrap().state, TaskState::Pending, "its fire is there");
}

#[test]
fn a_directory_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let _open = SledStore::open(dir.path()).unwrap();
    let error = SledStore::open(dir.path()).unwrap_err().to_string();
    assert!(
        error.contains("is in use: another process holds its lock")
            && error.contains(&dir.path().display().to_string()),
        "{error}"
    );
}
