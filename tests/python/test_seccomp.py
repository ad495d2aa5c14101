"""The shipped seccomp profiles run the real server: put, get, snapshot,
SIGHUP reload, TLS, clean restart and kill -9 with WAL replay, each under the
filter a runtime would build (scripts/seccomp_exec.py, libseccomp through the
system interpreter's python3-seccomp), in two readings: Docker's of
deploy/seccomp/seccomp-longbow.docker.json (moby's conditional format) and
containerd's of the chart's deploy/helm/longbow/files/seccomp-longbow.json
(the same profile with its conditions resolved by scripts/seccomp_resolve.py).
The chart's file is what the generator writes from the source, it gives the
filter Docker would give the chart's container on x86_64 and aarch64, and the
filter does refuse: syscalls outside the profile fail (unshare too, which
containerd's reading of the conditional source lets through), and the
profile without socketpair stops the server as the old one did."""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as fl
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("LONGBOW_BIN", Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "longbow"))
SOURCE = ROOT / "deploy" / "seccomp" / "seccomp-longbow.docker.json"  # moby's format, conditions and all
PROFILE = ROOT / "deploy" / "helm" / "longbow" / "files" / "seccomp-longbow.json"  # the chart's: resolved
LOADER = ROOT / "scripts" / "seccomp_exec.py"
RESOLVER = ROOT / "scripts" / "seccomp_resolve.py"
SYSTEM_PYTHON = "/usr/bin/python3"
# The Helm chart's container: drop ALL, add IPC_LOCK and SYS_RESOURCE
# (test_resolved_for_the_charts_capabilities checks it against the chart).
CHART_CAPS = ["--cap-drop", "ALL", "--cap-add", "CAP_IPC_LOCK", "--cap-add", "CAP_SYS_RESOURCE"]
# How a node builds its filter: (profile, runtime reading).
READINGS = {
    "docker-source": (SOURCE, "docker"),  # docker run --security-opt seccomp=...; CRI-O reads it alike
    "chart-containerd": (PROFILE, "containerd"),  # Kubernetes Localhost on containerd
    "chart-docker": (PROFILE, "docker"),  # Localhost on CRI-O
}
SERVER_READINGS = ["docker-source", "chart-containerd"]
CALL = fl.FlightCallOptions(timeout=15)
GIB = 1 << 30

pytestmark = pytest.mark.skipif(
    subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"], capture_output=True).returncode != 0,
    reason="needs python3-seccomp for /usr/bin/python3 (scripts/test.sh installs it)")


def confined(command, reading="chart-containerd", profile=None, loader_args=()):
    path, runtime = READINGS[reading]
    return [SYSTEM_PYTHON, str(LOADER), str(profile or path), "--runtime", runtime, *CHART_CAPS, *loader_args,
            "--", *command]


def server_args(tmp):
    shards = 2 if len(os.sched_getaffinity(0)) >= 2 else 1
    # Pinning is on, as in the chart: sched_setaffinity goes through the filter too.
    return [str(BINARY), "--data-path", str(tmp / "data"), "--snapshot-path", str(tmp / "snapshots"),
            "--shards", str(shards), "--listen-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"]


class Server:
    """longbow under the profile; the loader execs it, so proc.pid is the server."""

    def __init__(self, tmp: Path, reading, env=None):
        self.log_path = tmp / "longbow.log"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            confined(server_args(tmp), reading), stdout=subprocess.PIPE, stderr=self.log,
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


NEEDED = {"io_uring_setup", "io_uring_enter", "io_uring_register", "socketpair", "sched_setaffinity", "prlimit64",
          "mlock", "fdatasync"}
# Entries of the default profile kept for CAP_SYS_ADMIN, CAP_SYS_CHROOT, CAP_DAC_READ_SEARCH.
ADMIN_ONLY = {"unshare", "mount", "setns", "bpf", "umount2", "chroot", "open_by_handle_at"}


def allowed_names(p):
    return {n for e in p["syscalls"] if e["action"] == "SCMP_ACT_ALLOW" for n in e["names"]}


def test_source_is_the_runtime_default_plus_io_uring():
    p = json.loads(SOURCE.read_text())
    assert p["defaultAction"] == "SCMP_ACT_ERRNO" and p["defaultErrnoRet"] == 1
    # docker refuses a profile with both; Docker and CRI-O read archMap.
    assert "architectures" not in p
    assert {a["architecture"] for a in p["archMap"]} >= {"SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"}
    unconditional = {n for e in p["syscalls"] if e["action"] == "SCMP_ACT_ALLOW"
                     and not (e.get("args") or e.get("includes") or e.get("excludes")) for n in e["names"]}
    assert NEEDED <= unconditional
    assert not ADMIN_ONLY & unconditional
    assert ADMIN_ONLY - {"chroot", "open_by_handle_at"} <= allowed_names(p)  # for CAP_SYS_ADMIN, conditionally


def test_chart_profile_is_flat():
    """Nothing left for containerd to ignore: every entry applies, and none of
    them is one the default profile keeps for CAP_SYS_ADMIN and the like."""
    p = json.loads(PROFILE.read_text())
    assert p["defaultAction"] == "SCMP_ACT_ERRNO" and p["defaultErrnoRet"] == 1
    assert "archMap" not in p
    assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64",
                                  "SCMP_ARCH_ARM"]
    assert not [e for e in p["syscalls"] if "includes" in e or "excludes" in e]
    assert NEEDED <= allowed_names(p)
    assert not ADMIN_ONLY & allowed_names(p)
    assert "Generated by scripts/seccomp_resolve.py" in p["comment"]


def resolver():
    spec = importlib.util.spec_from_file_location("seccomp_resolve", RESOLVER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resolved_for_the_charts_capabilities(tmp_path):
    """The chart's file is what the generator writes from the source for the
    capabilities the rendered StatefulSet gives the container, so the two
    cannot drift apart, nor the profile from the chart."""
    from test_helm_chart import render

    sts = next(d for d in render(None) if d["kind"] == "StatefulSet")
    caps = sts["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"], caps  # so the set is exactly what is added
    assert sorted(f"CAP_{c}" for c in caps["add"]) == sorted(resolver().CHART_CAPS)
    out = tmp_path / "resolved.json"
    r = subprocess.run([sys.executable, str(RESOLVER), str(SOURCE), "-o", str(out),
                        "--caps", ",".join(f"CAP_{c}" for c in caps["add"]), "--arch", "x86_64", "--arch", "aarch64"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == PROFILE.read_text(), "run scripts/seccomp_resolve.py and commit the result"
    # The defaults are the chart's, and --check tells a stale file.
    assert subprocess.run([sys.executable, str(RESOLVER), "--check"], capture_output=True).returncode == 0
    out.write_text(out.read_text().replace('"mlock",', '"mlock", "unshare",', 1))
    r = subprocess.run([sys.executable, str(RESOLVER), "-o", str(out), "--check"], capture_output=True, text=True)
    assert r.returncode == 1 and "out of date" in r.stderr, r.stderr


def test_resolver_refuses_what_a_flat_profile_cannot_say(tmp_path):
    """An arch-conditioned name that is a syscall on another target too, or a
    refusing entry whose kernel condition depends on the node, stops it."""
    m = resolver()
    p = json.loads(SOURCE.read_text())
    p["syscalls"].append({"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}})
    with pytest.raises(m.Unresolvable, match="'arch_prctl' is a syscall on SCMP_ARCH_X32, SCMP_ARCH_X86, "):
        m.resolve(p, m.CHART_CAPS, m.CHART_ARCHES, m.MIN_KERNEL)
    p["syscalls"][-1]["names"] = ["clone"]  # not in the table: not guessed
    with pytest.raises(m.Unresolvable, match="not known on which architectures 'clone' exists"):
        m.resolve(p, m.CHART_CAPS, m.CHART_ARCHES, m.MIN_KERNEL)
    p = json.loads(SOURCE.read_text())
    p["syscalls"].append({"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "includes": {"minKernel": "7.1"}})
    with pytest.raises(m.Unresolvable, match="depends on the node"):
        m.resolve(p, m.CHART_CAPS, m.CHART_ARCHES, m.MIN_KERNEL)
    # An allow that depends on the node's kernel is dropped; one every supported kernel satisfies is kept.
    p = json.loads(SOURCE.read_text())
    p["syscalls"].append({"names": ["keyctl"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "7.1"}})
    p["syscalls"].append({"names": ["add_key"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "5.8"}})
    flat, _ = m.resolve(p, m.CHART_CAPS, m.CHART_ARCHES, m.MIN_KERNEL)
    assert "keyctl" not in allowed_names(flat) and "add_key" in allowed_names(flat)


def system_python(script, *args):
    r = subprocess.run([SYSTEM_PYTHON, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_arch_only_table_matches_libseccomp():
    """The resolver keeps an arch-conditioned entry for one target only if its
    names are syscalls nowhere else; its table must be libseccomp's."""
    table = resolver().ARCH_ONLY
    real = system_python("""
import json, sys, seccomp
arches = ["X86_64", "X86", "X32", "AARCH64", "ARM"]
print(json.dumps({n: sorted("SCMP_ARCH_" + a for a in arches if seccomp.resolve_syscall(getattr(seccomp.Arch, a), n) >= 0)
                  for n in sys.argv[1:]}))
""", *table)
    assert real == {n: sorted(a) for n, a in table.items()}


PFC = """
import json, sys
sys.path.insert(0, sys.argv[1])
import seccomp_exec
profile, runtime, machine, out = json.load(open(sys.argv[2])), sys.argv[3], sys.argv[4], sys.argv[5]
flags = list(zip(sys.argv[6::2], sys.argv[7::2]))
caps = seccomp_exec.capabilities([c for k, c in flags if k == "--cap-drop"], [c for k, c in flags if k == "--cap-add"])
f, _ = seccomp_exec.build(profile, runtime, caps, machine)
with open(out, "w") as fh:
    f.export_pfc(fh)
print("null")
"""


def filter_rules(tmp, profile, runtime, machine):
    """The filter libseccomp builds for the chart's container on a node of
    `machine`, per architecture:
    {arch: ({syscall name: its rules}, default action)}. Rules for names that
    are no syscall there (libseccomp's negative pseudo numbers, which no
    process can make) are left out: runc adds them for every profile."""
    pfc = tmp / f"{profile.stem}-{runtime}-{machine}.pfc"
    system_python(PFC, LOADER.parent, profile, runtime, machine, pfc, *CHART_CAPS)
    sections = {}
    for part in re.split(r"^# filter for arch ", pfc.read_text(), flags=re.M)[1:]:
        body = part.split("# invalid architecture action")[0]
        rules = {}
        for block in re.split(r"^  # filter for syscall ", body, flags=re.M)[1:]:
            name, number = re.match(r'"([^"]+)" \((\d+)\)', block).groups()
            if int(number) < 1 << 31:
                rules[name] = block
        sections[part.split()[0]] = (rules, body.split("  # default action")[1])
    return sections


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_chart_profile_builds_dockers_filter(tmp_path, machine):
    """containerd's reading of the chart's file gives a node of each chart
    architecture, for every architecture its filter covers (native and
    compat), the very rules Docker's reading of the conditional source gives
    the chart's container there (kernel >= 4.8, as every kernel that runs
    glommio). containerd's reading of the source does not: that is the bug the
    resolved file fixes."""
    docker = filter_rules(tmp_path, SOURCE, "docker", machine)
    chart = filter_rules(tmp_path, PROFILE, "containerd", machine)
    assert set(docker) == ({"x86_64", "x86", "x32"} if machine == "x86_64" else {"aarch64", "arm"})
    for arch, (rules, default) in docker.items():
        assert chart[arch][1] == default
        assert sorted(chart[arch][0]) == sorted(rules), arch
        assert chart[arch][0] == rules, arch
    loose = filter_rules(tmp_path, SOURCE, "containerd", machine)
    native = "x86_64" if machine == "x86_64" else "aarch64"
    assert set(loose) == {native}  # no `architectures` in the source: the native one only
    assert {"unshare", "mount", "setns", "bpf"} <= set(loose[native][0]) - set(docker[native][0])


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
    "unshare_bad": call(272, 0x10000001),    # unshare(CLONE_NEWUSER | an invalid bit): EINVAL if it gets through
    "clone3": call(435, 0, 0),               # clone3(NULL, 0)
    "io_uring_setup": call(425, 0, 0),       # io_uring_setup(0, NULL)
    "af_alg": sock(38, socket.SOCK_SEQPACKET),
    "af_inet": sock(socket.AF_INET, socket.SOCK_STREAM),
}))
"""


def probe(reading, profile=None, loader_args=()):
    """Syscall results (0 or errno) of a process started under the profile."""
    r = subprocess.run(confined([SYSTEM_PYTHON, "-c", PROBE], reading, profile, loader_args),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


x86_64_only = pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers are x86_64's")


@x86_64_only
@pytest.mark.parametrize("reading", READINGS)
def test_the_filter_refuses_what_the_profile_leaves_out(reading):
    got = probe(reading)
    assert got["unshare"] == 1 and got["unshare_bad"] == 1  # EPERM from the filter: CAP_SYS_ADMIN only
    assert got["clone3"] == 38  # ENOSYS, the profile's errnoRet, so glibc falls back to clone
    assert got["af_alg"] == 1  # socket() is allowed by argument, AF_ALG is not
    assert got["af_inet"] == 0
    assert got["io_uring_setup"] not in (0, 1)  # reaches the kernel, which refuses the bad arguments
    if reading == "docker-source":
        # The capability conditions are judged: with CAP_SYS_ADMIN counted,
        # clone3 gets to the kernel (EINVAL or EFAULT for the NULL argument).
        assert probe(reading, loader_args=["--cap-add", "CAP_SYS_ADMIN"])["clone3"] not in (0, 1, 38)


@x86_64_only
def test_containerd_lets_the_conditional_source_through():
    """Why the chart ships the resolved file: containerd applies every entry of
    the source, CAP_SYS_ADMIN's too, so unshare gets to the kernel (which
    refuses the invalid flag: EINVAL, not the filter's EPERM)."""
    got = probe("chart-containerd", profile=SOURCE)
    assert got["unshare_bad"] == 22
    assert got["clone3"] not in (0, 1, 38)


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


@pytest.mark.parametrize("reading", SERVER_READINGS)
def test_put_get_snapshot_reload_restart_and_crash_under_the_profile(tmp_path, reading):
    conf = tmp_path / "longbow.conf"
    conf.write_text("LONGBOW_MAX_MEMORY=1GiB\nLONGBOW_SNAPSHOT_INTERVAL=1h\n")
    env = {"LONGBOW_CONFIG": str(conf)}
    t1, t2, t3, t4 = table(0, 500), table(500, 500), table(1000, 300), table(1300, 200)
    s = Server(tmp_path, reading, env)
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

    s = Server(tmp_path, reading, env)  # clean restart
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

    s = Server(tmp_path, reading, env)  # after kill -9: snapshot + WAL replay
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


@pytest.mark.parametrize("reading", SERVER_READINGS)
def test_tls_under_the_profile(tmp_path, reading):
    from test_tls import LOCALHOST, issue

    _, _, cert_pem, key_pem = issue("localhost", LOCALHOST)
    (tmp_path / "server.pem").write_bytes(cert_pem)
    (tmp_path / "server.key").write_bytes(key_pem)
    s = Server(tmp_path, reading, env={"LONGBOW_TLS_CERT": str(tmp_path / "server.pem"),
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

