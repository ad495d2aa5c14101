#!/usr/bin/env python3
"""Writes a seccomp profile in moby's format (archMap, entries conditioned by
`includes`/`excludes`) as a flat OCI profile whose conditions are already
resolved for one container, so that every runtime reads it the same way.

    python3 scripts/seccomp_resolve.py            # rewrite the chart's profile
    python3 scripts/seccomp_resolve.py --check    # exit 1 if it is out of date

Why: Docker and CRI-O judge each entry's conditions (capabilities, native
architecture, kernel) when they load a profile, but containerd loads a
Kubernetes `Localhost` profile as a plain OCI LinuxSeccomp: it ignores
`archMap`, `includes` and `excludes` and applies every entry, so unshare,
mount, bpf, ptrace and the rest meant only for CAP_SYS_ADMIN, CAP_SYS_PTRACE,
... would be allowed to every container. The output has no conditions left,
so Docker, CRI-O and containerd all build the same filter from it.

Plain Python (standard library), no network. Defaults: the source
deploy/seccomp/seccomp-longbow.docker.json, the output
deploy/helm/longbow/files/seccomp-longbow.json, and the Helm chart's
container: capabilities drop ALL, add IPC_LOCK and SYS_RESOURCE, nodes
x86_64 or aarch64, kernels that can run glommio (5.8 or later).

How each syscalls[] entry is resolved, for every target architecture
(--arch, uname -m names) as moby's setupSeccomp would on a node of it:

  capabilities  `includes.caps`: all of them in --caps; `excludes.caps`: none
                of them in --caps. --caps is the container's whole set (the
                chart drops ALL first), not Docker's default set plus these.
  arches        `includes.arches` / `excludes.arches` against the target's
                native architecture in Go's spelling (amd64, arm64), as moby
                compares them; compat architectures are never native.
  minKernel     judged against --min-kernel, the oldest kernel the container
                can run on (glommio needs 5.8; below it the server cannot
                start, whatever the filter): a condition every such kernel
                satisfies (minKernel <= 5.8) is resolved exactly. One that
                depends on the node's kernel is resolved the restrictive way:
                an SCMP_ACT_ALLOW or SCMP_ACT_LOG entry is dropped; an entry
                with any other action stops the script, for a person to
                decide (the upstream profile has none).

An entry whose conditions hold on every target is kept; on none, dropped. On
some but not all (arch_prctl and modify_ldt: amd64 only; the ARM-only
syscalls: arm/arm64 only) it is kept only if none of its names is a real
syscall on the other targets' architectures (ARCH_ONLY below, which the tests
check against libseccomp's tables): in a flat profile a rule applies to every
listed architecture, and a name that does not exist on an architecture adds
nothing there, so the merge gives each architecture exactly the rules Docker
would give it. A name not in ARCH_ONLY stops the script rather than be
guessed.

The output lists `architectures` (each target's archMap entry with its
subArchitectures), keeps the entries' order, names, actions, errnoRet, args
and comments, and drops `archMap`, `includes` and `excludes`. It is
deterministic, so --check can tell whether the shipped file is current.
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "deploy" / "seccomp" / "seccomp-longbow.docker.json"
OUTPUT = ROOT / "deploy" / "helm" / "longbow" / "files" / "seccomp-longbow.json"

# The Helm chart's container (templates/statefulset.yaml: drop ALL, then
# values.yaml capabilities.add). The tests check this against the chart.
CHART_CAPS = ("CAP_IPC_LOCK", "CAP_SYS_RESOURCE")
CHART_ARCHES = ("x86_64", "aarch64")
# glommio's minimum kernel (its README: "The minimum version at this time is 5.8").
MIN_KERNEL = "5.8"

# uname -m => (archMap architecture, Go's GOARCH, which moby's `arches` conditions name).
TARGETS = {"x86_64": ("SCMP_ARCH_X86_64", "amd64"), "aarch64": ("SCMP_ARCH_AARCH64", "arm64")}

# Where each name of an architecture-conditioned entry is a real syscall, among
# the SCMP architectures a target can list (libseccomp 2.5's tables;
# tests/python/test_seccomp.py checks every entry here against them).
ARCH_ONLY = {
    "arch_prctl": {"SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"},
    "modify_ldt": {"SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"},
    "arm_fadvise64_64": {"SCMP_ARCH_ARM"},
    "arm_sync_file_range": {"SCMP_ARCH_ARM"},
    "sync_file_range2": set(),  # arm's is arm_sync_file_range; a real one on ppc only
    "breakpoint": {"SCMP_ARCH_ARM"},
    "cacheflush": {"SCMP_ARCH_ARM"},
    "set_tls": {"SCMP_ARCH_ARM"},
}

ALLOWING = ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG")


class Unresolvable(Exception):
    pass


def version(text):
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def kernel_condition(minimum, floor):
    """Whether every kernel >= floor is >= minimum: True, or None (depends on the node)."""
    return True if version(minimum) <= version(floor) else None


def holds(entry, goarch, caps, floor):
    """moby's setupSeccomp for one native architecture: True (kept), False
    (dropped) or None (depends on the node's kernel)."""
    exc = entry.get("excludes") or {}
    inc = entry.get("includes") or {}
    if goarch in (exc.get("arches") or []):
        return False
    if any(c in caps for c in exc.get("caps") or []):
        return False
    if inc.get("arches") and goarch not in inc["arches"]:
        return False
    if any(c not in caps for c in inc.get("caps") or []):
        return False
    result = True
    if exc.get("minKernel"):
        # Excluded on kernels >= minKernel.
        if kernel_condition(exc["minKernel"], floor):
            return False
        result = None
    if inc.get("minKernel"):
        if kernel_condition(inc["minKernel"], floor) is None:
            result = None
    return result


def describe(entry):
    names = entry.get("names") or [entry.get("name")]
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    conds = {k: entry[k] for k in ("includes", "excludes") if entry.get(k)}
    return f"{shown} ({entry['action']}{', ' + json.dumps(conds) if conds else ''})"


def resolve(profile, caps, arches, floor, source_name="deploy/seccomp/seccomp-longbow.docker.json"):
    """Returns (flat profile, report lines)."""
    caps = frozenset(caps)
    unknown = [a for a in arches if a not in TARGETS]
    if unknown:
        raise Unresolvable(f"architecture(s) {', '.join(unknown)} not supported; known: {', '.join(TARGETS)}")
    arch_map = {a["architecture"]: a for a in profile.get("archMap") or []}
    if profile.get("architectures"):
        raise Unresolvable("the source already lists `architectures`; expected moby's archMap format")
    families = {}  # target => its SCMP architectures, native first
    for target in arches:
        scmp = TARGETS[target][0]
        if scmp not in arch_map:
            raise Unresolvable(f"archMap has no {scmp}")
        families[target] = [scmp, *(arch_map[scmp].get("subArchitectures") or [])]

    report, syscalls = [], []
    for entry in profile.get("syscalls") or []:
        verdicts = {t: holds(entry, TARGETS[t][1], caps, floor) for t in arches}
        uncertain = None in verdicts.values()
        if uncertain:
            if entry["action"] not in ALLOWING:
                raise Unresolvable(f"{describe(entry)}: its kernel condition depends on the node, and dropping "
                                   f"or keeping a refusing rule is not a safe default; decide by hand")
            report.append(f"treated as not holding where its kernel condition depends on the node "
                          f"(kernels >= {floor}): {describe(entry)}")
            verdicts = {t: bool(v) for t, v in verdicts.items()}  # restrictive: an uncertain allow is dropped
        on = [t for t in arches if verdicts[t]]
        if not on:
            if not uncertain:
                report.append(f"dropped: {describe(entry)}")
            continue
        if len(on) < len(arches):
            others = {a for t in arches if t not in on for a in families[t]}
            for name in entry.get("names") or [entry["name"]]:
                if name not in ARCH_ONLY:
                    raise Unresolvable(f"{describe(entry)} holds on {', '.join(on)} only, and it is not known on "
                                       f"which architectures {name!r} exists: add it to ARCH_ONLY")
                clash = ARCH_ONLY[name] & others
                if clash:
                    raise Unresolvable(f"{describe(entry)} holds on {', '.join(on)} only, but {name!r} is a "
                                       f"syscall on {', '.join(sorted(clash))} too: a flat profile cannot say that")
            report.append(f"kept, for {', '.join(on)} only (none of its names is a syscall elsewhere): "
                          f"{describe(entry)}")
        elif entry.get("includes") or entry.get("excludes"):
            report.append(f"kept: {describe(entry)}")
        flat = {k: v for k, v in entry.items() if k not in ("includes", "excludes")}
        syscalls.append(flat)

    out = {"defaultAction": profile["defaultAction"]}
    if "defaultErrnoRet" in profile:
        out["defaultErrnoRet"] = profile["defaultErrnoRet"]
    out["comment"] = comment(profile, source_name, caps, arches, families, floor)
    out["architectures"] = [a for t in arches for a in families[t]]
    for key in ("flags", "listenerPath", "listenerMetadata"):
        if key in profile:
            out[key] = profile[key]
    out["syscalls"] = syscalls
    return out, report


def comment(profile, source_name, caps, arches, families, floor):
    source = profile.get("comment", "").split(". ")[0].rstrip(".")  # its first sentence: what it is
    return (f"Generated by scripts/seccomp_resolve.py from {source_name}; do not edit. "
            f"Its conditions (includes/excludes), which containerd ignores, are resolved for capabilities "
            f"{', '.join(sorted(caps)) or 'none'} and no others, architectures "
            f"{'; '.join(', '.join(families[t]) for t in arches)}, kernels {floor} or later, so Docker, CRI-O "
            f"and containerd read it alike. The source: {source}.")


def source_name(path):
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def render(profile):
    return json.dumps(profile, indent="\t") + "\n"


def main():
    p = argparse.ArgumentParser(description="Resolve a moby-format seccomp profile's conditions into a flat one.")
    p.add_argument("source", nargs="?", type=Path, default=SOURCE, help=f"default {SOURCE.relative_to(ROOT)}")
    p.add_argument("-o", "--output", type=Path, default=OUTPUT, help=f"default {OUTPUT.relative_to(ROOT)}")
    p.add_argument("--caps", default=",".join(CHART_CAPS),
                   help="the container's whole capability set, comma-separated (default: the chart's, %(default)s; "
                        "'' for none)")
    p.add_argument("--arch", action="append", metavar="ARCH",
                   help=f"a target node architecture, uname -m (repeat; default {' '.join(CHART_ARCHES)})")
    p.add_argument("--min-kernel", default=MIN_KERNEL, help="the oldest kernel the container runs on (default %(default)s)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if OUTPUT differs from what would be written")
    p.add_argument("-v", "--verbose", action="store_true", help="say on stderr what became of each conditioned entry")
    opts = p.parse_args()
    caps = [c if c.startswith("CAP_") else f"CAP_{c}" for c in opts.caps.replace(" ", "").split(",") if c]
    try:
        out, report = resolve(json.loads(opts.source.read_text()), caps, opts.arch or list(CHART_ARCHES),
                              opts.min_kernel, source_name(opts.source))
    except Unresolvable as e:
        raise SystemExit(f"seccomp_resolve: {e}")
    if opts.verbose:
        print("\n".join(report), file=sys.stderr)
    text = render(out)
    if opts.check:
        current = opts.output.read_text() if opts.output.exists() else ""
        if current != text:
            raise SystemExit(f"seccomp_resolve: {opts.output} is out of date; run scripts/seccomp_resolve.py")
        return
    opts.output.write_text(text)


if __name__ == "__main__":
    main()
