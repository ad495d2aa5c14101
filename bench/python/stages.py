"""Where a DoPut batch's time goes: reads the `longbow_put_stage_seconds`
histogram (label `stage`: decode, queue, commit_write, fdatasync, ack, send)
from a Prometheus text exposition (OpenMetrics 1.0 or the 0.0.4 text format)
and prints, per stage, the observations, their mean and p50 / p99 estimated
from the buckets (linear inside a bucket, as PromQL's histogram_quantile).

Usage: stages.py SOURCE [--before SOURCE] [--json OUT]
  SOURCE is a URL (http://127.0.0.1:9090/metrics), host:port, or a file of
  scraped text. With --before, the earlier scrape is subtracted, so only what
  happened between the two counts. Series with other labels besides `stage`
  (a shard, say) are added up per stage.
"""

import argparse
import json
import math
import re
import urllib.request

FAMILY = "longbow_put_stage_seconds"
LABEL = "stage"
ORDER = ["decode", "queue", "commit_write", "fdatasync", "ack", "send"]
NOT_EXPORTED = "not exported by this build"

# name, optional {labels} (greedy: a label value may hold "}"), value; a timestamp may follow.
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def _unescape(v):
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), v)


def _labels(text):
    out, pos = {}, 0
    text = text or ""
    while pos < len(text.rstrip()):
        m = _LABEL.match(text, pos)
        if not m:
            raise ValueError(f"bad label set {{{text}}}")
        out[m.group(1)] = _unescape(m.group(2))
        pos = m.end()
    return out


def samples(text):
    """(name, labels, value) for every sample line; comments, exemplars and timestamps dropped."""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        # An OpenMetrics exemplar follows " # " after the value.
        head = line.split(" # ", 1)[0]
        m = _SAMPLE.match(head)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(3), m.group(4)
        yield name, _labels(labels), float(value)


def histogram(text, family=FAMILY, label=LABEL):
    """{label value: {"count", "sum", "buckets": [(le, cumulative count), ...]}}, or None when absent."""
    out = {}
    for name, labels, value in samples(text):
        if not name.startswith(family) or name[len(family):] not in ("_bucket", "_sum", "_count"):
            continue
        key = labels.get(label, "")
        h = out.setdefault(key, {"count": 0.0, "sum": 0.0, "buckets": {}})
        part = name[len(family) + 1:]
        if part == "bucket":
            le = float(labels["le"].replace("Inf", "inf"))
            h["buckets"][le] = h["buckets"].get(le, 0.0) + value
        else:
            h[part] += value
    if not out:
        return None
    for h in out.values():
        h["buckets"] = sorted(h["buckets"].items())
    return out


def subtract(after, before):
    """What was observed between two scrapes of the same histogram (counters only grow)."""
    if not before:
        return after
    out = {}
    for key, h in after.items():
        b = before.get(key)
        if b is None:
            out[key] = h
            continue
        earlier = dict(b["buckets"])
        out[key] = {"count": h["count"] - b["count"], "sum": h["sum"] - b["sum"],
                    "buckets": [(le, c - earlier.get(le, 0.0)) for le, c in h["buckets"]]}
    return out


def quantile(q, buckets):
    """PromQL-style estimate from cumulative (le, count) buckets; None if empty.
    Falls in the +Inf bucket: the largest finite bound."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                finite = [b for b, _ in buckets if not math.isinf(b)]
                return finite[-1] if finite else None
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return buckets[-1][0]


def summarize(hist):
    """[{stage, count, mean_us, p50_us, p99_us}] in pipeline order (unknown stages after)."""
    rows = []
    for key in sorted(hist, key=lambda k: (ORDER.index(k) if k in ORDER else len(ORDER), k)):
        h = hist[key]
        count = int(round(h["count"]))
        us = lambda s: None if s is None else round(s * 1e6, 1)
        rows.append({"stage": key, "count": count,
                     "mean_us": us(h["sum"] / h["count"]) if h["count"] > 0 else None,
                     "p50_us": us(quantile(0.5, h["buckets"])), "p99_us": us(quantile(0.99, h["buckets"]))})
    return rows


def read(source):
    if source.startswith(("http://", "https://")) or re.fullmatch(r"[\w.\-]+:\d+", source):
        url = source if "://" in source else f"http://{source}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read().decode()
    with open(source) as f:
        return f.read()


def table(rows):
    fmt = lambda x: "–" if x is None else f"{x:,.1f}"
    lines = [f"{'stage':<14} {'count':>9} {'mean µs':>10} {'p50 µs':>10} {'p99 µs':>10}"]
    for r in rows:
        lines.append(f"{r['stage']:<14} {r['count']:>9,} {fmt(r['mean_us']):>10} {fmt(r['p50_us']):>10} "
                     f"{fmt(r['p99_us']):>10}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source")
    p.add_argument("--before", help="an earlier scrape to subtract")
    p.add_argument("--json", help="write the summary here")
    p.add_argument("--family", default=FAMILY)
    p.add_argument("--label", default=LABEL)
    a = p.parse_args(argv)
    after = histogram(read(a.source), a.family, a.label)
    if after is None:
        print(f"{a.family}: {NOT_EXPORTED}")
        doc = {"family": a.family, "exported": False}
    else:
        before = histogram(read(a.before), a.family, a.label) if a.before else None
        rows = summarize(subtract(after, before))
        print(table(rows))
        doc = {"family": a.family, "exported": True, "since_before": bool(a.before), "stages": rows}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(doc, f)
    return doc


if __name__ == "__main__":
    main()
