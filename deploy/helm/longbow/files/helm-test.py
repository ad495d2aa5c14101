"""`helm test`: a put and a get through the release's Service, then the
dataset is dropped again. Run by templates/tests/put-get.yaml in a plain
Python image; pyarrow is installed into /tmp when the image lacks it
(LONGBOW_TEST_PIP names the requirement; empty: never install).

Environment: LONGBOW_TEST_ADDR (grpc:// or grpc+tls://host:port),
LONGBOW_TEST_TLS_DIR (the server's TLS secret: ca.crt, else tls.crt, is
trusted), LONGBOW_TEST_CLIENT_TLS_DIR (tls.crt/tls.key presented for mutual
TLS), LONGBOW_TEST_SERVER_NAME (the name checked in the server's
certificate, when not the host), LONGBOW_TEST_TOKEN (bearer token)."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

SITE = "/tmp/site"

try:
    import pyarrow.flight  # noqa: F401
except ImportError:
    requirement = os.environ.get("LONGBOW_TEST_PIP", "")
    if not requirement:
        raise
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-cache-dir", "--disable-pip-version-check",
         "--target", SITE, requirement],
        check=True,
    )
    sys.path.insert(0, SITE)

import pyarrow as pa  # noqa: E402
import pyarrow.flight as fl  # noqa: E402

ROWS = 1000


def main():
    addr = os.environ["LONGBOW_TEST_ADDR"]
    kwargs = {}
    if tls_dir := os.environ.get("LONGBOW_TEST_TLS_DIR"):
        tls = Path(tls_dir)
        root = tls / "ca.crt" if (tls / "ca.crt").exists() else tls / "tls.crt"
        kwargs["tls_root_certs"] = root.read_bytes()
    if client_dir := os.environ.get("LONGBOW_TEST_CLIENT_TLS_DIR"):
        kwargs["cert_chain"] = (Path(client_dir) / "tls.crt").read_bytes()
        kwargs["private_key"] = (Path(client_dir) / "tls.key").read_bytes()
    if server_name := os.environ.get("LONGBOW_TEST_SERVER_NAME"):
        kwargs["override_hostname"] = server_name
    headers = []
    if token := os.environ.get("LONGBOW_TEST_TOKEN"):
        headers.append((b"authorization", f"Bearer {token}".encode()))
    options = fl.FlightCallOptions(headers=headers, timeout=60)

    client = fl.connect(addr, **kwargs)
    name = f"helm-test-{uuid.uuid4().hex[:12]}"
    table = pa.table({
        "id": pa.array(range(ROWS), pa.int64()),
        "name": pa.array([f"row-{i}" for i in range(ROWS)], pa.string()),
    })

    writer, acks = client.do_put(fl.FlightDescriptor.for_path(name), table.schema, options)
    writer.write_table(table)
    writer.done_writing()
    stored = 0
    while (buf := acks.read()) is not None:
        stored += json.loads(buf.to_pybytes())["rows"]
    writer.close()
    assert stored == ROWS, f"{stored} of {ROWS} rows acknowledged as durable"

    got = client.do_get(fl.Ticket(name.encode()), options).read_all()
    assert got.sort_by("id").equals(table), f"read back {got.num_rows} rows, not the {ROWS} written"

    list(client.do_action(fl.Action("drop_dataset", name.encode()), options))
    print(f"ok: {ROWS} rows put to and read back from {addr} (dataset {name}, dropped)")


if __name__ == "__main__":
    main()
