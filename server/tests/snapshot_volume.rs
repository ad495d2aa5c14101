//! The snapshot volume at startup and while snapshots fail: one server per
//! snapshot path, an unwritable volume stops the start, a full one starts
//! degraded, and failing snapshots show in `/healthz` and a gauge.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;

const DIM: i32 = 8;

/// `longbow_snapshot_failing` of shard 0.
async fn snapshot_failing(server: &Server) -> String {
    let metrics = server.metrics_text().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("longbow_snapshot_failing{shard=\"0\"} "))
        .unwrap_or_else(|| panic!("no longbow_snapshot_failing in\n{metrics}"))
        .to_owned()
}

/// The `/healthz` status line's code and the body.
async fn healthz(server: &Server) -> (u16, String) {
    let response = server.http_get("/healthz").await;
    let code = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (code, body)
}

/// Two data directories, one snapshot path (the test servers put it beside
/// the data directory): the second server refuses to start and says why;
/// each would have deleted the other's snapshots in progress as leftovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_cannot_share_the_snapshot_path() {
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start(&dir.path().join("data-a"), 1, &[]);
    let log = Server::try_start(&dir.path().join("data-b"), 1, &[]).err().expect("the second server must refuse");
    assert!(log.contains("snapshot directory") && log.contains("in use by another longbow process"), "{log}");
    assert!(!log.contains("WAL replayed"), "refused before the replay:\n{log}");
    first.terminate();
    let second = Server::start(&dir.path().join("data-b"), 1, &[]);
    second.terminate();
}

/// Makes `at` refuse writes: a read-only tmpfs as root (root ignores
/// permissions), mode 0555 otherwise. Returns the mount to undo, if any.
fn unwritable(at: &Path) -> Option<Tmpfs> {
    std::fs::create_dir_all(at).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { nix::libc::geteuid() } == 0 {
        let mount = Tmpfs::mount(at.to_owned(), "4m")?;
        let ok = std::process::Command::new("mount").args(["-o", "remount,ro"]).arg(at).status().unwrap();
        assert!(ok.success());
        Some(mount)
    } else {
        std::fs::set_permissions(at, std::fs::Permissions::from_mode(0o555)).unwrap();
        None
    }
}

/// A snapshot volume that cannot take a file stops the start before the
/// WAL replay, naming the directory and the cause (exit status 1), instead
/// of being found at the first snapshot, an hour later by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_snapshot_volume_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Some acknowledged data first, so that there is a WAL to replay.
    let server = Server::start(&data, 1, &[]);
    let mut client = server.client().await;
    put(&mut client, "kept", vec![vector_batch(0, 10, DIM)]).await.unwrap();
    server.terminate();

    let snapshots = dir.path().join("snapshots");
    let mount = unwritable(&snapshots);
    let log = Server::try_start(&data, 1, &[]).err().expect("an unwritable snapshot volume stops the start");
    assert!(log.starts_with("exit exit status: 1"), "{log}");
    assert!(log.contains("is not writable") && log.contains(&snapshots.display().to_string()), "{log}");
    assert!(!log.contains("WAL replayed"), "refused before the replay:\n{log}");
    drop(mount);
    std::fs::set_permissions(&snapshots, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = Server::start(&data, 1, &[]);
    let mut client = server.client().await;
    assert_eq!(rows(&get(&mut client, "kept").await.unwrap()), 10);
    server.terminate();
}

/// A full snapshot volume at start: the server starts (space may return;
/// the data it holds stays readable), warns, and reports it in the gauge
/// and `/healthz` (200, "degraded") until a snapshot succeeds. Needs root
/// for the mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_snapshot_volume_at_start_is_reported_until_a_snapshot_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let Some(snaps) = Tmpfs::mount(dir.path().join("snapshots"), "1m") else { return };
    let filler = snaps.0.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        while f.write_all(&[0; 4096]).is_ok() {}
    }
    let data = dir.path().join("data");
    let server = Server::start(&data, 1, &["--snapshot-compression", "none"]);
    assert!(server.log().contains("the snapshot volume is full"), "{}", server.log());
    assert_eq!(snapshot_failing(&server).await, "1");
    let (status, body) = healthz(&server).await;
    assert_eq!(status, 200, "not a restart's business: {body}");
    assert!(body.starts_with("degraded: snapshots are failing on shard(s) [0]"), "{body}");

    let mut client = server.client().await;
    put(&mut client, "d", vec![vector_batch(0, 1000, DIM)]).await.unwrap();
    let e = action(&mut client, "force_snapshot", "").await.unwrap_err();
    assert_eq!(code(&e), tonic::Code::ResourceExhausted, "{e}");
    assert_eq!(snapshot_failing(&server).await, "1");

    std::fs::remove_file(&filler).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // the worker's backoff after a failure
    action(&mut client, "force_snapshot", "").await.unwrap();
    assert_eq!(snapshot_failing(&server).await, "0");
    assert_eq!(healthz(&server).await, (200, "ok\n".to_owned()));
    server.terminate();
}

/// Snapshots failing while the server runs (injected EIO): the shard's
/// `longbow_snapshot_failing` is 1 and `/healthz` says "degraded" (200: a
/// liveness restart cannot fix a volume), health stays SERVING; the next
/// snapshot that succeeds clears both.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_snapshots_show_in_healthz_and_a_gauge_until_one_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("LONGBOW_FAULT_SNAPSHOT_FAIL", "0:1")];
    let server = Server::try_start_env(&dir.path().join("data"), 1, &[], &env).unwrap();
    assert_eq!(snapshot_failing(&server).await, "0", "exported from the start");
    assert_eq!(healthz(&server).await, (200, "ok\n".to_owned()));
    let mut client = server.client().await;
    put(&mut client, "d", vec![vector_batch(0, 100, DIM)]).await.unwrap();

    let e = action(&mut client, "force_snapshot", "").await.unwrap_err();
    assert_eq!(code(&e), tonic::Code::Internal, "{e}");
    assert_eq!(snapshot_failing(&server).await, "1");
    let (status, body) = healthz(&server).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("degraded: snapshots are failing on shard(s) [0]"), "{body}");
    assert_eq!(server.health().await, tonic_health::pb::health_check_response::ServingStatus::Serving);

    tokio::time::sleep(Duration::from_millis(1100)).await; // the worker's backoff after a failure
    action(&mut client, "force_snapshot", "").await.unwrap();
    assert_eq!(snapshot_failing(&server).await, "0");
    assert_eq!(healthz(&server).await, (200, "ok\n".to_owned()));
    server.terminate();
}
