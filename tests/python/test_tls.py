"""TLS on the Flight port with pyarrow's `grpc+tls://` client: a certificate
generated here (SAN localhost and 127.0.0.1), a round trip, clients that
must be refused, mutual TLS, and the startup errors for bad TLS files."""

import datetime
import ipaddress
import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as fl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("LONGBOW_BIN", Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "longbow"))
# No call may hang the suite: a refused client fails within this.
CALL = fl.FlightCallOptions(timeout=15)


def issue(common_name, sans=(), issuer=None, ca=False):
    """A certificate and its key (PEM bytes), self-signed or signed by
    `issuer` = (cert, key) objects. Returns (cert, key, cert_pem, key_pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert, key, cert.public_bytes(serialization.Encoding.PEM), key_pem


LOCALHOST = (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    _, _, server_pem, server_key = issue("localhost", LOCALHOST)  # self-signed
    ca_cert, ca_key, ca_pem, _ = issue("longbow test client CA", ca=True)
    _, _, client_pem, client_key = issue("client-1", issuer=(ca_cert, ca_key))
    other_ca = issue("some other CA", ca=True)
    _, _, stranger_pem, stranger_key = issue("stranger", issuer=other_ca[:2])
    files = {"server.pem": server_pem, "server.key": server_key, "client-ca.pem": ca_pem,
             "client.pem": client_pem, "client.key": client_key,
             "stranger.pem": stranger_pem, "stranger.key": stranger_key}
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d


class Server:
    def __init__(self, tmp: Path, extra=(), env=None):
        self.log_path = tmp / "longbow.log"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(BINARY), "--data-path", str(tmp / "data"), "--snapshot-path", str(tmp / "snapshots"),
             "--shards", "1", "--listen-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
             "--pin-cores", "false", *extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env={**os.environ, **(env or {})})
        for line in self.proc.stdout:
            if line.startswith("longbow ready"):
                fields = dict(w.split("=", 1) for w in line.split()[2:])
                self.flight, self.metrics = fields["flight"], fields["metrics"]
                self.port = int(self.flight.rsplit(":", 1)[1])
                return
        raise RuntimeError(f"longbow exited with {self.proc.wait()}: {self.log_path.read_text()}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def table(n=100):
    return pa.table({"id": pa.array(range(n), pa.int32()), "name": pa.array([f"row-{i}" for i in range(n)])})


def round_trip(client, name):
    t = table()
    writer, reader = client.do_put(fl.FlightDescriptor.for_path(name), t.schema, options=CALL)
    writer.write_table(t)
    assert reader.read() is not None  # the PutResult: durable
    writer.done_writing()
    writer.close()
    assert client.do_get(fl.Ticket(name.encode()), options=CALL).read_all().equals(t)


def refused(client, reason=None):
    """A call that must fail at connection time (handshake or first read),
    not by timing out."""
    with pytest.raises(fl.FlightUnavailableError, match=reason):
        list(client.list_flights(options=CALL))


def test_put_get_over_tls_and_clients_without_the_root_are_refused(pki, tmp_path):
    # Through the environment, as the Helm chart sets them.
    s = Server(tmp_path, env={"LONGBOW_TLS_CERT": str(pki / "server.pem"), "LONGBOW_TLS_KEY": str(pki / "server.key")})
    try:
        root = (pki / "server.pem").read_bytes()
        client = fl.connect(f"grpc+tls://localhost:{s.port}", tls_root_certs=root)
        round_trip(client, "secure")
        assert [f.descriptor.path for f in client.list_flights(options=CALL)] == [[b"secure"]]
        # The IP address SAN works too.
        assert fl.connect(f"grpc+tls://127.0.0.1:{s.port}", tls_root_certs=root).do_get(
            fl.Ticket(b"secure"), options=CALL).read_all().num_rows == 100

        refused(fl.connect(f"grpc+tls://localhost:{s.port}"), "certificate verify failed")  # system roots only
        refused(fl.connect(f"grpc://localhost:{s.port}"))  # plaintext
        # Metrics stay plain HTTP on their own port.
        assert b"longbow_" in urllib.request.urlopen(f"http://{s.metrics}/metrics", timeout=10).read()
        assert s.stop() == 0
    finally:
        s.kill()
    assert "TLS on" in s.log_path.read_text()


def test_mutual_tls(pki, tmp_path):
    s = Server(tmp_path, extra=["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
                                "--tls-client-ca", str(pki / "client-ca.pem")])
    try:
        root = (pki / "server.pem").read_bytes()
        uri = f"grpc+tls://localhost:{s.port}"
        client = fl.connect(uri, tls_root_certs=root, cert_chain=(pki / "client.pem").read_bytes(),
                            private_key=(pki / "client.key").read_bytes())
        round_trip(client, "mtls")
        refused(fl.connect(uri, tls_root_certs=root))  # no client certificate
        refused(fl.connect(uri, tls_root_certs=root, cert_chain=(pki / "stranger.pem").read_bytes(),
                           private_key=(pki / "stranger.key").read_bytes()))  # from an untrusted CA
        assert s.stop() == 0
    finally:
        s.kill()


@pytest.mark.parametrize("case", ["key-only", "cert-only", "garbage-cert", "garbage-key", "foreign-key"])
def test_bad_tls_settings_stop_startup_with_a_clear_error(pki, tmp_path, case):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not PEM\n")
    cert, key = str(pki / "server.pem"), str(pki / "server.key")
    extra, expected = {
        "key-only": (["--tls-key", key], "LONGBOW_TLS_CERT"),
        "cert-only": (["--tls-cert", cert], "LONGBOW_TLS_KEY"),
        "garbage-cert": (["--tls-cert", str(garbage), "--tls-key", key], "garbage.pem"),
        "garbage-key": (["--tls-cert", cert, "--tls-key", str(garbage)], "garbage.pem"),
        "foreign-key": (["--tls-cert", cert, "--tls-key", str(pki / "client.key")], "rejected"),
    }[case]
    r = subprocess.run(
        [str(BINARY), "--data-path", str(tmp_path / "data"), "--snapshot-path", str(tmp_path / "snapshots"),
         "--shards", "1", "--listen-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--pin-cores", "false",
         *extra], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "longbow ready" not in r.stdout
    assert expected in r.stderr and "panicked" not in r.stderr, r.stderr


@pytest.mark.parametrize("client_auth", [False, True])
def test_helm_chart_mounts_the_tls_secret(client_auth):
    import helm_python as helm
    import kubernetes_validate
    import yaml

    chart_dir = ROOT / "deploy" / "helm" / "longbow"
    values = {"tls": {"enabled": True, "secretName": "longbow-tls", "clientAuth": client_auth}}
    if client_auth:
        # The helm test pod then needs a client certificate of its own.
        values["tests"] = {"tlsClientSecretName": "longbow-tls-client"}
    report = helm.lint(chart_dir, values, strict=True, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems
    chart = helm.Chart.load(chart_dir)
    try:
        out = chart.render(values, name="lb", namespace="data", is_install=True)
    finally:
        chart.close()
    docs = [d for path, text in out.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
    for d in docs:
        if not d["apiVersion"].startswith("monitoring.coreos.com"):
            kubernetes_validate.validate(d, "1.30.0", strict=True)
    pod = next(d for d in docs if d["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["LONGBOW_TLS_CERT"] == "/etc/longbow-tls/tls.crt"
    assert env["LONGBOW_TLS_KEY"] == "/etc/longbow-tls/tls.key"
    assert ("LONGBOW_TLS_CLIENT_CA" in env) == client_auth
    assert {"name": "tls", "mountPath": "/etc/longbow-tls", "readOnly": True} in c["volumeMounts"]
    secret = next(v for v in pod["volumes"] if v["name"] == "tls")["secret"]
    assert secret["secretName"] == "longbow-tls" and secret["defaultMode"] == 0o440
    # The kubelet's gRPC probe cannot do TLS: plain HTTP /healthz on metrics.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe].get("httpGet") == {"path": "/healthz", "port": 9090} and "grpc" not in c[probe], c[probe]


def test_bench_harness_over_tls(pki, tmp_path):
    """longbow-bench reaches a TLS server with --tls-ca, and says what is
    missing without it."""
    bench = Path(os.environ.get("LONGBOW_BENCH_BIN", BINARY.with_name("longbow-bench")))
    s = Server(tmp_path, extra=["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")])
    try:
        target = f"https://localhost:{s.port}"
        p = subprocess.run([str(bench), "put", "--target", target, "--tls-ca", str(pki / "server.pem"),
                            "--total-rows", "2000", "--output-format", "json"],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["jobs"][0]["write"]["rows"] == 2000
        p = subprocess.run([str(bench), "put", "--target", target, "--total-rows", "2000"],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode != 0 and "give the CA certificate with --tls-ca" in p.stderr, p.stderr
        assert s.stop() == 0
    finally:
        s.kill()


@pytest.mark.parametrize("mutual", [True, False], ids=["mutual-tls", "one-shared-certificate"])
def test_three_nodes_forward_to_each_other_over_tls(tmp_path, mutual):
    """Peers named grpc+tls://. With mutual TLS each node trusts the CA of
    LONGBOW_TLS_CLIENT_CA for its peers too, and presents its own
    certificate to them; without, nodes that share one self-signed
    certificate trust it. Writes through one node reach every owner, and
    every node serves every dataset."""
    from test_cluster import Node, free_ports, read_all
    from test_pyarrow_e2e import put, vectors

    ca_cert, ca_key, ca_pem, _ = issue("longbow cluster CA", ca=True)
    if mutual:
        _, _, node_pem, node_key = issue("longbow node", LOCALHOST, issuer=(ca_cert, ca_key))
        _, _, client_pem, client_key = issue("client", issuer=(ca_cert, ca_key))
        creds = {"tls_root_certs": ca_pem, "cert_chain": client_pem, "private_key": client_key}
    else:
        _, _, node_pem, node_key = issue("longbow node", LOCALHOST)
        creds = {"tls_root_certs": node_pem}
    for name, data in {"ca.pem": ca_pem, "node.pem": node_pem, "node.key": node_key}.items():
        (tmp_path / name).write_bytes(data)
    tls = ["--tls-cert", str(tmp_path / "node.pem"), "--tls-key", str(tmp_path / "node.key")]
    if mutual:
        tls += ["--tls-client-ca", str(tmp_path / "ca.pem")]
    ports = free_ports(3)
    peers = [f"grpc+tls://127.0.0.1:{p}" for p in ports]
    nodes = [Node(tmp_path, i, peers, ports[i], extra=tls) for i in range(3)]
    try:
        c = nodes[0].client(**creds)
        names = [f"t-{i}" for i in range(9)]
        for k, name in enumerate(names):
            acks = put(c, name, [vectors(k * 100, 100)])
            assert [a["rows"] for a in acks] == [100]
        owners = set()
        for n in nodes:
            client = n.client(**creds)
            for k, name in enumerate(names):
                assert sorted(read_all(client, name).column("id").to_pylist()) == list(range(k * 100, k * 100 + 100))
                info = client.get_flight_info(fl.FlightDescriptor.for_path(name))
                owners.add(info.endpoints[0].locations[0].uri.decode())
        assert owners == set(peers), "the datasets spread over the three nodes, each named by its TLS URL"
    finally:
        for n in nodes:
            n.kill()


def test_tls_peers_need_the_node_to_serve_tls(tmp_path):
    from test_cluster import free_ports

    ports = free_ports(2)
    proc = subprocess.run(
        [str(BINARY), "--data-path", str(tmp_path / "data"), "--snapshot-path", str(tmp_path / "snapshots"),
         "--shards", "1", "--listen-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--pin-cores", "false",
         "--node-id", "0", "--peers", ",".join(f"grpc+tls://127.0.0.1:{p}" for p in ports)],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "this node needs --tls-cert and --tls-key" in proc.stderr, proc.stderr[-2000:]
