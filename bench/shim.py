#!/usr/bin/env python3
"""Shim benchmark (Python 3 stdlib only; must run as root): containerd's CRI with three runtime
handlers in the same private containerd and the same run:

- `moat`: containerd-shim-moat-v2, one shim per pod (the default);
- `moat-shared`: the same binary as containerd-shim-moat-shared-v2, one shim for every pod;
- `runc`: containerd's own io.containerd.runc.v2 shim (one per pod).

Measured, per handler:

1. Shim memory: the PSS (/proc/PID/smaps_rollup) summed over every shim process of the
   containerd (servers, the shared shim's keeper and worker, moat's zygotes; not `start`/`delete`
   invocations) with 1, 10 and 30 pods running, each pod a sandbox and one busybox `sleep`
   container, host network; and the shared shim's keeper alone.
2. Pod start time: `crictl run` (RunPodSandbox, CreateContainer, StartContainer: from nothing to
   a running container), serial (each of the 30 starts of (1)), and 10 pods started at once
   (the wall time of each and of the whole batch).

Rounds interleave the handlers (the order rotates every round); a warm-up pod per handler is
discarded. Medians over all rounds. `--record` appends the machine, versions, method and tables
to bench/RESULTS.md.

Needs containerd (1.6), ctr, runc, crictl (`.ci/cri-tools.sh` builds it into
/var/cache/moat-test/cri-tools/bin, or $CRICTL), a static busybox (/bin/busybox), and the shim:
--shim, else $MOAT_SHIM, else $CARGO_TARGET_DIR/dist/containerd-shim-moat-v2 (build it with
`cargo build --profile dist -p moat-shim`), else the release build.
"""

import argparse
import concurrent.futures
import datetime
import hashlib
import io
import itertools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
BUSYBOX = "/bin/busybox"
HANDLERS = {
    "moat": "io.containerd.moat.v2",
    "moat-shared": "io.containerd.moat-shared.v2",
    "runc": "io.containerd.runc.v2",
}
IMAGE = "localhost/moat-bench-busybox:1"
PAUSE = "localhost/moat-bench-pause:1"
CGROUP_PARENT = "moat-bench-shim"
NS = "k8s.io"


def die(msg):
    print(f"shim.py: {msg}", file=sys.stderr)
    sys.exit(1)


def find_shim(arg):
    for p in [arg, os.environ.get("MOAT_SHIM"),
              os.path.join(TARGET, "dist", "containerd-shim-moat-v2"),
              os.path.join(TARGET, "release", "containerd-shim-moat-v2")]:
        if p and os.path.isfile(p):
            return os.path.abspath(p)
    die("no shim binary: build it with `cargo build --profile dist -p moat-shim` or pass --shim")


def find_crictl():
    for p in [os.environ.get("CRICTL"), "/var/cache/moat-test/cri-tools/bin/crictl",
              shutil.which("crictl")]:
        if p and os.path.isfile(p):
            return p
    die("no crictl: run .ci/cri-tools.sh or set CRICTL")


# --- images ---------------------------------------------------------------------------------

def add_file(tar, name, data, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def busybox_layer():
    """A one-layer busybox root filesystem as tar bytes."""
    buf = io.BytesIO()
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root", "run"]:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        with open(BUSYBOX, "rb") as f:
            add_file(tar, "bin/busybox", f.read(), 0o755)
        for a in applets:
            if a != "busybox":
                info = tarfile.TarInfo(f"bin/{a}")
                info.type = tarfile.SYMTYPE
                info.linkname = "busybox"
                tar.addfile(info)
        add_file(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        add_file(tar, "etc/group", b"root:x:0:\n")
    return buf.getvalue()


def docker_archive(path, tag, layer, config):
    """A `docker save` tarball of a one-layer image (ctr image import reads it)."""
    diff = hashlib.sha256(layer).hexdigest()
    cfg = json.dumps({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff}"]},
        "history": [{"created_by": "moat bench"}],
    }).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    manifest = json.dumps([{"Config": cfg_name, "RepoTags": [tag], "Layers": ["layer.tar"]}])
    with tarfile.open(path, "w") as tar:
        add_file(tar, "layer.tar", layer)
        add_file(tar, cfg_name, cfg)
        add_file(tar, "manifest.json", manifest.encode())


# --- containerd -----------------------------------------------------------------------------

def has_cap_sys_resource():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 24))
    return False


def clean_env():
    env = dict(os.environ)
    for k in ["RUST_BACKTRACE", "RUST_LIB_BACKTRACE", "MOAT_SHIM_SHARED"]:
        env.pop(k, None)
    return env


class Containerd:
    def __init__(self, work, shim):
        self.work = work
        self.sock = os.path.join(work, "containerd.sock")
        shims = os.path.join(work, "shims")
        os.makedirs(shims)
        for name in ["containerd-shim-moat-v2", "containerd-shim-moat-shared-v2"]:
            os.symlink(shim, os.path.join(shims, name))
        os.makedirs(os.path.join(work, "cni"))
        runtimes = "".join(
            f'    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{h}]\n'
            f'      runtime_type = "{t}"\n' for h, t in HANDLERS.items())
        config = f'''version = 2
root = "{work}/root"
state = "{work}/state"
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  disable_apparmor = true
  restrict_oom_score_adj = {"false" if has_cap_sys_resource() else "true"}
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
{runtimes}  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{work}/cni"
'''
        with open(os.path.join(work, "config.toml"), "w") as f:
            f.write(config)
        env = clean_env()
        env["PATH"] = shims + ":" + env.get("PATH", "")
        self.log = open(os.path.join(work, "containerd.log"), "w")
        self.proc = subprocess.Popen(
            ["containerd", "--config", os.path.join(work, "config.toml")],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, env=env,
            start_new_session=True)
        deadline = time.time() + 30
        while not open(self.log.name).read().count("successfully booted"):
            if self.proc.poll() is not None or time.time() > deadline:
                die("containerd did not boot:\n" + open(self.log.name).read()[-3000:])
            time.sleep(0.05)

    def ctr(self, *args):
        return subprocess.run(["ctr", "--address", self.sock, "-n", NS, *args],
                              capture_output=True, text=True, check=True).stdout

    def shims(self):
        """Serving shim processes of this containerd: {pid: command line}."""
        needle = f"-address {self.sock} "
        out = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            if "containerd-shim" in cmd and needle in cmd + " " \
                    and not cmd.endswith((" start", " delete")):
                out[int(d)] = cmd
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.shims():
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        with open("/proc/self/mountinfo") as f:
            mounts = [l.split()[4] for l in f if l.split()[4].startswith(self.work)]
        for m in reversed(mounts):
            subprocess.run(["umount", "-l", m], capture_output=True)


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# --- pods -----------------------------------------------------------------------------------

class Pods:
    def __init__(self, cd, crictl, work):
        self.cd = cd
        self.work = work
        self.base = [crictl, "--runtime-endpoint", f"unix://{cd.sock}",
                     "--image-endpoint", f"unix://{cd.sock}", "--timeout", "120s"]
        self.counter = itertools.count(1)
        self.ctr_json = os.path.join(work, "ctr.json")
        host = {"network": 2, "pid": 1, "ipc": 0}
        with open(self.ctr_json, "w") as f:
            json.dump({"metadata": {"name": "sleeper"}, "image": {"image": IMAGE},
                       "command": ["sleep", "1000000"], "log_path": "sleeper.log",
                       "linux": {"security_context": {"namespace_options": host}}}, f)

    def crictl(self, *args):
        r = subprocess.run(self.base + list(args), capture_output=True, text=True,
                           env=clean_env())
        if r.returncode != 0:
            die(f"crictl {' '.join(args)}: {r.stderr.strip()}\n"
                + open(self.cd.log.name).read()[-3000:])
        return r.stdout

    def start(self, handler):
        """Start a pod with one container; returns the wall time of `crictl run` in ms."""
        # next() on an itertools.count is atomic under the GIL; `+= 1` is not (10 threads start).
        name = f"bench-{next(self.counter)}"
        logs = os.path.join(self.work, "logs", name)
        os.makedirs(logs)
        pod = os.path.join(self.work, f"{name}.json")
        with open(pod, "w") as f:
            json.dump({"metadata": {"name": name, "uid": f"uid-{name}", "namespace": "bench"},
                       "log_directory": logs,
                       "linux": {"cgroup_parent": f"/{CGROUP_PARENT}", "security_context": {
                           "namespace_options": {"network": 2, "pid": 1, "ipc": 0}}}}, f)
        t = time.perf_counter()
        self.crictl("run", "--no-pull", "--runtime", handler, self.ctr_json, pod)
        return (time.perf_counter() - t) * 1000

    def remove_all(self):
        self.crictl("rmp", "-fa")
        deadline = time.time() + 30
        while self.cd.shims():
            if time.time() > deadline:
                die(f"shims left after removing every pod: {self.cd.shims()}")
            time.sleep(0.05)

    def memory(self):
        """PSS summed over the shim processes, their number, and the PSS of the shared shim's
        keeper (the process on the well-known socket, see crates/moat-shim/src/keeper.rs)."""
        shims = self.cd.shims()
        # A shim's zygote and workers are forks carrying its command line: counted too.
        keeper = sum(pss_kib(p) for p, cmd in shims.items()
                     if re.search(r"-socket unix:///run/moat-shim/shared/\S+\.sock( |$)", cmd))
        return sum(pss_kib(p) for p in shims), len(shims), keeper


def remove_cgroups():
    for root in ["/sys/fs/cgroup"] + [os.path.join("/sys/fs/cgroup", d)
                                      for d in os.listdir("/sys/fs/cgroup")]:
        top = os.path.join(root, CGROUP_PARENT)
        if not os.path.isdir(top):
            continue
        for d, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            try:
                os.rmdir(d)
            except OSError:
                pass


def cgroup_mode():
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "v2 (unified)"
    if os.path.isdir("/sys/fs/cgroup/unified"):
        return "v1 (hybrid: v1 controllers, cgroup2 at /sys/fs/cgroup/unified)"
    return "v1"


def run(args):
    shim = find_shim(args.shim)
    crictl = find_crictl()
    for b in ["containerd", "ctr", "runc", BUSYBOX]:
        if not shutil.which(b) and not os.path.exists(b):
            die(f"{b} is missing")
    work = tempfile.mkdtemp(prefix="moat-bench-shim-")
    cd = Containerd(work, shim)
    results = {h: {"pss": {1: [], 10: [], 30: []}, "keeper": {1: [], 10: [], 30: []},
                   "procs": {}, "serial": [],
                   "parallel_each": [], "parallel_batch": []} for h in HANDLERS}
    t_all = time.time()
    try:
        layer = busybox_layer()
        docker_archive(os.path.join(work, "busybox.tar"), IMAGE, layer,
                       {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]})
        docker_archive(os.path.join(work, "pause.tar"), PAUSE, layer, {
            "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": ["/bin/sh", "-c",
                           "trap 'exit 0' TERM INT; while :; do sleep 1000 & wait; done"]})
        for t in ["busybox.tar", "pause.tar"]:
            cd.ctr("image", "import", os.path.join(work, t))
        pods = Pods(cd, crictl, work)
        handlers = list(HANDLERS)
        for h in handlers:  # warm-up, discarded
            pods.start(h)
            pods.remove_all()
        for r in range(args.rounds):
            order = handlers[r % 3:] + handlers[:r % 3]
            for h in order:
                res = results[h]
                for i in range(1, 31):
                    res["serial"].append(pods.start(h))
                    if i in (1, 10, 30):
                        time.sleep(args.settle)
                        pss, n, keeper = pods.memory()
                        res["pss"][i].append(pss)
                        res["keeper"][i].append(keeper)
                        res["procs"][i] = n
                pods.remove_all()
                t = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(10) as ex:
                    each = list(ex.map(lambda _: pods.start(h), range(10)))
                res["parallel_batch"].append((time.perf_counter() - t) * 1000)
                res["parallel_each"].extend(each)
                pods.remove_all()
                print(f"round {r + 1} {h}: serial median "
                      f"{statistics.median(res['serial'][-30:]):.0f} ms, 30 pods "
                      f"{res['pss'][30][-1] / 1024:.1f} MiB PSS, batch of 10 "
                      f"{res['parallel_batch'][-1]:.0f} ms", flush=True)
    finally:
        try:
            subprocess.run(Pods(cd, crictl, work).base + ["rmp", "-fa"], capture_output=True,
                           timeout=120)
        except Exception:
            pass
        cd.stop()
        remove_cgroups()
        shutil.rmtree(work, ignore_errors=True)
    return shim, crictl, results, time.time() - t_all


def report(shim, crictl, results, wall, args):
    med = statistics.median
    out = []
    out.append("| handler | shim processes at 1 / 10 / 30 pods | PSS 1 pod MiB | PSS 10 pods MiB "
               "| PSS 30 pods MiB | per pod at 30 MiB | start serial median ms | p90 "
               "| 10 in parallel: each median ms | whole batch median ms |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for h, r in results.items():
        p = {n: med(v) / 1024 for n, v in r["pss"].items()}
        ser = sorted(r["serial"])
        p90 = ser[int(len(ser) * 0.9)]
        out.append(f"| `{h}` | {r['procs'][1]} / {r['procs'][10]} / {r['procs'][30]} "
                   f"| {p[1]:.1f} | {p[10]:.1f} | {p[30]:.1f} | {p[30] / 30:.2f} "
                   f"| {med(r['serial']):.0f} | {p90:.0f} | {med(r['parallel_each']):.0f} "
                   f"| {med(r['parallel_batch']):.0f} |")
    s, m, rc = results["moat-shared"], results["moat"], results["runc"]

    def ratio(a, b):
        return f"{a / b:.2f}"
    out.append("")
    for n in (1, 10, 30):
        out.append(f"- PSS at {n} pod(s): shared/per-pod moat "
                   f"{ratio(med(s['pss'][n]), med(m['pss'][n]))}, shared/runc "
                   f"{ratio(med(s['pss'][n]), med(rc['pss'][n]))}, per-pod moat/runc "
                   f"{ratio(med(m['pss'][n]), med(rc['pss'][n]))}")
    k = {n: med(v) / 1024 for n, v in s["keeper"].items()}
    out.append(f"- the shared shim's keeper alone (included above): {k[1]:.1f} / {k[10]:.1f} / "
               f"{k[30]:.1f} MiB PSS at 1 / 10 / 30 pods")
    out.append(f"- serial start: shared/per-pod moat {ratio(med(s['serial']), med(m['serial']))}"
               f", shared/runc {ratio(med(s['serial']), med(rc['serial']))}, per-pod moat/runc "
               f"{ratio(med(m['serial']), med(rc['serial']))}")
    out.append(f"- 10 in parallel (whole batch): shared/per-pod moat "
               f"{ratio(med(s['parallel_batch']), med(m['parallel_batch']))}, shared/runc "
               f"{ratio(med(s['parallel_batch']), med(rc['parallel_batch']))}, per-pod moat/runc "
               f"{ratio(med(m['parallel_batch']), med(rc['parallel_batch']))}")
    table = "\n".join(out)
    print(table)
    if not args.record:
        return

    def cmd(*c):
        try:
            return subprocess.run(c, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "?")
    ram = next((int(l.split()[1]) for l in open("/proc/meminfo")
                if l.startswith("MemTotal")), 0) / 1024 / 1024
    git = cmd("git", "-C", REPO, "describe", "--always", "--dirty")
    section = f"""
## Shim memory and pod start: per-pod moat shims, the shared shim, runc's shim ({datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC)

- Machine: {cpu}, {os.cpu_count()} cores, {ram:.1f} GiB RAM, kernel {platform.release()}, cgroup {cgroup_mode()}
- containerd: {cmd("containerd", "--version")}; runc: {cmd("runc", "--version").splitlines()[0] if cmd("runc", "--version") else "?"}; crictl: {cmd(crictl, "--version").replace("version unknown", "v1.26.1 (built from the vendored sources)")}
- moat shim: git {git}, binary {shim} ({os.path.getsize(shim) / 1e6:.2f} MB)
- Command: `python3 bench/shim.py --record --rounds {args.rounds}`; wall time {wall:.0f} s; load average before / after: {args.load_before} / {os.getloadavg()[0]:.1f}

Method: one private containerd (CRI plugin, cgroupfs, overlayfs) with the handlers `moat`
(per-pod shim), `moat-shared` (`io.containerd.moat-shared.v2`, one shim for every pod) and `runc`
(`io.containerd.runc.v2`); RUST_BACKTRACE unset. A pod is a sandbox (busybox `sh` waiting on a
`sleep`) and one busybox `sleep` container, host network, started with `crictl run --no-pull`
(RunPodSandbox, CreateContainer, StartContainer: the wall time of the command, crictl's own start
included alike for all). Per round and handler: 30 pods started one after the other (the serial
times), the PSS (`/proc/PID/smaps_rollup`) summed over every shim process (servers, the shared
shim's keeper and worker, moat's zygotes; `start`/`delete` invocations excluded) {args.settle} s after the 1st, 10th and 30th pod;
`crictl rmp -fa`; then 10 pods started at once by 10 threads (the time of each and of the whole
batch); `crictl rmp -fa`. {args.rounds} rounds, handler order rotated each round, one warm-up pod
per handler discarded. Medians over the rounds (memory) and over every start (times).

{table}
"""
    with open(os.path.join(HERE, "RESULTS.md"), "a") as f:
        f.write(section)
    print("appended to bench/RESULTS.md")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shim", help="containerd-shim-moat-v2 binary (default: the dist build)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds to wait before reading memory")
    ap.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = ap.parse_args()
    if os.geteuid() != 0:
        die("must run as root")
    args.load_before = f"{os.getloadavg()[0]:.1f}"
    shim, crictl, results, wall = run(args)
    report(shim, crictl, results, wall, args)


if __name__ == "__main__":
    main()
