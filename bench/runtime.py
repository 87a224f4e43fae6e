#!/usr/bin/env python3
"""Container lifecycle benchmark: moat-runtime vs runc vs crun (Python 3 stdlib only).

One busybox bundle, one config.json, shared by all runtimes. For every iteration, and for every
runtime in turn (interleaved: moat, runc, crun, moat, runc, crun, ...), it times

  (a) create + start + wait for the container's init to exit + delete   (`/bin/true`)
  (b) run (foreground) [+ delete, only for a runtime that leaves the container behind]

and reports median / p10 / p90 in ms, the moat/runc and moat/crun ratios of medians, the median
CPU time of the `create` process, and, in a separate pass after the timed loop (so that the
timings carry no wrapper), the median peak RSS (KiB) of `create` measured with `/usr/bin/time -f
%M`. (ru_maxrss from wait4 on a child forked from Python would report Python's own RSS: the
high-water mark survives execve.) See bench/README.md.

Every runtime invocation is started the same way: fork, setns() into that runtime's mount
namespace (see --help of --no-mntns), execve, wait4. The harness is a child subreaper, so a
container's init is reparented to it when `create` exits and "wait for exit" is a blocking
waitpid() on the pid from --pid-file: the same method, with no polling, for every runtime.

Must run as root.
"""

import argparse
import ctypes
import datetime
import errno
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLONE_NEWNS = 0x00020000
PR_SET_CHILD_SUBREAPER = 36
ID_PREFIX = "mbench"

libc = ctypes.CDLL(None, use_errno=True)


def die(msg):
    print(f"runtime.py: {msg}", file=sys.stderr)
    sys.exit(1)


# --------------------------------------------------------------------------------------------
# process spawning: identical for every runtime

class Spawner:
    """fork + optional setns(mount ns) + execve + wait4, stdout/stderr to files."""

    def __init__(self, env, logdir):
        self.env = env
        self.logdir = logdir

    def spawn(self, argv, mntns_fd=None, log="x", capture=False):
        out_path = os.path.join(self.logdir, f"{log}.out")
        err_path = os.path.join(self.logdir, f"{log}.err")
        out_fd = os.open(out_path if capture else os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        t0 = time.perf_counter_ns()
        pid = os.fork()
        if pid == 0:  # child: no Python-level cleanup, only syscalls then exec
            try:
                if mntns_fd is not None and libc.setns(mntns_fd, CLONE_NEWNS) != 0:
                    os.write(err_fd, b"setns failed\n")
                    os._exit(126)
                os.dup2(out_fd, 1)
                os.dup2(err_fd, 2)
                os.execve(argv[0], argv, self.env)
            except BaseException as e:  # noqa: BLE001
                os.write(err_fd, f"exec {argv[0]}: {e}\n".encode())
            os._exit(127)
        os.close(out_fd)
        os.close(err_fd)
        _, status, ru = os.wait4(pid, 0)
        t1 = time.perf_counter_ns()
        rc = os.waitstatus_to_exitcode(status)
        res = {
            "rc": rc,
            "ns": t1 - t0,
            "maxrss_kib": ru.ru_maxrss,
            "cpu_ns": int((ru.ru_utime + ru.ru_stime) * 1e9),
        }
        if capture:
            with open(out_path) as f:
                res["out"] = f.read()
        if rc != 0:
            with open(err_path) as f:
                res["err"] = f.read().strip()
        return res


def reap_strays():
    """Reap any zombie reparented to us (we are a subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def wait_exit(pid):
    """Block until `pid` (the container's init, reparented to us) has exited."""
    try:
        os.waitpid(pid, 0)
        return "waitpid"
    except ChildProcessError:
        pass
    # Not our child (should not happen while we are a subreaper): poll /proc with short sleeps.
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return "poll"
        except (FileNotFoundError, ProcessLookupError):
            return "poll"
        time.sleep(0.0002)


# --------------------------------------------------------------------------------------------
# bundle and mount namespaces

def build_bundle(bundle, busybox, runc):
    if os.path.exists(bundle):
        shutil.rmtree(bundle)
    bindir = os.path.join(bundle, "rootfs", "bin")
    os.makedirs(bindir)
    shutil.copy2(busybox, os.path.join(bindir, "busybox"))
    applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout.split()
    for a in applets:
        if a != "busybox" and "/" not in a:
            os.symlink("busybox", os.path.join(bindir, a))
    subprocess.run([runc, "spec"], cwd=bundle, check=True)
    cfg_path = os.path.join(bundle, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["/bin/true"]
    cfg["root"]["readonly"] = False
    # `runc spec` lists CAP_AUDIT_WRITE/KILL/NET_BIND_SERVICE as ambient but not inheritable, so
    # PR_CAP_AMBIENT_RAISE fails with EPERM. runc and crun ignore that error; moat refuses to
    # create the container. Drop the ambient set (irrelevant for /bin/true) so that one
    # config.json works with all three runtimes.
    cfg["process"]["capabilities"].pop("ambient", None)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)
    return cfg


class MountNs:
    """A private copy of the host mount namespace, held open by a `sleep` process.

    hide_unified=True unmounts /sys/fs/cgroup/unified inside it: crun 1.8 refuses the hybrid
    cgroup layout of a host whose cgroup2 hierarchy has any controller ("cgroups in hybrid mode
    not supported, drop all controllers from cgroupv2", also with --cgroup-manager=disabled);
    without the cgroup2 mount crun sees a plain cgroup v1 ("legacy") host and works.
    """

    def __init__(self, hide_unified):
        script = "umount -l /sys/fs/cgroup/unified || exit 1; " if hide_unified else ""
        script += "echo ready; exec sleep infinity"
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.close()
            die(f"could not set up a mount namespace (hide_unified={hide_unified})")
        # the holder is `sleep` after exec, same pid
        self.fd = os.open(f"/proc/{self.proc.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)

    def close(self):
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)
            self.fd = None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


# --------------------------------------------------------------------------------------------
# runtimes

class Runtime:
    def __init__(self, name, path, root, extra_global=(), mntns=None):
        self.name, self.path, self.root = name, path, root
        self.glob = [path, "--root", root, *extra_global]
        self.mntns = mntns
        self.run_needs_delete = False
        self.wait_methods = set()

    def cmd(self, sp, *args, capture=False):
        return sp.spawn(self.glob + list(args), mntns_fd=self.mntns.fd if self.mntns else None,
                        log=self.name, capture=capture)

    def check(self, res, what):
        if res["rc"] != 0:
            raise RuntimeError(f"{self.name} {what}: exit {res['rc']}: {res.get('err', '')}")
        return res

    def lifecycle(self, sp, bundle, cid, pidfile, wrap=()):
        """(a) create + start + wait + delete. Returns per-step ns and create rusage."""
        argv = self.glob + ["create", "--bundle", bundle, "--pid-file", pidfile, cid]
        t0 = time.perf_counter_ns()
        c = self.check(sp.spawn(list(wrap) + argv, mntns_fd=self.mntns.fd if self.mntns else None,
                                log=self.name), "create")
        with open(pidfile) as f:
            pid = int(f.read().strip())
        t1 = time.perf_counter_ns()
        self.check(self.cmd(sp, "start", cid), "start")
        t2 = time.perf_counter_ns()
        self.wait_methods.add(wait_exit(pid))
        t3 = time.perf_counter_ns()
        self.check(self.cmd(sp, "delete", cid), "delete")
        t4 = time.perf_counter_ns()
        os.unlink(pidfile)
        return {"total": t4 - t0, "create": t1 - t0, "start": t2 - t1, "wait": t3 - t2,
                "delete": t4 - t3, "create_cpu": c["cpu_ns"]}

    def run(self, sp, bundle, cid):
        """(b) run in the foreground (+ delete if the runtime keeps the container)."""
        t0 = time.perf_counter_ns()
        self.check(self.cmd(sp, "run", "--bundle", bundle, cid), "run")
        if self.run_needs_delete:
            self.check(self.cmd(sp, "delete", cid), "delete after run")
        return {"total": time.perf_counter_ns() - t0}

    def exists(self, sp, cid):
        return self.cmd(sp, "state", cid)["rc"] == 0

    def list_ids(self, sp):
        r = self.cmd(sp, "list", "-q", capture=True)
        return r.get("out", "").split() if r["rc"] == 0 else []


# --------------------------------------------------------------------------------------------
# reporting

def pct(values, p):
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def ms(ns):
    return ns / 1e6


def first_line(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return "?"


def machine_info():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "ram": f"{mem_kib / 1024 / 1024:.1f} GiB"}


def versions(rts, moat_path):
    v = {}
    for rt in rts:
        if rt.name == "moat":
            git = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                                 capture_output=True, text=True).stdout.strip() or "?"
            size = os.path.getsize(moat_path)
            v["moat"] = (f"{first_line([moat_path, '--version'])}, git {git}, "
                         f"binary {moat_path} ({size / 1e6:.2f} MB)")
        elif rt.name == "moat-baseline":
            size = os.path.getsize(rt.path)
            v[rt.name] = f"{first_line([rt.path, '--version'])}, binary {rt.path} ({size / 1e6:.2f} MB)"
        else:
            out = subprocess.run([rt.path, "--version"], capture_output=True, text=True).stdout
            v[rt.name] = ", ".join(out.strip().splitlines()[:2])
    return v


def report(rts, A, B, RSS, args, iters):
    names = [rt.name for rt in rts]
    lines = []
    lines.append(f"Iterations: {iters} measured per runtime and scenario "
                 f"(+{args.warmup} warm-up discarded), interleaved {', '.join(names)}.")
    lines.append("")
    lines.append("| runtime | (a) create+start+wait+delete median ms | p10 | p90 "
                 "| (b) run median ms | p10 | p90 | create peak RSS KiB (median) | create CPU ms (median) |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in names:
        a = [x["total"] for x in A[n]]
        b = [x["total"] for x in B[n]]
        rss = f"{statistics.median(RSS[n]):.0f}" if RSS.get(n) else "n/a"
        cpu = statistics.median(x["create_cpu"] for x in A[n])
        lines.append(f"| {n} | {ms(statistics.median(a)):.2f} | {ms(pct(a, 10)):.2f} | {ms(pct(a, 90)):.2f} "
                     f"| {ms(statistics.median(b)):.2f} | {ms(pct(b, 10)):.2f} | {ms(pct(b, 90)):.2f} "
                     f"| {rss} | {ms(cpu):.2f} |")
    if "moat" in names:
        lines.append("")
        ma = statistics.median(x["total"] for x in A["moat"])
        mb = statistics.median(x["total"] for x in B["moat"])
        for n in names:
            if n == "moat":
                continue
            ra = ma / statistics.median(x["total"] for x in A[n])
            rb = mb / statistics.median(x["total"] for x in B[n])
            lines.append(f"- ratio of medians moat/{n}: (a) {ra:.2f}, (b) {rb:.2f}")
    lines.append("")
    lines.append("Per-step medians of (a), ms:")
    lines.append("")
    lines.append("| runtime | create | start | wait for exit | delete |")
    lines.append("|---|---:|---:|---:|---:|")
    for n in names:
        row = [ms(statistics.median(x[k] for x in A[n])) for k in ("create", "start", "wait", "delete")]
        lines.append(f"| {n} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    return "\n".join(lines)


def method_text(rts, args, bundle):
    out = []
    out.append(f"- Bundle: `{bundle}`: rootfs = static busybox ({args.busybox}) + applet symlinks; "
               "config.json = `runc spec` with `process.terminal=false`, `process.args=[\"/bin/true\"]`, "
               "`root.readonly=false`, `process.capabilities.ambient` removed (moat refuses the "
               "ambient set of `runc spec`, see notes). The same file for every runtime.")
    out.append("- Each runtime has its own `--root` under the work directory. Every invocation: "
               "fork, setns into the runtime's mount namespace, execve, wait4 (rusage of the child); "
               "RUST_BACKTRACE/RUST_LIB_BACKTRACE removed from the environment.")
    if args.no_mntns:
        out.append("- Runtimes run in the host mount namespace (--no-mntns).")
    else:
        out.append("- Mount namespaces: each runtime runs in a private copy of the host mount namespace. "
                   "crun's copy has `/sys/fs/cgroup/unified` unmounted, because crun 1.8.1 refuses this "
                   "hybrid host (cgroup2 has the hugetlb controller): `cgroups in hybrid mode not supported, "
                   "drop all controllers from cgroupv2`, with any `--cgroup-manager`. crun therefore sees a "
                   "cgroup-v1-only host and creates v1 cgroups only; moat and runc see the real hybrid layout.")
    out.append("- (a): `create --bundle B --pid-file F ID`, read F, `start ID`, waitpid(init) "
               "(the harness is a child subreaper, so init is reparented to it when `create` exits), "
               "`delete ID`; wall time of the whole sequence (perf_counter). Wait methods used: "
               + ", ".join(f"{rt.name}={'/'.join(sorted(rt.wait_methods)) or '-'}" for rt in rts) + ".")
    out.append("- (b): `run --bundle B ID` in the foreground; "
               + ", ".join(f"{rt.name}: {'+ `delete` (run keeps the container)' if rt.run_needs_delete else 'run deletes the container itself'}"
                           for rt in rts) + ".")
    out.append("- create CPU: utime+stime from wait4() on the `create` process (plus any helper child "
               "it reaped itself; the container init is not included).")
    out.append(f"- create peak RSS: separate pass after the timed loop, {args.rss_iterations} interleaved "
               "lifecycles per runtime with `create` run as `/usr/bin/time -f %M -o FILE <runtime> create ...`: "
               "max RSS of the create process over its exec images (moat re-executes itself) and of the "
               "helper children it reaped itself, not the container init.")
    rotated = (" (rotated by one runtime every iteration)" if args.rotate
               else " (the same in every iteration, --fixed-order)")
    out.append(f"- Order per iteration: (a) for {', '.join(rt.name for rt in rts)}{rotated}, then (b) for the same order; "
               f"{args.warmup} warm-up iterations discarded.")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# cgroups left behind

def cgroup_dirs_with(prefix):
    found = []
    base = "/sys/fs/cgroup"
    for ctrl in sorted(os.listdir(base)):
        top = os.path.join(base, ctrl)
        if not os.path.isdir(top) or os.path.islink(top):
            continue
        for dirpath, dirnames, _ in os.walk(top):
            if dirpath.count("/") - top.count("/") > 4:
                dirnames[:] = []
                continue
            for d in dirnames:
                if d.startswith(prefix) or prefix in d:
                    found.append(os.path.join(dirpath, d))
    return found


def cleanup(rts, sp, prefix):
    left = []
    for rt in rts:
        for cid in rt.list_ids(sp):
            if cid.startswith(prefix):
                left.append(f"{rt.name}:{cid}")
                rt.cmd(sp, "delete", "--force", cid)
    reap_strays()
    removed, failed = [], []
    for d in sorted(cgroup_dirs_with(prefix), key=lambda p: -p.count("/")):
        try:
            os.rmdir(d)
            removed.append(d)
        except OSError as e:
            failed.append(f"{d}: {e.strerror}")
    return left, removed, failed


# --------------------------------------------------------------------------------------------

def default_moat():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    for p in (os.environ.get("MOAT_RUNTIME"),
              os.path.join(target, "dist", "moat-runtime"),  # cargo build --profile dist
              os.path.join(target, "release", "moat-runtime"),
              "/tmp/target-bench/dist/moat-runtime",
              "/tmp/target-bench/release/moat-runtime"):
        if p and os.access(p, os.X_OK):
            return p
    return os.path.join(REPO, "target", "dist", "moat-runtime")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--runtimes", default="moat,runc,crun", help="comma list, order = interleaving order")
    ap.add_argument("--moat", default=default_moat(), help="moat-runtime binary (default: %(default)s)")
    ap.add_argument("--baseline", metavar="BINARY",
                    help="another moat-runtime binary (e.g. of an older commit), timed interleaved "
                         "with the others as runtime `moat-baseline` (appended to --runtimes)")
    ap.add_argument("--fixed-order", dest="rotate", action="store_false",
                    help="the same order of runtimes in every iteration (before 2026-11-25 the only "
                         "method). By default the order rotates by one runtime every iteration: a "
                         "cgroup migration after ~20 ms without one waits for an RCU grace period "
                         "(5-17 ms on this kernel), so with a fixed order the first runtime of the "
                         "`run` round always pays it (bench/RESULTS.md, 2026-11-25 18:40)")
    ap.add_argument("--rotate", dest="rotate", action="store_true", help=argparse.SUPPRESS)
    ap.set_defaults(rotate=True)
    ap.add_argument("--runc", default=shutil.which("runc") or "/usr/sbin/runc")
    ap.add_argument("--crun", default=shutil.which("crun") or "/usr/bin/crun")
    ap.add_argument("--busybox", default="/bin/busybox")
    ap.add_argument("--rss-iterations", type=int, default=20,
                    help="lifecycles per runtime for the peak-RSS pass (0: skip)")
    ap.add_argument("--time", default="/usr/bin/time", help="GNU time, for the peak-RSS pass")
    ap.add_argument("--workdir", default="/tmp/moat-bench")
    ap.add_argument("--no-mntns", action="store_true",
                    help="run every runtime in the host mount namespace (crun fails on a hybrid cgroup host)")
    ap.add_argument("--record", action="store_true", help="append the results to bench/RESULTS.md")
    ap.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"))
    args = ap.parse_args()

    if os.geteuid() != 0:
        die("must run as root")
    for tool in (args.busybox, args.runc):
        if not os.access(tool, os.X_OK):
            die(f"{tool} not found")

    os.makedirs(args.workdir, exist_ok=True)
    bundle = os.path.join(args.workdir, "bundle")
    logdir = os.path.join(args.workdir, "logs")
    os.makedirs(logdir, exist_ok=True)
    build_bundle(bundle, args.busybox, args.runc)

    env = {k: v for k, v in os.environ.items() if k not in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE")}
    sp = Spawner(env, logdir)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        die("prctl(PR_SET_CHILD_SUBREAPER) failed")

    namespaces = []
    rts = []
    paths = {"moat": args.moat, "runc": args.runc, "crun": args.crun}
    names = [n.strip() for n in args.runtimes.split(",") if n.strip()]
    if args.baseline:
        paths["moat-baseline"] = args.baseline
        names.append("moat-baseline")
    for name in names:
        if name not in paths:
            die(f"unknown runtime {name}")
        if not os.access(paths[name], os.X_OK):
            die(f"{name}: {paths[name]} not executable")
        ns = None
        if not args.no_mntns:
            ns = MountNs(hide_unified=(name == "crun"))
            namespaces.append(ns)
        root = os.path.join(args.workdir, f"root-{name}")
        os.makedirs(root, exist_ok=True)
        rts.append(Runtime(name, paths[name], root, mntns=ns))

    prefix = f"{ID_PREFIX}{os.getpid()}"
    A = {rt.name: [] for rt in rts}
    B = {rt.name: [] for rt in rts}
    RSS = {rt.name: [] for rt in rts}
    total = args.warmup + args.iterations
    rc = 0
    started = time.time()
    try:
        # does `run` leave the container behind? (checked once per runtime, before timing)
        for rt in rts:
            cid = f"{prefix}-probe-{rt.name}"
            rt.check(rt.cmd(sp, "run", "--bundle", bundle, cid), "run (probe)")
            reap_strays()
            if rt.exists(sp, cid):
                rt.run_needs_delete = True
                rt.check(rt.cmd(sp, "delete", cid), "delete (probe)")
        for i in range(total):
            order = rts[i % len(rts):] + rts[:i % len(rts)] if args.rotate else rts
            for rt in order:
                r = rt.lifecycle(sp, bundle, f"{prefix}-{rt.name}-{i}-a",
                                 os.path.join(args.workdir, f"{rt.name}.pid"))
                reap_strays()
                if i >= args.warmup:
                    A[rt.name].append(r)
            for rt in order:
                r = rt.run(sp, bundle, f"{prefix}-{rt.name}-{i}-b")
                reap_strays()
                if i >= args.warmup:
                    B[rt.name].append(r)
            if (i + 1) % 20 == 0 or i + 1 == total:
                print(f"  iteration {i + 1}/{total} ({time.time() - started:.0f}s)", file=sys.stderr)
        if args.rss_iterations > 0 and os.access(args.time, os.X_OK):
            rssfile = os.path.join(args.workdir, "create.rss")
            for i in range(args.rss_iterations):
                for rt in rts:
                    rt.lifecycle(sp, bundle, f"{prefix}-{rt.name}-{i}-rss",
                                 os.path.join(args.workdir, f"{rt.name}.pid"),
                                 wrap=(args.time, "-f", "%M", "-o", rssfile))
                    reap_strays()
                    with open(rssfile) as f:
                        RSS[rt.name].append(int(f.read().split()[-1]))
        elif args.rss_iterations > 0:
            print(f"runtime.py: {args.time} not found: no peak RSS (apt-get install time)", file=sys.stderr)
    except (RuntimeError, KeyboardInterrupt) as e:
        print(f"runtime.py: aborted: {e}", file=sys.stderr)
        rc = 1
    finally:
        left, removed, failed = cleanup(rts, sp, prefix)
        for ns in namespaces:
            ns.close()
        reap_strays()
        if left:
            print(f"cleanup: force-deleted leftover containers: {left}", file=sys.stderr)
        if removed:
            print(f"cleanup: removed {len(removed)} leftover cgroup dirs, e.g. {removed[:3]}", file=sys.stderr)
        if failed:
            print(f"cleanup: could not remove: {failed}", file=sys.stderr)

    iters = min(len(v) for v in A.values()) if A else 0
    if iters == 0:
        sys.exit(rc or 1)
    for d in (A, B):
        for n in d:
            d[n] = d[n][:iters]
    table = report(rts, A, B, RSS, args, iters)
    print(table)
    if args.record:
        m = machine_info()
        v = versions(rts, args.moat)
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        text = [f"## Run of {now}", ""]
        text.append(f"- Machine: {m['cpu']}, {m['cores']} cores, {m['ram']} RAM, kernel {m['kernel']}")
        for k, val in v.items():
            text.append(f"- {k}: {val}")
        text.append(f"- Command: `{' '.join(['python3', 'bench/runtime.py'] + sys.argv[1:])}`; "
                    f"wall time of the benchmark {time.time() - started:.0f} s")
        text.append("")
        text.append("Method:")
        text.append("")
        text.append(method_text(rts, args, bundle))
        text.append("")
        text.append(table)
        text.append("")
        new = not os.path.exists(args.results)
        with open(args.results, "a") as f:
            if new:
                f.write("# moat benchmark results\n\nAppended by `bench/runtime.py --record`; see README.md.\n\n")
            f.write("\n".join(text) + "\n")
        print(f"recorded in {args.results}", file=sys.stderr)
    sys.exit(rc)


if __name__ == "__main__":
    main()
