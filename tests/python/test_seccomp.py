"""The shipped seccomp profile (deploy/helm/longbow/files/seccomp-longbow.json)
runs the real server: put, get, snapshot, SIGHUP reload, TLS, clean restart
and kill -9 with WAL replay, each under the filter a runtime would build from
the profile (scripts/seccomp_exec.py, libseccomp through the system
interpreter's python3-seccomp). And the filter does refuse: syscalls outside
the profile fail, and the profile without socketpair stops the server as the
old one did."""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as fl
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("LONGBOW_BIN", Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "longbow"))
PROFILE = ROOT / "deploy" / "helm" / "longbow" / "files" / "seccomp-longbow.json"
LOADER = ROOT / "scripts" / "seccomp_exec.py"
SYSTEM_PYTHON = "/usr/bin/python3"
# What the Helm chart adds to the container's capabilities.
CHART_CAPS = ["--cap-add", "CAP_IPC_LOCK", "--cap-add", "CAP_SYS_RESOURCE"]
CALL = fl.FlightCallOptions(timeout=15)
GIB = 1 << 30

pytestmark = pytest.mark.skipif(
    subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"], capture_output=True).returncode != 0,
    reason="needs python3-seccomp for /usr/bin/python3 (scripts/test.sh installs it)")


def confined(command, profile=PROFILE, loader_args=()):
    return [SYSTEM_PYTHON, str(LOADER), str(profile), *CHART_CAPS, *loader_args, "--", *command]


def server_args(tmp):
    shards = 2 if len(os.sched_getaffinity(0)) >= 2 else 1
    # Pinning is on, as in the chart: sched_setaffinity goes through the filter too.
    return [str(BINARY), "--data-path", str(tmp / "data"), "--snapshot-path", str(tmp / "snapshots"),
            "--shards", str(shards), "--listen-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"]


class Server:
    """longbow under the profile; the loader execs it, so proc.pid is the server."""

    def __init__(self, tmp: Path, env=None, loader_args=()):
        self.log_path = tmp / "longbow.log"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            confined(server_args(tmp), loader_args=loader_args), stdout=subprocess.PIPE, stderr=self.log,
            text=True, env={**os.environ, **(env or {})})
        for line in self.proc.stdout:
            if line.startswith("longbow ready"):
                fields = dict(w.split("=", 1) for w in line.split()[2:])
                self.flight = fields["flight"]
                self.port = int(self.flight.rsplit(":", 1)[1])
                break
        else:
            raise RuntimeError(f"longbow exited with {self.proc.wait()}: {self.log_text()}")
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        assert re.search(r"^Seccomp:\s+2$", status, re.M), status  # 2 = a filter is loaded
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
        assert os.readlink(f"/proc/{self.proc.pid}/exe") == str(BINARY.resolve())

    def client(self):
        return fl.connect(f"grpc://{self.flight}")

    def log_text(self):
        return re.sub(r"\x1b\[[0-9;]*m", "", self.log_path.read_text())  # no colours

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def table(first, n):
    return pa.table({"id": pa.array(range(first, first + n), pa.int64()),
                     "name": pa.array([f"row-{i}" for i in range(first, first + n)])})


def put(client, name, t):
    writer, reader = client.do_put(fl.FlightDescriptor.for_path(name), t.schema, options=CALL)
    writer.write_table(t)
    ack = json.loads(reader.read().to_pybytes())  # durable
    writer.done_writing()
    writer.close()
    assert ack["rows"] == t.num_rows
    return ack


def get(client, name):
    return client.do_get(fl.Ticket(name.encode()), options=CALL).read_all()


def action(client, name, body=b""):
    return json.loads(next(iter(client.do_action(fl.Action(name, body), options=CALL))).body.to_pybytes())


def test_profile_is_the_runtime_default_plus_io_uring():
    p = json.loads(PROFILE.read_text())
    assert p["defaultAction"] == "SCMP_ACT_ERRNO" and p["defaultErrnoRet"] == 1
    # docker refuses a profile with both; the chart's runtime reads archMap.
    assert "architectures" not in p
    assert {a["architecture"] for a in p["archMap"]} >= {"SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"}
    unconditional = {n for e in p["syscalls"] if e["action"] == "SCMP_ACT_ALLOW"
                     and not (e.get("args") or e.get("includes") or e.get("excludes")) for n in e["names"]}
    assert {"io_uring_setup", "io_uring_enter", "io_uring_register", "socketpair", "sched_setaffinity",
            "prlimit64", "mlock", "fdatasync"} <= unconditional
    assert "unshare" not in unconditional and "mount" not in unconditional


PROBE = r"""
import ctypes, errno, json, socket
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    return 0 if libc.syscall(nr, *args) >= 0 else ctypes.get_errno()
def sock(family, kind):
    try:
        socket.socket(family, kind).close()
        return 0
    except OSError as e:
        return e.errno
print(json.dumps({
    "unshare": call(272, 0x10000000),        # unshare(CLONE_NEWUSER)
    "clone3": call(435, 0, 0),               # clone3(NULL, 0)
    "io_uring_setup": call(425, 0, 0),       # io_uring_setup(0, NULL)
    "af_alg": sock(38, socket.SOCK_SEQPACKET),
    "af_inet": sock(socket.AF_INET, socket.SOCK_STREAM),
}))
"""


def probe(loader_args=()):
    """Syscall results (0 or errno) of a process started under the profile."""
    r = subprocess.run(confined([SYSTEM_PYTHON, "-c", PROBE], loader_args=loader_args),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers are x86_64's")
def test_the_filter_refuses_what_the_profile_leaves_out():
    got = probe()
    assert got["unshare"] == 1  # EPERM: CAP_SYS_ADMIN only
    assert got["clone3"] == 38  # ENOSYS, the profile's errnoRet, so glibc falls back to clone
    assert got["af_alg"] == 1  # socket() is allowed by argument, AF_ALG is not
    assert got["af_inet"] == 0
    assert got["io_uring_setup"] not in (0, 1)  # reaches the kernel, which refuses the bad arguments
    # The capability conditions are judged: with CAP_SYS_ADMIN counted, clone3
    # gets to the kernel (EINVAL or EFAULT for the NULL argument).
    assert probe(["--cap-add", "CAP_SYS_ADMIN"])["clone3"] not in (0, 1, 38)


def test_without_socketpair_the_server_cannot_start(tmp_path):
    """The profile this one replaced lacked socketpair: tokio's signal driver
    panicked at start. The filter must reproduce that."""
    p = json.loads(PROFILE.read_text())
    for e in p["syscalls"]:
        e["names"] = [n for n in e["names"] if n != "socketpair"]
    old = tmp_path / "no-socketpair.json"
    old.write_text(json.dumps(p))
    r = subprocess.run(confined(server_args(tmp_path), profile=old), capture_output=True, text=True, timeout=60,
                       env={**os.environ, "RUST_BACKTRACE": "0"})
    assert r.returncode != 0 and "longbow ready" not in r.stdout
    assert "failed to create UnixStream" in r.stderr and "Operation not permitted" in r.stderr, r.stderr


def test_put_get_snapshot_reload_restart_and_crash_under_the_profile(tmp_path):
    conf = tmp_path / "longbow.conf"
    conf.write_text("LONGBOW_MAX_MEMORY=1GiB\nLONGBOW_SNAPSHOT_INTERVAL=1h\n")
    env = {"LONGBOW_CONFIG": str(conf)}
    t1, t2, t3, t4 = table(0, 500), table(500, 500), table(1000, 300), table(1300, 200)
    s = Server(tmp_path, env)
    try:
        c = s.client()
        a1, a2 = put(c, "events", t1), put(c, "events", t2)
        assert a2["lsn"] > a1["lsn"]
        put(c, "other", table(0, 7))
        assert get(c, "events").equals(pa.concat_tables([t1, t2]))
        assert get(c, "other").equals(table(0, 7))

        assert action(c, "force_snapshot")["rows_written"] == 1007
        files = sorted((tmp_path / "snapshots" / "events").glob("part-*.parquet"))
        assert files, list((tmp_path / "snapshots").rglob("*"))
        assert pq.read_table(files).sort_by("id").equals(pa.concat_tables([t1, t2]))

        stats = action(c, "get_stats")
        assert stats["max_memory_bytes"] == GIB and stats["snapshot_interval_seconds"] == 3600
        conf.write_text("LONGBOW_MAX_MEMORY=2GiB\nLONGBOW_SNAPSHOT_INTERVAL=5m\n")
        s.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while action(c, "get_stats")["snapshot_interval_seconds"] != 300 and time.monotonic() < deadline:
            time.sleep(0.1)
        stats = action(c, "get_stats")
        assert stats["max_memory_bytes"] == 2 * GIB and stats["snapshot_interval_seconds"] == 300, stats
        assert "SIGHUP: settings reloaded" in s.log_text()
        put(c, "events", t3)  # after the snapshot: in the WAL only
        assert get(c, "events").equals(pa.concat_tables([t1, t2, t3]))
        assert s.stop() == 0
    finally:
        s.kill()

    s = Server(tmp_path, env)  # clean restart
    try:
        c = s.client()
        assert get(c, "events").equals(pa.concat_tables([t1, t2, t3]))
        assert get(c, "other").equals(table(0, 7))
        assert action(c, "get_stats")["max_memory_bytes"] == 2 * GIB
        put(c, "events", t4)
        s.proc.send_signal(signal.SIGKILL)
        assert s.proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        s.kill()

    s = Server(tmp_path, env)  # after kill -9: snapshot + WAL replay
    try:
        c = s.client()
        assert get(c, "events").equals(pa.concat_tables([t1, t2, t3, t4]))
        assert get(c, "other").equals(table(0, 7))
        events = next(d for d in action(c, "get_stats")["per_dataset"] if d["name"] == "events")
        assert events["records"] == 1500 and events["snapshot_rows"] == 1000, events
        replayed = re.findall(r"WAL replayed segments=\d+ bytes=(\d+)", s.log_text())
        assert len(replayed) == 3 and int(replayed[-1]) > 0, replayed
        assert s.stop() == 0
    finally:
        s.kill()


def test_tls_under_the_profile(tmp_path):
    from test_tls import LOCALHOST, issue

    _, _, cert_pem, key_pem = issue("localhost", LOCALHOST)
    (tmp_path / "server.pem").write_bytes(cert_pem)
    (tmp_path / "server.key").write_bytes(key_pem)
    s = Server(tmp_path, env={"LONGBOW_TLS_CERT": str(tmp_path / "server.pem"),
                              "LONGBOW_TLS_KEY": str(tmp_path / "server.key")})
    try:
        c = fl.connect(f"grpc+tls://localhost:{s.port}", tls_root_certs=cert_pem)
        t = table(0, 100)
        put(c, "secure", t)
        assert get(c, "secure").equals(t)
        with pytest.raises(fl.FlightUnavailableError):
            list(fl.connect(f"grpc://localhost:{s.port}").list_flights(options=CALL))  # plaintext refused
        assert s.stop() == 0
    finally:
        s.kill()
    assert "TLS on" in s.log_text()


def test_containerd_reading_of_the_profile(tmp_path):
    """containerd ignores archMap, includes and excludes in a Localhost
    profile and applies every entry: the server must run that way too."""
    s = Server(tmp_path, loader_args=["--runtime", "containerd"])
    try:
        c = s.client()
        t = table(0, 50)
        put(c, "d", t)
        assert get(c, "d").equals(t)
        assert s.stop() == 0
    finally:
        s.kill()
