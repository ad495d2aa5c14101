"""The targets table of a scripts/bench.sh run: each measure against its
reference from the same run, the ratio, the target and whether it is met.

Reads the result files bench.sh writes (py-throughput.jsonl,
py-latency.jsonl, memory.jsonl + memory-limit.json, fio.json), prints the
table and writes RESULTS_DIR/targets.json, which bench_report.py renders.
A measure whose inputs are missing is listed as not measured.

Usage: targets.py RESULTS_DIR
"""

import json
import sys
from pathlib import Path

# The targets (docs/benchmarks.md, "Targets").
CPU_PATH_MIN = 0.8  # longbow, WAL on tmpfs / Rust no-op sink
FIO_OVERWRITE_MIN = 0.9  # longbow, WAL on disk / fio 4 MiB write + fdatasync into written files
FSYNC_SERVER_MIN = 2.5  # longbow, WAL on disk / pyarrow fsync-per-batch server
MEMORY_LIMITED_MIN = 0.7  # limited / unlimited longbow, one producer writing 4x the limit
RSS_SLACK_MIB = 300  # peak RSS <= limit + this
P50_SLACK_US = 100  # p50 <= Rust sink p50 + fio write p50 + fio fdatasync p50 + this
P99_MAX = 1.3  # p99 <= this x (Rust sink p99 + fio write p99 + fio fdatasync p99)
SNAPSHOT_S3_MIN = 0.7  # force_snapshot MiB/s to S3 (SeaweedFS on loopback) / to a local directory
FORWARDED_MIN = 0.6  # DoPut MB/s through a node that proxies to the owner / sent to the owner

MIB_PER_MB = 1e6 / 2**20


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def load(path):
    return json.loads(path.read_text()) if path.exists() else {}


def row(measure, figure, unit, reference, reference_of, target, check, note=""):
    ok = ratio = None
    if figure is not None and reference is not None:
        ratio = figure / reference if reference else None
        ok = bool(check(figure, reference))
    return {"measure": measure, "figure": figure, "unit": unit, "reference": reference,
            "reference_of": reference_of, "ratio": None if ratio is None else round(ratio, 3), "target": target,
            "pass": ok, "note": note}


def get(d, key):
    return None if d is None else d.get(key)


def compute(res: Path):
    tp = {(r["label"], r.get("streams", 2)): r for r in jsonl(res / "py-throughput.jsonl")}
    lat = {r["label"]: r for r in jsonl(res / "py-latency.jsonl")}
    mem = {r["label"]: r for r in jsonl(res / "memory.jsonl")}
    limit = load(res / "memory-limit.json")
    fio = load(res / "fio.json")
    small = fio.get("small_sync") or load(res / "fio-small.json")
    rows = []

    for s in sorted({s for _, s in tp}) or [1, 2]:
        streams = f"{s} stream" + ("s" if s != 1 else "")
        mb = lambda label: get(tp.get((label, s)), "mb_per_s")
        rows.append(row(f"CPU path: longbow, WAL on tmpfs, {streams}", mb("longbow-tmpfs"), "MB/s",
                        mb("rust-null-sink"), "Rust no-op sink", f">= {CPU_PATH_MIN}x",
                        lambda f, r: f >= CPU_PATH_MIN * r))
        disk = mb("longbow")
        rows.append(row(f"WAL on disk, {streams}", None if disk is None else round(disk * MIB_PER_MB, 1), "MiB/s",
                        fio.get("write_overwrite_mib_s"),
                        f"fio 4 MiB O_DIRECT write + fdatasync, overwrite, {fio.get('jobs', '?')} jobs",
                        f">= {FIO_OVERWRITE_MIN}x", lambda f, r: f >= FIO_OVERWRITE_MIN * r))
        rows.append(row(f"WAL on disk, {streams}", disk, "MB/s", mb("pyarrow-fsync-server"),
                        "pyarrow fsync-per-batch server", f">= {FSYNC_SERVER_MIN}x",
                        lambda f, r: f >= FSYNC_SERVER_MIN * r))

    limited, unlimited = mem.get("longbow-limited"), mem.get("longbow-unlimited")
    limit_mib = limit.get("limit_mib")
    factor = limit.get("factor", 4)
    errors = get(limited, "errors")
    note = "" if limited is None else f"{errors} errors" + ("" if limited.get("complete", True) else ", incomplete")
    rows.append(row(f"one producer writing {factor}x LONGBOW_MAX_MEMORY ({limit_mib or '?'} MiB)", get(limited, "mb_per_s"),
                    "MB/s", get(unlimited, "mb_per_s"), "longbow without a limit, same load",
                    f">= {MEMORY_LIMITED_MIN}x, 0 errors",
                    lambda f, r: f >= MEMORY_LIMITED_MIN * r and errors == 0 and limited.get("complete", True),
                    note))
    rss = None
    if limited is not None and "rss_peak_mib" in limited:
        rss = max(limited["rss_peak_mib"], limited.get("rss_hwm_mib", 0))
    rows.append(row("RSS during that (peak)", rss, "MiB", limit_mib, "the limit", f"<= limit + {RSS_SLACK_MIB} MiB",
                    lambda f, r: f <= r + RSS_SLACK_MIB,
                    "" if rss is None or limit_mib is None else f"{rss - limit_mib:+,.0f} MiB over the limit"))
    rows.append(row("rows stored after that (DoGet)", get(limited, "rows_stored"), "rows", get(limited, "rows_acked"),
                    "rows acknowledged", "== acknowledged", lambda f, r: f == r))

    lb, sink = lat.get("longbow"), lat.get("rust-null-sink")
    for q, target, check in [
            ("p50", f"<= reference + {P50_SLACK_US} µs", lambda f, r: f <= r + P50_SLACK_US),
            ("p99", f"<= {P99_MAX}x", lambda f, r: f <= P99_MAX * r)]:
        parts = [get(sink, f"{q}_us"), get(small, f"write_{q}_us"), get(small, f"fdatasync_{q}_us")]
        ref = None if None in parts else round(sum(parts), 1)
        rows.append(row(f"10-row batches one at a time, {q}", get(lb, f"{q}_us"), "µs", ref,
                        f"Rust sink {q} + fio 8 KiB write {q} + fdatasync {q}", target, check,
                        "" if ref is None else " + ".join(f"{p:,.0f}" for p in parts)))

    def snapshot_mib_s(name):
        jobs = load(res / f"snapshot-{name}.json").get("jobs") or [{}]
        return get(jobs[0].get("snapshot"), "mib_per_s")
    s3, local, costs = snapshot_mib_s("s3"), snapshot_mib_s("local"), load(res / "s3-costs.json")
    note = ""
    if s3 and local and costs.get("weed_cpu_s_snapshot") is not None and costs.get("cores"):
        # SeaweedFS runs on the same CPUs: the upload cannot take less than
        # the encoding (a local snapshot's time, one core) plus the S3
        # server's CPU time, spread over every core.
        mib = costs["mib"]
        encode_s = mib / local
        floor_s = max(encode_s, (encode_s + costs["weed_cpu_s_snapshot"]) / costs["cores"])
        note = (f"SeaweedFS used {costs['weed_cpu_s_snapshot']:.2f} CPU-s of {costs['cores']} cores; "
                f"bound on this host {encode_s / floor_s:.2f}x")
    rows.append(row("snapshot to S3 (SeaweedFS on loopback)", s3, "MiB/s", local,
                    "snapshot to a local directory, same run", f">= {SNAPSHOT_S3_MIN}x",
                    lambda f, r: f >= SNAPSHOT_S3_MIN * r, note))
    rows.append(row("snapshot to S3 (SeaweedFS on loopback)", s3, "MiB/s", costs.get("raw_put_mib_s"),
                    "the S3 server's own PUT rate: boto3 multipart upload, same run", "reported",
                    lambda f, r: True))

    for streams in (1, 2):
        fwd = load(res / f"forward-{streams}.json").get("median_mb_per_s") or {}
        rows.append(row(f"DoPut forwarded through a non-owner, {streams} stream" + ("s" if streams > 1 else ""),
                        fwd.get("forwarded"), "MB/s", fwd.get("owner"), "the same DoPut sent to the owner (medians of 3)",
                        f">= {FORWARDED_MIN}x", lambda f, r: f >= FORWARDED_MIN * r))
    cluster = load(res / "cluster.json")
    rows.append(row("aggregate ingest, 3 one-shard nodes, clients spread over them",
                    cluster.get("three_one_shard_nodes_mb_per_s"), "MB/s", cluster.get("one_two_shard_node_mb_per_s"),
                    "one two-shard node, the same clients", "reported", lambda f, r: True))
    return rows


def fmt(x, digits=1):
    if x is None:
        return "–"
    return f"{x:,.0f}" if isinstance(x, int) or abs(x) >= 1000 else f"{x:,.{digits}f}"


def verdict(r):
    return "not measured" if r["pass"] is None else ("pass" if r["pass"] else "FAIL")


def table(rows):
    head = ["measure", "figure", "reference", "ratio", "target", "result"]
    body = [[r["measure"], f"{fmt(r['figure'])} {r['unit']}",
             f"{fmt(r['reference'])} {r['unit']} ({r['reference_of']})",
             "–" if r["ratio"] is None else f"{r['ratio']:.2f}x", r["target"],
             verdict(r) + (f" [{r['note']}]" if r["note"] else "")] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def main(argv=None):
    res = Path((argv or sys.argv[1:])[0])
    rows = compute(res)
    print(table(rows))
    doc = {"rows": rows, "passed": sum(r["pass"] is True for r in rows), "failed": sum(r["pass"] is False for r in rows),
           "not_measured": sum(r["pass"] is None for r in rows)}
    (res / "targets.json").write_text(json.dumps(doc, indent=1))
    print(f"targets: {doc['passed']} met, {doc['failed']} missed, {doc['not_measured']} not measured")
    return doc


if __name__ == "__main__":
    main()
