#!/usr/bin/env python3
"""VM templates and density benchmark (Python 3 stdlib only; must run as root).

Against a one-layer busybox image imported into a private moat store:
1. Start: wall time of `moat run --rm --isolation vm --network none IMAGE true` as a clone of a
   template (the default) and as a cold boot (MOAT_VM_TEMPLATES=0), interleaved, medians; the
   same with a directory bind (`-v DIR:/data`, the VM then shares a directory: FUSE over a serial
   port served by moat-vmfs for a clone, virtiofs for a cold boot).
2. Host memory of one idle VM sandbox (`moat run -d ... sleep 600`, 12 s after its start): PSS
   (smaps_rollup) of every host process it has (QEMU, moat's monitor, the share server when it
   shares a directory), clone and cold, without and with a directory bind; the clone also
   1.5 s after its start and with the idle reclaim off (MOAT_VM_RECLAIM=0), and the time of
   `moat exec CID true` in it with and without the reclaim.
3. 20 idle clones at once: their total PSS and the PSS per sandbox.
4. 20 VM containers started at once (`moat run -d` in parallel): wall time and starts per
   second per core.

Replaces the "Templates" section of bench/VM-RESULTS.md. Environment: MOAT_AGENT_BIN (else the
moat-agent beside --moat), --moat (default $CARGO_TARGET_DIR/dist/moat, CARGO_TARGET_DIR
defaulting to /tmp/target-bench). Unset RUST_BACKTRACE when timing.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# How long an idle sandbox has idled when it is measured.
IDLE_S = 12.0
sys.path.insert(0, HERE)
import vm  # noqa: E402  (make_image, kernel, accel, pss_kib)

TARGET = os.environ.get("CARGO_TARGET_DIR", "/tmp/target-bench")
SECTION = "## Templates, clones and density"


def procs():
    """(pid, command line) of every process."""
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/cmdline", "rb") as f:
                yield int(e), f.read().decode(errors="replace")
        except OSError:
            continue


def monitors(store):
    """moat processes of this store (the monitors of detached containers)."""
    return {pid for pid, cl in procs() if store in cl and "qemu" not in cl}


def sandbox_pids(moat, store, cid, before):
    """QEMU (the state's pid), moat's monitor (a moat process of the store that was not there
    `before`) and the share server (virtiofsd or moat-vmfs: its socket is in QEMU's run dir) of
    container `cid`."""
    st = json.loads(subprocess.run([moat, "--root", store, "inspect", cid], check=True,
                                   capture_output=True).stdout)
    qemu = st["State"]["Pid"]
    with open(f"/proc/{qemu}/cmdline", "rb") as f:
        qcl = f.read().decode(errors="replace").split("\0")
    run = next((a[len("file:"):].rsplit("/", 1)[0] for a in qcl if a.startswith("file:")), "")
    vfs = {pid for pid, cl in procs()
           if ("virtiofsd" in cl or "moat-vmfs" in cl) and run and run in cl}
    return {qemu} | (monitors(store) - before) | vfs


def qemu_breakdown(pid):
    """PSS (MiB) of QEMU `pid` by kind of mapping: the template's memory file (the guest pages
    it reads from the template and the ones it copied on write), anonymous memory (TCG's
    translation buffer, QEMU's heap), and the other files (QEMU's binary and libraries)."""
    kinds = {"template": 0, "anon": 0, "files": 0}
    kind = "anon"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                parts = line.split()
                path = parts[5] if len(parts) > 5 else ""
                kind = ("template" if "/templates/" in path
                        else "files" if path.startswith("/") else "anon")
            elif line.startswith("Pss:"):
                kinds[kind] += int(line.split()[1])
    return {k: v / 1024 for k, v in kinds.items()}


def cpu_ticks(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total


def cpu_percent(pids, seconds):
    """CPU time of `pids` over `seconds` of idleness, in % of one core."""
    a, t = cpu_ticks(pids), time.monotonic()
    time.sleep(seconds)
    return (cpu_ticks(pids) - a) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t) * 100


def pss_mib(pids):
    total = 0
    for p in pids:
        try:
            total += vm.pss_kib(p)
        except OSError:
            pass
    return total / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--many", type=int, default=20)
    ap.add_argument("--moat", default=os.path.join(TARGET, "dist/moat"))
    ap.add_argument("--out", default=os.path.join(HERE, "VM-RESULTS.md"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        vm.die("must run as root")
    agent = os.environ.get("MOAT_AGENT_BIN", os.path.join(os.path.dirname(a.moat), "moat-agent"))
    for p in [a.moat, agent]:
        if not os.path.exists(p):
            vm.die(f"{p} is missing (cargo build --profile dist -p moat-cli -p moat-agent)")
    env = dict(os.environ, MOAT_AGENT_BIN=agent)
    env.pop("RUST_BACKTRACE", None)
    cold_env = dict(env, MOAT_VM_TEMPLATES="0")
    release, _ = vm.kernel()
    acc = vm.accel()
    work = tempfile.mkdtemp(prefix="moat-vmtpl-")
    store = os.path.join(work, "store")
    started = []

    def moat(*args, e=env, **kw):
        return subprocess.run([a.moat, "--root", store, *args], env=e, **kw)

    def run_d(e, *cmd, opts=()):
        r = moat("run", "-d", "--isolation", "vm", "--network", "none", *opts, image, *cmd, e=e,
                 capture_output=True, text=True)
        if r.returncode != 0:
            vm.die(f"moat run -d failed: {r.stderr}")
        cid = r.stdout.strip()
        started.append(cid)
        return cid

    def rm(cids):
        for c in cids:
            moat("rm", "-f", c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if c in started:
                started.remove(c)

    try:
        image = vm.make_image(os.path.join(work, "image"), a.moat, store)
        data = os.path.join(work, "data")
        os.makedirs(data)
        with open(os.path.join(data, "f"), "w") as f:
            f.write("from the host\n")
        vol = ["-v", f"{data}:/data"]
        one = ["run", "--rm", "--isolation", "vm", "--network", "none", image, "true"]
        one_v = ["run", "--rm", "--isolation", "vm", "--network", "none", *vol, image,
                 "sh", "-c", "read l < /data/f; echo $l"]
        # warm-up: the disk image, the template, the cold path's caches
        for e in (env, cold_env):
            for cmd in (one, one_v):
                r = moat(*cmd, e=e, capture_output=True, text=True)
                if r.returncode != 0:
                    vm.die(f"warm-up failed: {r.stderr}")
        clones, colds, clones_v, colds_v = [], [], [], []
        for _ in range(a.runs):
            for cmd, e, xs in ((one, env, clones), (one, cold_env, colds),
                               (one_v, env, clones_v), (one_v, cold_env, colds_v)):
                t = time.monotonic()
                r = moat(*cmd, e=e, capture_output=True, text=True)
                xs.append(time.monotonic() - t)
                if r.returncode != 0 or (cmd is one_v and "from the host" not in r.stdout):
                    vm.die(f"moat run failed: {r.stdout} {r.stderr}")
        # one idle sandbox each way, measured once it has idled IDLE_S seconds (and the
        # clone also 3 s after its start, before the idle reclaim could run, and with the
        # reclaim off); then the cost of an exec in it
        idle, early, execs = {}, {}, {}
        noreclaim_env = dict(env, MOAT_VM_RECLAIM="0")
        for name, e, opts in (("clone", env, ()), ("clone-noreclaim", noreclaim_env, ()),
                              ("cold", cold_env, ()), ("clone-v", env, vol),
                              ("cold-v", cold_env, vol)):
            before = monitors(store)
            t0 = time.monotonic()
            cid = run_d(e, "sleep", "600", opts=opts)
            pids = sandbox_pids(a.moat, store, cid, before)
            st = json.loads(moat("inspect", cid, capture_output=True).stdout)
            qemu = st["State"]["Pid"]
            if name == "clone":
                time.sleep(max(0.0, t0 + 1.5 - time.monotonic()))
                early = (pss_mib(pids), qemu_breakdown(qemu))
            time.sleep(max(0.0, t0 + IDLE_S - time.monotonic()))
            idle[name] = (pss_mib(pids), len(pids), pss_mib({qemu}), cpu_percent(pids, 5))
            if name == "clone":
                breakdown = qemu_breakdown(qemu)
            if name in ("clone", "clone-noreclaim"):
                xs = []
                for _ in range(5):
                    t = time.monotonic()
                    moat("exec", cid, "true", e=e, check=True)
                    xs.append(time.monotonic() - t)
                    time.sleep(0.5)
                execs[name] = xs
            rm([cid])
        # many idle clones at once
        before = monitors(store)
        cids = [run_d(env, "sleep", "600") for _ in range(a.many)]
        time.sleep(IDLE_S)
        qemus = set()
        for c in cids:
            st = json.loads(moat("inspect", c, capture_output=True).stdout)
            qemus.add(st["State"]["Pid"])
        many_pss = pss_mib(qemus | (monitors(store) - before))
        rm(cids)
        # many started at once
        t = time.monotonic()
        procs = [subprocess.Popen([a.moat, "--root", store, "run", "-d", "--isolation", "vm",
                                   "--network", "none", image, "sleep", "600"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(a.many)]
        outs = [p.communicate() for p in procs]
        burst = time.monotonic() - t
        ok = [o.strip() for (o, _), p in zip(outs, procs) if p.returncode == 0]
        started.extend(ok)
        failed = [err for (_, err), p in zip(outs, procs) if p.returncode != 0]
        rm(ok)
    finally:
        rm(list(started))
        shutil.rmtree(work, ignore_errors=True)

    def ms(xs):
        return f"{statistics.median(xs) * 1000:.0f}"

    ncpu = os.cpu_count()
    rate = len(ok) / burst / ncpu
    lines = [
        SECTION,
        "",
        f"`bench/vm_templates.py`, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}"
        f" UTC, host kernel {platform.release()}, {ncpu} CPUs, guest kernel {release}, "
        f"accelerator **{acc}**, 256 MiB guests, {a.runs} runs each (interleaved), medians.",
        "",
        "| what | median (ms) | all runs (ms) |",
        "|---|---|---|",
        f"| `moat run --rm --isolation vm IMAGE true`, clone of a template | {ms(clones)} | "
        + ", ".join(f"{x * 1000:.0f}" for x in clones) + " |",
        f"| the same, cold boot (`MOAT_VM_TEMPLATES=0`) | {ms(colds)} | "
        + ", ".join(f"{x * 1000:.0f}" for x in colds) + " |",
        f"| with a directory bind (`-v DIR:/data`, reading /data/f), clone (FUSE over a serial "
        f"port, moat-vmfs) | {ms(clones_v)} | " + ", ".join(f"{x * 1000:.0f}" for x in clones_v)
        + " |",
        f"| the same, cold boot (virtiofs) | {ms(colds_v)} | "
        + ", ".join(f"{x * 1000:.0f}" for x in colds_v) + " |",
        "",
        f"clone / cold: {statistics.median(clones) / statistics.median(colds):.2f}x "
        "(target: at most 0.15x and 500 ms); with a directory bind "
        f"{statistics.median(clones_v) / statistics.median(colds_v):.2f}x.",
        "",
        "| host memory (PSS, MiB) | clone | cold boot |",
        "|---|---|---|",
        f"| one idle sandbox (`sleep`), every host process it has | {idle['clone'][0]:.1f} "
        f"({idle['clone'][1]} processes) | {idle['cold'][0]:.1f} ({idle['cold'][1]} processes) |",
        f"| of which QEMU | {idle['clone'][2]:.1f} | {idle['cold'][2]:.1f} |",
        f"| the clone without the idle reclaim (`MOAT_VM_RECLAIM=0`), every host process | "
        f"{idle['clone-noreclaim'][0]:.1f} | |",
        f"| the clone 1.5 s after its start (before the first idle check) | {early[0]:.1f} | |",
        f"| one idle sandbox with a directory bind, every host process | "
        f"{idle['clone-v'][0]:.1f} ({idle['clone-v'][1]} processes) | {idle['cold-v'][0]:.1f} "
        f"({idle['cold-v'][1]} processes) |",
        "",
        f"Host CPU of one idle sandbox (every host process, over 5 s, % of one core): clone "
        f"{idle['clone'][3]:.1f}, cold {idle['cold'][3]:.1f}; with a directory bind: clone "
        f"{idle['clone-v'][3]:.1f}, cold {idle['cold-v'][3]:.1f}.",
        "",
        f"The clone's QEMU alone: {breakdown['template']:.1f} MiB of the template's memory file "
        f"(guest pages read from it and copied on write), {breakdown['anon']:.1f} MiB anonymous "
        f"(TCG's translation buffer, at most `MOAT_VM_TB_MIB` = 32, and QEMU's heap), "
        f"{breakdown['files']:.1f} MiB QEMU's binary and libraries (shared by every QEMU).",
        "",
        f"Idle sandboxes are measured {IDLE_S:.0f} s after their start. The idle reclaim "
        f"(moat_vm::reclaim: `process_madvise(MADV_PAGEOUT)` of QEMU's and the monitor's "
        f"file-backed pages once QEMU idles) took the clone's template pages from "
        f"{early[1]['template']:.1f} to {breakdown['template']:.1f} MiB and QEMU's binary and "
        f"libraries from {early[1]['files']:.1f} to {breakdown['files']:.1f} MiB. "
        f"`moat exec CID true` in it afterwards: {ms(execs['clone'])} ms median (runs: "
        + ", ".join(f"{x * 1000:.0f}" for x in execs["clone"])
        + f"), without the reclaim {ms(execs['clone-noreclaim'])} ms ("
        + ", ".join(f"{x * 1000:.0f}" for x in execs["clone-noreclaim"]) + ").",
        "",
        f"{a.many} idle clones at once: {many_pss:.0f} MiB PSS in total, "
        f"{many_pss / a.many:.1f} MiB per sandbox (QEMU and monitor; the template's pages are "
        "shared between clones).",
        "",
        f"{a.many} VM containers started at once (`moat run -d`, clones): {len(ok)} started in "
        f"{burst:.1f} s, {rate:.2f} starts per second per core"
        + (f"; {len(failed)} failed: {failed[0].strip()[:200]}" if failed else "") + ".",
        "",
    ]
    text = "\n".join(lines)
    old = open(a.out).read() if os.path.exists(a.out) else "# VM isolation benchmark\n"
    if SECTION in old:
        head, _, rest = old.partition(SECTION)
        nxt = re.search(r"^## ", rest, re.M)
        old = head + (rest[nxt.start():] if nxt else "")
    with open(a.out, "w") as f:
        f.write(old.rstrip("\n") + "\n\n" + text)
    print(text)


if __name__ == "__main__":
    main()
