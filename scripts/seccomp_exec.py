#!/usr/bin/python3
"""Runs a command under a Docker/OCI seccomp profile, as a container runtime
would, so the shipped profile can be tested without one.

    /usr/bin/python3 scripts/seccomp_exec.py PROFILE.json [options] -- COMMAND [ARG...]

Needs libseccomp's Python bindings (Debian: python3-seccomp, for the system
interpreter /usr/bin/python3, not a virtual environment).

The profile is read the way the runtime named by --runtime reads it:

  docker (default)  moby's LoadProfile: from `archMap` the entry of the
                    native architecture (with its subArchitectures); a
                    syscalls[] entry is kept when its `includes` hold and its
                    `excludes` do not: `arches` against the native
                    architecture (Go names: amd64, arm64, ...), `caps`
                    against the capability set below (includes: all of them
                    present; excludes: any of them present), `minKernel`
                    against the running kernel. CRI-O reads profiles the same
                    way.
  containerd        containerd's Localhost profiles (Kubernetes with
                    containerd): the file is unmarshalled as an OCI
                    LinuxSeccomp, so `archMap`, `includes` and `excludes` are
                    ignored, `architectures` is used, and every syscalls[]
                    entry applies.

Capabilities: conditions are judged as if the process had Docker's default
capability set (CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FSETID, CAP_FOWNER,
CAP_MKNOD, CAP_NET_RAW, CAP_SETGID, CAP_SETUID, CAP_SETFCAP, CAP_SETPCAP,
CAP_NET_BIND_SERVICE, CAP_SYS_CHROOT, CAP_KILL, CAP_AUDIT_WRITE) less any
--cap-drop (ALL: every one) plus any --cap-add, as docker run's options
combine: CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_SYS_NICE and the others that
unlock entries of the default profile are absent unless added. Without
options this is what a container started without --cap-add gets; the Helm
chart's container is `--cap-drop ALL --cap-add CAP_IPC_LOCK --cap-add
CAP_SYS_RESOURCE`. The loader only judges the conditions; it does not change
the capabilities the process really has.

Rules are then added as runc adds them: actions as runc maps them
(SCMP_ACT_ERRNO without errnoRet is EPERM, SCMP_ACT_KILL kills the thread),
a rule whose action is the default action skipped, `args` ANDed in one rule
unless two of them name the same argument (then one rule each, ORed),
SCMP_CMP_MASKED_EQ with `value` as the mask and `valueTwo` as the datum.
Syscall names this libseccomp does not know are skipped (runc does the same),
so they get the default action. Not reproduced: runc's -ENOSYS stub for
syscalls newer than the profile, `flags`, SCMP_ACT_NOTIFY.

The no_new_privs bit is set (an unprivileged process cannot load a filter
without it, and runc sets it unless the container may gain privileges), the
filter is loaded, and COMMAND is executed in this process (execvp), so it
and everything it starts run under the filter.
"""

import argparse
import errno
import json
import os
import platform
import sys

import seccomp

DOCKER_DEFAULT_CAPS = frozenset({
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
})

# uname -m => the native architecture name moby's `arches` filters use (Go's).
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i386": "x86",
           "i686": "x86", "ppc64le": "ppc64le", "ppc64": "ppc64", "s390x": "s390x", "riscv64": "riscv64",
           "loongarch64": "loong64", "mips64": "mips64"}
# uname -m => the SCMP_ARCH_ name of the native architecture in `archMap`.
SCMP_ARCH = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64", "armv7l": "SCMP_ARCH_ARM",
             "armv6l": "SCMP_ARCH_ARM", "i386": "SCMP_ARCH_X86", "i686": "SCMP_ARCH_X86",
             "ppc64le": "SCMP_ARCH_PPC64LE", "ppc64": "SCMP_ARCH_PPC64", "s390x": "SCMP_ARCH_S390X",
             "riscv64": "SCMP_ARCH_RISCV64", "mips64": "SCMP_ARCH_MIPS64"}

OPS = {"SCMP_CMP_NE": seccomp.NE, "SCMP_CMP_LT": seccomp.LT, "SCMP_CMP_LE": seccomp.LE,
       "SCMP_CMP_EQ": seccomp.EQ, "SCMP_CMP_GE": seccomp.GE, "SCMP_CMP_GT": seccomp.GT,
       "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ}


def action(name, errno_ret):
    """An OCI action name as runc maps it to libseccomp."""
    if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return seccomp.KILL
    if name == "SCMP_ACT_KILL_PROCESS":
        return seccomp.KILL_PROCESS
    if name == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO(or_default(errno_ret, errno.EPERM))
    if name == "SCMP_ACT_TRACE":
        return seccomp.TRACE(or_default(errno_ret, errno.EPERM))
    if name == "SCMP_ACT_TRAP":
        return seccomp.TRAP
    if name == "SCMP_ACT_ALLOW":
        return seccomp.ALLOW
    if name == "SCMP_ACT_LOG":
        return seccomp.LOG
    raise SystemExit(f"seccomp_exec: action {name!r} is not supported")


def or_default(value, default):
    return default if value is None else int(value)


def kernel_at_least(minimum):
    """moby's kernelGreaterEqualThan: compares major.minor of uname -r."""
    major, minor = (int(x) for x in minimum.split(".")[:2])
    release = platform.release().split(".")
    return (int(release[0]), int("".join(c for c in release[1] if c.isdigit()) or 0)) >= (major, minor)


def kept(entry, arch, caps):
    """moby's setupSeccomp: whether a syscalls[] entry applies."""
    exc = entry.get("excludes") or {}
    if arch in exc.get("arches", []):
        return False
    if any(c in caps for c in exc.get("caps", [])):
        return False
    if exc.get("minKernel") and kernel_at_least(exc["minKernel"]):
        return False
    inc = entry.get("includes") or {}
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if any(c not in caps for c in inc.get("caps", [])):
        return False
    if inc.get("minKernel") and not kernel_at_least(inc["minKernel"]):
        return False
    return True


def build(profile, runtime, caps, machine=None):
    """Returns (filter, names skipped as unknown to libseccomp). machine (uname
    -m) builds, without loading it, the filter a node of another architecture
    would get (the tests compare filters of both chart architectures)."""
    native = machine is None or machine == platform.machine()
    machine = machine or platform.machine()
    default = action(profile["defaultAction"], profile.get("defaultErrnoRet"))
    f = seccomp.SyscallFilter(default)
    f.set_attr(seccomp.Attr.CTL_NNP, 1)
    if runtime == "docker":
        if profile.get("architectures") and profile.get("archMap"):
            raise SystemExit("seccomp_exec: both 'architectures' and 'archMap' are set; docker refuses that")
        arches = list(profile.get("architectures") or [])
        for a in profile.get("archMap") or []:
            if a["architecture"] == SCMP_ARCH.get(machine):
                arches += [a["architecture"], *a.get("subArchitectures", [])]
                break
        entries = [e for e in profile.get("syscalls") or [] if kept(e, GO_ARCH.get(machine, machine), caps)]
    else:
        arches = list(profile.get("architectures") or [])
        entries = list(profile.get("syscalls") or [])
    if not native and not arches:
        arches = [SCMP_ARCH[machine]]  # that machine's native architecture, as this one's is below
    for a in arches:
        arch = getattr(seccomp.Arch, a.removeprefix("SCMP_ARCH_"))
        if not f.exist_arch(arch):  # the native one is there from the start
            f.add_arch(arch)
    if not native and SCMP_ARCH.get(platform.machine()) not in arches:
        f.remove_arch(seccomp.Arch.NATIVE)  # another machine's filter: this one's architecture only if listed
    skipped = []
    for e in entries:
        act = action(e["action"], e.get("errnoRet"))
        if act == default:
            continue  # redundant; libseccomp refuses it
        args = [seccomp.Arg(a["index"], OPS[a["op"]], a.get("value", 0), a.get("valueTwo", 0))
                for a in e.get("args") or []]
        same_index = len({a["index"] for a in e.get("args") or []}) < len(args)
        names = e.get("names") or [e["name"]]
        for name in names:
            if seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) == -1:
                skipped.append(name)
                continue
            if same_index:
                for arg in args:
                    f.add_rule(act, name, arg)
            else:
                f.add_rule(act, name, *args)
    return f, skipped


def capabilities(drop, add):
    """Docker's default set, less drop (or all of it for ALL), plus add."""
    def full(c):
        return c if c.startswith("CAP_") else f"CAP_{c}"
    base = frozenset() if "ALL" in drop else DOCKER_DEFAULT_CAPS - {full(c) for c in drop}
    return base | {full(c) for c in add}


def main():
    argv = sys.argv[1:]
    if "--" not in argv:
        raise SystemExit(__doc__)
    split = argv.index("--")
    p = argparse.ArgumentParser(description="Run a command under a Docker/OCI seccomp profile.")
    p.add_argument("profile")
    p.add_argument("--runtime", choices=["docker", "containerd"], default="docker",
                   help="read the profile as this runtime does (default docker)")
    p.add_argument("--cap-drop", action="append", default=[], metavar="CAP",
                   help="a capability of Docker's default set to count as absent, or ALL")
    p.add_argument("--cap-add", action="append", default=[], metavar="CAP",
                   help="a capability to count as present besides Docker's default set (CAP_SYS_ADMIN, ...)")
    p.add_argument("-v", "--verbose", action="store_true", help="list skipped syscall names on stderr")
    opts = p.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        raise SystemExit("seccomp_exec: no command after --")
    with open(opts.profile) as fh:
        profile = json.load(fh)
    caps = capabilities(opts.cap_drop, opts.cap_add)
    f, skipped = build(profile, opts.runtime, caps)
    if opts.verbose and skipped:
        print(f"seccomp_exec: {len(skipped)} syscall names unknown to this libseccomp, skipped: {' '.join(skipped)}",
              file=sys.stderr)
    f.load()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
