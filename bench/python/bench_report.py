"""Turns the result files scripts/bench.sh writes into Markdown and puts it
between the `<!-- bench.sh:begin -->` / `<!-- bench.sh:end -->` markers of
docs/benchmarks.md (added before the first `## ` heading if absent).
Everything outside the markers is left as it is.

Usage: bench_report.py RESULTS_DIR DOC.md   (prints the block with DOC.md = -)
"""

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import targets as targets_mod  # noqa: E402

BEGIN = "<!-- bench.sh:begin -->"
END = "<!-- bench.sh:end -->"


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# Throughput rows in this order.
SERVERS = ["pyarrow-null-sink", "rust-null-sink", "pyarrow-fsync-server", "longbow", "longbow-tmpfs"]


def load(path):
    return json.loads(path.read_text()) if path.exists() else {}


def n(x, digits=0):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else ""


def shards(job):
    s = job["server"].get("shards")
    return "the server's default shards" if s is None else f"{s} shard" + ("s" if s != 1 else "")


def render(res: Path) -> str:
    m = json.loads((res / "machine.json").read_text())
    out = [BEGIN, "## Latest run (written by `scripts/bench.sh`)", ""]
    dirty = " plus uncommitted changes in the working tree" if m["dirty"] else ""
    out += [
        f"`scripts/bench.sh {m['secs']}` ({m['secs']} s per measurement), {m['date']} UTC, at commit "
        f"`{m['commit']}` (\"{m['subject']}\"){dirty}. Machine `{m['host']}`: {m['cpus']} CPUs "
        f"({m['cpu_model']}), {m['mem_gib']} GiB RAM, Linux {m['kernel']}, data on {m['fs']}; clients and "
        f"servers share the machine; load average (1, 5, 15 min) {m.get('load_start', '?')} at the start, "
        f"{m.get('load_end', '?')} at the end. Free memory before measuring: {m.get('warm_memory', 'not touched')}. "
        "Figures from one run: compare ratios within it."
        + (" Quick mode (smaller fio files, snapshot and recovery jobs): a check of the script, not a measurement."
           if m.get("quick") else ""),
        "",
    ]

    t = res / "targets.json"
    if t.exists():
        doc = json.loads(t.read_text())
        out += ["### Targets", "",
                f"Each measure against its reference from this run: {doc['passed']} met, {doc['failed']} missed"
                + (f", {doc['not_measured']} not measured" if doc["not_measured"] else "") + ".", "",
                "| measure | figure | reference | ratio | target | result |", "|---|---|---|---|---|---|"]
        for r in doc["rows"]:
            result = targets_mod.verdict(r)
            result = f"**{result}**" if r["pass"] is False else result
            note = f" ({r['note']})" if r.get("note") else ""
            ratio_text = "" if r["ratio"] is None else f"{r['ratio']:.2f}×"
            target = re.sub(r"(\d)x\b", "\\1×", r["target"])
            out.append(f"| {r['measure']} | {targets_mod.fmt(r['figure'])} {r['unit']} | "
                       f"{targets_mod.fmt(r['reference'])} {r['unit']} ({r['reference_of']}) | {ratio_text} | "
                       f"{target} | {result}{note} |")
        out.append("")

    runs = jsonl(res / "py-throughput.jsonl")
    tp = {(r["label"], r.get("streams", 2)): r for r in runs}
    if tp:
        out += ["### Ingest, pyarrow client: 1,000-row × 128-d batches", "",
                "| server | streams | MB/s | rows/s | vs pyarrow no-op sink | vs Rust no-op sink | vs fsync server |",
                "|---|---|---|---|---|---|---|"]
        capped = []
        for streams in sorted({s for _, s in tp}):
            mb = lambda label: tp.get((label, streams), {}).get("mb_per_s")
            for label in SERVERS:
                r = tp.get((label, streams))
                if not r:
                    continue
                name = f"**{label}**" if label.startswith("longbow") else label
                durable = label in ("longbow", "pyarrow-fsync-server")
                out.append(f"| {name} | {streams} | {n(r['mb_per_s'], 1)} | {n(r['rows_per_s'])} | "
                           f"{ratio(r['mb_per_s'], mb('pyarrow-null-sink'))} | {ratio(r['mb_per_s'], mb('rust-null-sink'))} | "
                           f"{ratio(r['mb_per_s'], mb('pyarrow-fsync-server')) if durable else ''} |")
                if r.get("complete") and r.get("target_batches"):
                    capped.append(f"{label} ({streams} stream{'s' if streams != 1 else ''}): "
                                  f"{r['batches'] * r['batch_bytes'] / 2**30:.1f} GiB in {r['seconds']:.1f} s")
        out += ["", "longbow: WAL and snapshots on the data volume; longbow-tmpfs: both on "
                f"{m.get('tmpfs', 'a tmpfs')}, a fresh server per run (the CPU path)."]
        if capped:
            out += ["", "Stopped at the tmpfs's size before the time was up (longbow holds what it is sent in memory "
                        "as well): " + "; ".join(capped) + "."]
        metrics = dict(line.split() for line in (res / "commit-metrics.txt").read_text().splitlines()
                       if len(line.split()) == 2) if (res / "commit-metrics.txt").exists() else {}
        b_sum, b_cnt = metrics.get("longbow_wal_commit_batches_sum"), metrics.get("longbow_wal_commit_batches_count")
        if b_sum and b_cnt and float(b_cnt) > 0:
            out += ["", f"longbow's group commits (WAL on disk) carried {float(b_sum) / float(b_cnt):.1f} batches on "
                        "average."]
        out.append("")

    lat = jsonl(res / "py-latency.jsonl")
    fio = load(res / "fio.json")
    small = fio.get("small_sync") or load(res / "fio-small.json")
    if lat:
        out += ["### Ack latency, pyarrow client: 10-row batches one at a time", "",
                "| server | p50 µs | p95 | p99 | p99.9 | max |", "|---|---|---|---|---|---|"]
        for r in lat:
            out.append(f"| {r['label']} | {n(r.get('p50_us'))} | {n(r.get('p95_us'))} | {n(r.get('p99_us'))} | "
                       f"{n(r.get('p999_us'))} | {n(r.get('max_us'))} |")
        if small:
            out.append(f"| fio 8 KiB O_DIRECT write + fdatasync, same volume (write / fdatasync) | "
                       f"{small['write_p50_us']:.0f} / {small['fdatasync_p50_us']:.0f} | | "
                       f"{small['write_p99_us']:.0f} / {small['fdatasync_p99_us']:.0f} | | |")
        out += ["", "Measured in this order: Rust sink, fio, longbow (WAL on disk), pyarrow sink; the reference of "
                    "the targets is the sum of the first two.", ""]

    stages = load(res / "stages.json")
    if stages:
        out += ["### Where a batch's time goes: `longbow_put_stage_seconds` during the longbow latency run", ""]
        if not stages.get("exported"):
            out += [f"`{stages.get('family', 'longbow_put_stage_seconds')}`: not exported by this build.", ""]
        else:
            out += ["| stage | count | mean µs | p50 µs | p99 µs |", "|---|---|---|---|---|"]
            for r in stages["stages"]:
                out.append(f"| {r['stage']} | {n(r['count'])} | {n(r['mean_us'], 1)} | {n(r['p50_us'], 1)} | "
                           f"{n(r['p99_us'], 1)} |")
            out += ["", "p50 and p99 are estimated from the histogram's buckets (linear inside a bucket).", ""]

    mem = {r["label"]: r for r in jsonl(res / "memory.jsonl")}
    limit = load(res / "memory-limit.json")
    if mem:
        out += [f"### Memory limit: one producer writes {limit.get('factor', 4)}× `LONGBOW_MAX_MEMORY` "
                f"({limit.get('limit_mib', '?')} MiB)", "",
                "| server | MB/s | seconds | errors | RSS peak MiB | rows acknowledged | rows stored (DoGet) |",
                "|---|---|---|---|---|---|---|"]
        for label in ["longbow-unlimited", "longbow-limited", "longbow-limited-16"]:
            r = mem.get(label)
            if r:
                rss = max(r.get("rss_peak_mib", 0), r.get("rss_hwm_mib", 0))
                out.append(f"| {label} | {n(r['mb_per_s'], 1)} | {r['seconds']:.1f} | {r['errors']} | {n(rss)} | "
                           f"{n(r['rows_acked'])} | {n(r.get('rows_stored'))} |")
        out += ["", "Each fresh, WAL on the data volume, snapshots on the tmpfs; RSS sampled every 50 ms "
                    "(and VmHWM) while the producers run, before the rows are read back. `longbow-limited-16`: "
                    "16 producers on 16 connections writing the same amount between them.", ""]

    rust = res / "rust.json"
    if rust.exists():
        doc = json.loads(rust.read_text())
        out += ["### Rust client: `longbow-bench run bench/jobs/standard.ini`", "",
                "| job | direction | streams | rows/s | MiB/s | latency of | p50 µs | p95 | p99 | p99.9 | max |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        notes = []
        jobs = {j["jobname"]: j for j in doc["jobs"]}
        for j in doc["jobs"]:
            o = j["options"]
            for direction, key, what in [("put", "write", "ack"), ("get", "read", "scan")]:
                s = j.get(key)
                if not s:
                    continue
                if j["workload"] == "snapshot":
                    direction = "put (ingest)"
                if j["workload"] == "recovery":
                    direction = "put (fill)"
                streams = o.get("readers") if key == "read" else o.get("streams")
                l = s.get("lat_us") or {}
                out.append(f"| {j['jobname']} | {direction} | {streams} | {n(s['rows_per_s'])} | {n(s['bw_mib_s'], 1)} | "
                           f"{what} | {n(l.get('p50'))} | {n(l.get('p95'))} | {n(l.get('p99'))} | {n(l.get('p99.9'))} | "
                           f"{n(l.get('max'))} |")
            if "snapshot" in j:
                sn = j["snapshot"]
                b, d = sn["side_before"].get("lat_us") or {}, sn["side_during"].get("lat_us") or {}
                notes.append(
                    f"- **{j['jobname']}** ({shards(j)}): `force_snapshot` of "
                    f"{sn['arrow_bytes'] / 2**20:,.1f} MiB (Arrow) took {sn['seconds']:.2f} s = **{sn['mib_per_s']:,.1f} MiB/s**. "
                    f"Side stream ({o.get('side_rows')}-row batches one at a time) ack p50 / p99 / max: "
                    f"before {n(b.get('p50'))} / {n(b.get('p99'))} / {n(b.get('max'))} µs (n={b.get('samples', 0)}), "
                    f"during {n(d.get('p50'))} / {n(d.get('p99'))} / {n(d.get('max'))} µs (n={d.get('samples', 0)}).")
            if "recovery" in j:
                r = j["recovery"]
                notes.append(
                    f"- **{j['jobname']}** ({shards(j)}): `kill -9` with {r['wal_bytes'] / 2**20:,.0f} MiB "
                    f"of WAL; restart to ready {r['restart_to_ready_s']:.2f} s, to the first ListFlights answer "
                    f"{r['restart_to_first_answer_s']:.2f} s ({r['wal_bytes'] / 2**20 / r['restart_to_first_answer_s']:,.0f} MiB/s "
                    f"of WAL, process start included); rows acknowledged {r['rows_acked']:,}, after restart "
                    f"{r['rows_after_restart']:,}.")
        sink, lb = jobs.get("null-sink-put", {}).get("write"), jobs.get("put-throughput", {}).get("write")
        if sink and lb:
            notes.insert(0, f"- put-throughput / null-sink-put (same load, Rust no-op sink): "
                            f"**{lb['bw_mib_s'] / sink['bw_mib_s']:.2f}**.")
        out += [""] + notes + [
            "", "Ack latency counts from when a batch was sent (from when it was due in the paced job); with a "
            "64-batch window it is mostly queueing. Scan latency is one whole DoGet of a dataset that grows "
            "meanwhile.", ""]

    replay = res / "replay.json"
    if fio:
        lb = max((r["mb_per_s"] for (label, _), r in tp.items() if label == "longbow"), default=None)
        lb_mib = lb * 1e6 / 2**20 if lb else None
        out += ["### Disk references: fio on the same volume", "",
                "| fio | MiB/s | longbow (WAL on disk, pyarrow ingest, best of 1 and 2 streams) as a fraction |",
                "|---|---|---|"]
        for label, key in [(f"O_DIRECT 4 MiB writes + fdatasync each, new files, {fio['jobs']} jobs", "write_new_mib_s"),
                           ("the same, overwriting those files (the target's reference)", "write_overwrite_mib_s")]:
            out.append(f"| {label} | {n(fio.get(key))} | {ratio(lb_mib, fio.get(key))} |")
        out.append(f"| O_DIRECT sequential read, 8 MiB, queue depth 4, {fio['jobs']} jobs | {n(fio.get('read_mib_s'))} | |")
        out.append("")
    if replay.exists():
        r = json.loads(replay.read_text())
        if r.get("bytes") and r.get("seconds"):
            gbs = r["bytes"] / r["seconds"] / 1e9
            read = fio.get("read_mib_s")
            vs = f"; fio read {n(read)} MiB/s, ratio **{gbs * 1e9 / 2**20 / read:.2f}×**" if read else ""
            cache = "" if r.get("caches_dropped") else " (page cache not dropped: not root)"
            out += ["### WAL replay at restart", "",
                    f"{r['bytes'] / 1e9:.2f} GB replayed by {r['shards']} shards in {r['seconds']:.2f} s = "
                    f"**{gbs:.2f} GB/s**{cache}{vs}.", ""]

    out += ["### Shard scaling (Rust client, `longbow-bench put`, 2 streams per shard)", ""]
    skipped = res / "scaling-skipped.txt"
    runs = sorted(res.glob("scaling-*.json"), key=lambda p: int(re.findall(r"\d+", p.name)[0]))
    if runs:
        out += ["| shards | streams | rows/s | MiB/s | vs 1 shard | ack p50 µs | p99 |", "|---|---|---|---|---|---|---|"]
        base = None
        for p in runs:
            j = json.loads(p.read_text())["jobs"][0]
            s, l = j["write"], j["write"].get("lat_us") or {}
            base = base or s["bw_mib_s"]
            out.append(f"| {j['server']['shards']} | {j['options']['streams']} | {n(s['rows_per_s'])} | "
                       f"{n(s['bw_mib_s'], 1)} | {s['bw_mib_s'] / base:.2f} | {n(l.get('p50'))} | {n(l.get('p99'))} |")
        out += ["", "The client runs on the same machine and competes for its cores.", ""]
    else:
        why = skipped.read_text().strip().lstrip("# ") if skipped.exists() else "not run"
        out += [f"Not measured in this run ({why.replace('shard scaling skipped: ', '')}): scaling across 1, 2, 4, 8 "
                "and 16 shards needs at least 16 cores, one per shard; with fewer, shards would share cores and "
                "the figures would measure contention, not scaling.", ""]
    out.append(END)
    return "\n".join(out) + "\n"


def splice(doc: str, block: str) -> str:
    if BEGIN in doc and END in doc:
        start, end = doc.index(BEGIN), doc.index(END) + len(END)
        return doc[:start] + block.rstrip("\n") + doc[end:]
    at = doc.find("\n## ")
    at = len(doc) if at < 0 else at + 1
    return doc[:at] + block + "\n" + doc[at:]


def main():
    res, target = Path(sys.argv[1]), sys.argv[2]
    block = render(res)
    if target == "-":
        sys.stdout.write(block)
        return
    path = Path(target)
    path.write_text(splice(path.read_text(), block))


if __name__ == "__main__":
    main()
