#!/usr/bin/env python3
"""VM isolation benchmark (Python 3 stdlib only; must run as root).

1. Wall time of `moat run --rm --isolation vm IMAGE true` (a one-layer busybox image imported
   into a private moat store: snapshot + spec + image build + QEMU boot + agent + container
   create/start/exit + power-off + removal), and of `moat-runtime run` of a VM container (bundle
   annotated io.moat.isolation=vm) running `/bin/true`.
2. The floor: a bare QEMU boot of the same kernel, same machine and accelerator, same memory and
   command line, with a minimal initramfs whose /init (static busybox) powers off at once.
   Runs of (1) and (2) are interleaved; medians of --runs.
3. Host memory of one idle VM sandbox: the PSS (/proc/<pid>/smaps_rollup) of QEMU and of the
   virtiofsd serving its rootfs (a detached VM container has no other host process), beside its
   guest RAM size (-m).
4. Image size: `moat-runtime run` of the busybox bundle and of a bundle whose rootfs holds
   220 MB more (220 files of 1 MiB), interleaved: the rootfs is shared, never copied, so the two
   should start alike; and the disk a created VM container uses in its state directory.

Writes bench/VM-RESULTS.md. Environment: MOAT_AGENT_BIN (else the moat-agent built beside the
binaries), --runtime (moat-runtime binary), --moat (moat binary). Both default to the builds under
$CARGO_TARGET_DIR (default /tmp/target-vmrt).
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
REPO = os.path.dirname(HERE)
TARGET = os.environ.get("CARGO_TARGET_DIR", "/tmp/target-vmrt")
VM_DIR = os.environ.get("MOAT_VM_DIR", "/var/lib/moat/vm")
BUSYBOX = "/bin/busybox"


def die(msg):
    print(f"vm.py: {msg}", file=sys.stderr)
    sys.exit(1)


def newc(entries):
    """A newc cpio archive of (name, mode, data) entries (data None for a directory)."""
    out = bytearray()
    ino = 1
    for name, mode, data in entries + [("TRAILER!!!", 0, b"")]:
        data = data or b""
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(
            f"{v:08x}"
            for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0)
        )
        out += hdr.encode() + nb
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
        ino += 1
    return bytes(out)


def floor_initramfs(path, sleep=0):
    with open(BUSYBOX, "rb") as f:
        bb = f.read()
    init = b"#!/bin/busybox sh\n"
    if sleep:
        init += b"/bin/busybox sleep %d\n" % sleep
    init += b"/bin/busybox poweroff -f\n"
    with open(path, "wb") as f:
        f.write(newc([("bin", 0o40755, None), ("bin/busybox", 0o100755, bb),
                      ("dev", 0o40755, None), ("init", 0o100755, init)]))


def kernel():
    kdir = os.path.join(VM_DIR, "kernel")
    rels = sorted(r for r in os.listdir(kdir) if os.path.exists(os.path.join(kdir, r, ".complete")))
    if not rels:
        die(f"no guest kernel in {kdir}: run moat-vm-setup or the moat-vm tests first")
    return rels[-1], os.path.join(kdir, rels[-1], "vmlinuz")


def accel():
    forced = os.environ.get("MOAT_VM_ACCEL")
    if forced:
        return forced
    try:
        with open(os.path.join(VM_DIR, "accel-probe")) as f:
            return f.read().split()[-1]
    except OSError:
        return "tcg"


def tsc_khz():
    info = open("/proc/cpuinfo").read()
    flags = next(l for l in info.splitlines() if l.startswith("flags"))
    if "constant_tsc" not in flags.split():
        return None
    mhz = float(next(l for l in info.splitlines() if l.startswith("cpu MHz")).split(":")[1])
    return round(mhz * 1000)


def bare_cmd(vmlinuz, initrd, acc, mem_mib):
    cmdline = "console=ttyS0 quiet loglevel=4 panic=-1 rdinit=/init"
    if acc == "tcg" and tsc_khz():
        cmdline += f" tsc_early_khz={tsc_khz()} tsc=reliable"
    cmd = ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=off,acpi=on",
           "-accel", acc, "-m", str(mem_mib), "-smp", "1", "-nodefaults", "-no-user-config",
           "-no-reboot", "-display", "none", "-kernel", vmlinuz, "-initrd", initrd,
           "-append", cmdline, "-serial", "null"]
    if acc == "kvm":
        cmd[5:5] = ["-cpu", "host"]
    return cmd


def bare_boot(vmlinuz, initrd, acc, mem_mib):
    cmd = bare_cmd(vmlinuz, initrd, acc, mem_mib)
    t = time.monotonic()
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=120)
    dt = time.monotonic() - t
    if r.returncode != 0:
        die(f"bare qemu boot failed ({r.returncode}): {r.stderr.decode()[-500:]}")
    return dt


def busybox_rootfs(d):
    """d/rootfs: static busybox with sh, true and sleep."""
    rootfs = os.path.join(d, "rootfs")
    for sub in ["bin", "proc", "dev", "sys", "tmp", "etc"]:
        os.makedirs(os.path.join(rootfs, sub), exist_ok=True)
    shutil.copy(BUSYBOX, os.path.join(rootfs, "bin/busybox"))
    for tool in ["sh", "true", "sleep"]:
        os.symlink("busybox", os.path.join(rootfs, "bin", tool))
    return rootfs


def make_bundle(d, runtime, args):
    busybox_rootfs(d)
    subprocess.run([runtime, "spec", "--bundle", d], check=True)
    cfg_path = os.path.join(d, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = args
    cfg.setdefault("annotations", {})["io.moat.isolation"] = "vm"
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)


def make_image(d, moat, root):
    """Import a one-layer busybox image (docker-archive) into the moat store at `root`."""
    rootfs = busybox_rootfs(d)
    img = os.path.join(d, "img")
    os.makedirs(img)
    subprocess.run(["tar", "--numeric-owner", "--owner=0", "--group=0", "-C", rootfs, "-cf",
                    os.path.join(img, "layer.tar"), "."], check=True)
    import hashlib
    with open(os.path.join(img, "layer.tar"), "rb") as f:
        diff = hashlib.sha256(f.read()).hexdigest()
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
                      "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff}"]}}).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    with open(os.path.join(img, cfg_name), "wb") as f:
        f.write(cfg)
    with open(os.path.join(img, "manifest.json"), "w") as f:
        json.dump([{"Config": cfg_name, "RepoTags": ["bench.local/bb:1"],
                    "Layers": ["layer.tar"]}], f)
    tarball = os.path.join(d, "bb.tar")
    subprocess.run(["tar", "-C", img, "-cf", tarball, "."], check=True)
    subprocess.run([moat, "--root", root, "image", "import", tarball], check=True,
                   stdout=subprocess.DEVNULL)
    return "bench.local/bb:1"


def pss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--runtime", default=os.path.join(TARGET, "release/moat-runtime"))
    ap.add_argument("--moat", default=os.path.join(TARGET, "release/moat"))
    ap.add_argument("--out", default=os.path.join(HERE, "VM-RESULTS.md"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        die("must run as root")
    agent = os.environ.get("MOAT_AGENT_BIN",
                           os.path.join(os.path.dirname(a.runtime), "moat-agent"))
    for p in [a.runtime, a.moat, agent]:
        if not os.path.exists(p):
            die(f"{p} is missing (cargo build --release -p moat-runtime -p moat-cli -p moat-agent)")
    env = dict(os.environ, MOAT_AGENT_BIN=agent)
    release, vmlinuz = kernel()
    acc = accel()
    work = tempfile.mkdtemp(prefix="moat-vmbench-")
    root = os.path.join(work, "root")
    try:
        bundle_true = os.path.join(work, "b-true")
        bundle_idle = os.path.join(work, "b-idle")
        os.makedirs(bundle_true)
        os.makedirs(bundle_idle)
        make_bundle(bundle_true, a.runtime, ["/bin/true"])
        make_bundle(bundle_idle, a.runtime, ["/bin/sleep", "600"])
        bundle_big = os.path.join(work, "b-big")
        os.makedirs(bundle_big)
        make_bundle(bundle_big, a.runtime, ["/bin/true"])
        big = os.path.join(bundle_big, "rootfs", "data")
        os.makedirs(big)
        chunk = os.urandom(1 << 20)
        for i in range(220):
            with open(os.path.join(big, f"f{i:03}"), "wb") as f:
                f.write(chunk[i:] + chunk[:i])
        big_mb = sum(os.path.getsize(os.path.join(big, n)) for n in os.listdir(big)) >> 20
        initrd = os.path.join(work, "floor.cpio")
        floor_initramfs(initrd)
        mem_mib = 256  # moat's default guest RAM for a spec without limits (160 + 96 overhead)
        # warm-up: the initramfs cache and the accelerator probe
        subprocess.run([a.runtime, "--root", root, "run", "--bundle", bundle_true, "warm"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        store = os.path.join(work, "store")
        image = make_image(os.path.join(work, "image"), a.moat, store)
        moat_run = [a.moat, "--root", store, "run", "--rm", "--isolation", "vm", image, "true"]
        subprocess.run(moat_run, env=env, check=True, stdout=subprocess.DEVNULL)
        runs, floors, moat_runs, big_runs = [], [], [], []
        for i in range(a.runs):
            t = time.monotonic()
            r = subprocess.run(moat_run, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
            moat_runs.append(time.monotonic() - t)
            if r.returncode != 0:
                die(f"moat run --isolation vm failed: {r.stderr.decode()}")
            t = time.monotonic()
            r = subprocess.run([a.runtime, "--root", root, "run", "--bundle", bundle_true,
                                f"b{i}"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
            runs.append(time.monotonic() - t)
            if r.returncode != 0:
                die(f"moat-runtime run failed: {r.stderr.decode()}")
            floors.append(bare_boot(vmlinuz, initrd, acc, mem_mib))
            t = time.monotonic()
            r = subprocess.run([a.runtime, "--root", root, "run", "--bundle", bundle_big,
                                f"big{i}"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
            big_runs.append(time.monotonic() - t)
            if r.returncode != 0:
                die(f"moat-runtime run (big image) failed: {r.stderr.decode()}")
        # one idle sandbox
        subprocess.run([a.runtime, "--root", root, "create", "--bundle", bundle_idle, "idle"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run([a.runtime, "--root", root, "start", "idle"], env=env, check=True)
        state_kib = int(subprocess.run(["du", "-sk", os.path.join(root, "idle")], check=True,
                                       capture_output=True, text=True).stdout.split()[0])
        time.sleep(2)
        st = json.loads(subprocess.run([a.runtime, "--root", root, "state", "idle"],
                                       check=True, capture_output=True).stdout)
        qpid = st["pid"]
        qemu_pss = pss_kib(qpid)
        # virtiofsd serves the rootfs: find it by the VM's run directory in its command line
        vfs_pss = 0
        for e in os.listdir("/proc"):
            if e.isdigit():
                try:
                    with open(f"/proc/{e}/cmdline", "rb") as f:
                        cl = f.read().decode(errors="replace")
                except OSError:
                    continue
                if "virtiofsd" in cl and root in cl:
                    vfs_pss += pss_kib(int(e))
        with open(f"/proc/{qpid}/status") as f:
            qemu_rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
        with open(f"/proc/{qpid}/cmdline") as f:
            m = re.search(r"-m\0(\d+)\0", f.read())
        guest_mib = int(m.group(1)) if m else mem_mib
        subprocess.run([a.runtime, "--root", root, "delete", "--force", "idle"], check=True)
        # the floor's idle memory: a bare boot whose init sleeps, measured at the same moment
        # after boot as the sandbox (its boot time + 2 s)
        idle_initrd = os.path.join(work, "idle.cpio")
        floor_initramfs(idle_initrd, sleep=30)
        p = subprocess.Popen(bare_cmd(vmlinuz, idle_initrd, acc, mem_mib),
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(statistics.median(floors) + 2)
        floor_pss = pss_kib(p.pid)
        p.kill()
        p.wait()
    finally:
        if os.path.isdir(root):
            for cid in os.listdir(root):
                subprocess.run([a.runtime, "--root", root, "delete", "--force", cid],
                               stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)

    def ms(xs):
        return f"{statistics.median(xs) * 1000:.0f}"

    host = platform.node()
    ncpu = os.cpu_count()
    lines = [
        "# VM isolation benchmark",
        "",
        f"`bench/vm.py`, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"host kernel {platform.release()}, {ncpu} CPUs, guest kernel {release}, "
        f"accelerator **{acc}**, {a.runs} runs each (interleaved), medians.",
        "",
        "| what | median (ms) | all runs (ms) |",
        "|---|---|---|",
        f"| `moat run --rm --isolation vm IMAGE true` | {ms(moat_runs)} | "
        + ", ".join(f"{x * 1000:.0f}" for x in moat_runs) + " |",
        f"| `moat-runtime run` of a VM container running `true` | {ms(runs)} | "
        + ", ".join(f"{x * 1000:.0f}" for x in runs) + " |",
        f"| `moat-runtime run` of a VM container with a {big_mb} MB bigger rootfs (`true`) | "
        f"{ms(big_runs)} | " + ", ".join(f"{x * 1000:.0f}" for x in big_runs) + " |",
        f"| floor: bare QEMU boot, same kernel, initramfs that powers off at once | {ms(floors)} | "
        + ", ".join(f"{x * 1000:.0f}" for x in floors) + " |",
        "",
        f"`moat run` / floor: {statistics.median(moat_runs) / statistics.median(floors):.2f}x "
        "(target: at most 1.25x); "
        f"`moat-runtime run` / floor: {statistics.median(runs) / statistics.median(floors):.2f}x. "
        f"Overhead of `moat-runtime run` over the floor: {(statistics.median(runs) - statistics.median(floors)) * 1000:.0f} ms "
        "(the agent's boot work: modules, tmpfs root, the virtiofs share; container "
        "create/start in the guest; delete).",
        "",
        f"Image size: the {big_mb} MB bigger rootfs starts in "
        f"{statistics.median(big_runs) / statistics.median(runs):.2f}x the busybox one's time "
        "(target: within 10%): the rootfs is shared over virtiofs, not copied. Disk used by a "
        f"created VM container in its state directory: {state_kib} KiB.",
        "",
        "| idle VM sandbox (`sleep 600`, detached) | KiB |",
        "|---|---|",
        f"| guest RAM (-m) | {guest_mib * 1024} |",
        f"| QEMU PSS (smaps_rollup) | {qemu_pss} |",
        f"| QEMU RSS | {qemu_rss} |",
        f"| virtiofsd PSS (the shared rootfs) | {vfs_pss} |",
        f"| floor: PSS of a bare QEMU boot (same kernel, -m, accel) whose init sleeps | {floor_pss} |",
        "| moat processes on the host | 0 (none: QEMU and virtiofsd are detached, the agent runs in the guest) |",
        "",
        "Under TCG most of the guest RAM is resident even in the bare boot (the guest kernel "
        "touches it at boot, plus TCG's translation cache), so the sandbox's cost over the "
        "floor is the difference of the two PSS lines; a smaller -m (the spec's memory limit) "
        "is the lever.",
        "",
        f"Host: {host}. Re-run: `sudo python3 bench/vm.py` (see the docstring).",
        "",
    ]
    with open(a.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
