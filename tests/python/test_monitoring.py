"""The alerts and the dashboard against a real Prometheus: the rules' unit
tests (`promtool test rules`), then Debian's `prometheus` scraping a running
server every second (OpenMetrics, as it negotiates) while pyarrow loads it;
every dashboard query and every alert expression must parse, the
dashboard's return series, the alerts' underlying series exist, and
Prometheus evaluates every rule without error."""

import json
import math
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pyarrow.flight as fl
import pytest
import yaml

from test_pyarrow_e2e import ROOT, Server, put, vectors

RULES = ROOT / "deploy" / "prometheus" / "longbow-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "longbow-rules.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "longbow.json"
# The dashboard's template variables, as Grafana would fill them in.
RATE_INTERVAL = "30s"
# Panels whose every query must have a finite value above 0 after the load.
MUST_BE_POSITIVE = {"Ingest rate", "WAL write rate", "Acknowledgement latency", "Group commit size",
                    "Memory vs limit", "Disk usage", "WAL on disk", "Since the last successful snapshot", "Reads"}
# Alerts about the machine the test runs on, not the load.
HOST_DEPENDENT = {"LongbowVolumeNearFull"}


def promtool(*args):
    assert shutil.which("promtool"), "promtool missing: scripts/test.sh installs Debian's prometheus"
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


def test_rules_check_and_unit_tests_pass():
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    r = promtool("test", "rules", str(RULE_TESTS))
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_every_alert_has_a_unit_test():
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing = {c["alertname"] for t in tests for c in t.get("alert_rule_test", []) if c["exp_alerts"]}
    quiet = {c["alertname"] for t in tests for c in t.get("alert_rule_test", []) if not c["exp_alerts"]}
    assert alerts == firing == quiet, (alerts, firing, quiet)


def dashboard_queries():
    """(panel title, expression) of every dashboard target, variables filled in."""
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for t in panel.get("targets", []):
            expr = t["expr"].replace("$__rate_interval", RATE_INTERVAL).replace("$instance", ".*")
            assert "$" not in expr, expr
            out.append((panel["title"], expr))
    return out


def alert_rules():
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, tmp: Path, target: str):
        self.addr = f"127.0.0.1:{free_port()}"
        config = tmp / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "longbow", "static_configs": [{"targets": [target]}]}],
        }))
        self.log = open(tmp / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address={self.addr}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            assert self.proc.poll() is None, (tmp / "prometheus.log").read_text()
            try:
                with urllib.request.urlopen(f"http://{self.addr}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "prometheus not ready"
            time.sleep(0.2)

    def api(self, path, **params):
        url = f"http://{self.addr}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:  # a bad query is a 400 with a JSON body
            return json.load(e)

    def query(self, expr):
        return self.api("query", query=expr)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def scraped(tmp_path):
    assert shutil.which("prometheus"), "prometheus missing: scripts/test.sh installs Debian's prometheus"
    server = Server(tmp_path / "data", extra=["--max-memory", "256MiB"])
    prometheus = None
    try:
        prometheus = Prometheus(tmp_path, server.metrics)
        yield server, prometheus
    finally:
        if prometheus:
            prometheus.stop()
        server.kill()


def wait_for(prometheus, expr, what, timeout=30):
    deadline = time.time() + timeout
    while True:
        r = prometheus.query(expr)
        if r["status"] == "success" and r["data"]["result"]:
            return r["data"]["result"]
        assert time.time() < deadline, f"{what}: {r}"
        time.sleep(0.5)


def test_dashboard_and_alerts_on_a_scraped_server(scraped):
    server, prometheus = scraped
    wait_for(prometheus, 'up{job="longbow"} == 1', "the first scrape")
    # Load for a few seconds, so that every rate window holds increases.
    c = server.client()
    started = time.time()
    i = 0
    while time.time() - started < 5:
        put(c, f"d{i % 4}", [vectors(i * 64, 64), vectors(i * 64 + 32, 32)])
        assert c.do_get(fl.Ticket(f"d{i % 4}".encode())).read_all().num_rows > 0
        i += 1
    with pytest.raises(KeyError):  # NOT_FOUND: the errors panel has a series
        c.do_get(fl.Ticket(b"missing")).read_all()
    list(c.do_action(fl.Action("force_snapshot", b"")))
    put(c, "d0", [vectors(10**6, 10)])  # rows not yet in a snapshot
    time.sleep(3)  # a few more scrapes and rule evaluations
    wait_for(prometheus, "longbow_snapshot_last_success_timestamp_seconds", "the snapshot, scraped")

    target = prometheus.api("targets")["data"]["activeTargets"]
    assert [(t["health"], t["lastError"]) for t in target] == [("up", "")], target

    for title, expr in dashboard_queries():
        r = prometheus.query(expr)
        assert r["status"] == "success", (title, expr, r)
        result = r["data"]["result"]
        assert result, f"dashboard panel {title!r}: no series for {expr}"
        if title in MUST_BE_POSITIVE:
            values = [float(s["value"][1]) for s in result]
            assert any(math.isfinite(v) and v > 0 for v in values), (title, expr, result)

    for rule in alert_rules():
        r = prometheus.query(rule["expr"])
        assert r["status"] == "success", (rule["alert"], r)
        names = set(re.findall(r"\b(?:longbow|process)_[a-z_]+\b", rule["expr"]))
        assert names, rule["alert"]
        for name in names:
            assert prometheus.query(name)["data"]["result"], f"{rule['alert']}: no series {name}"
        # After a clean load nothing fires (but the host's disk may be full).
        if rule["alert"] not in HOST_DEPENDENT:
            assert not r["data"]["result"], (rule["alert"], r["data"]["result"])

    # Prometheus itself evaluated every rule, without error.
    groups = prometheus.api("rules")["data"]["groups"]
    evaluated = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(evaluated) == {r["alert"] for r in alert_rules()}
    for name, r in evaluated.items():
        assert r["health"] == "ok" and not r.get("lastError"), (name, r)
        assert r["state"] == "inactive" or name in HOST_DEPENDENT, (name, r)
