#!/usr/bin/env python3
"""Image pull benchmark: moat-image vs `podman pull` vs `skopeo copy` + `umoci unpack`
(Python 3 stdlib only; run as root).

It builds one image of about 50 MB compressed (three gzip layers: busybox + /usr/lib/python3.11,
32 MiB of seeded random bytes, /usr/share/perl) as an OCI layout, starts Debian's
`docker-registry` on 127.0.0.1:<free port> with storage in a temporary directory, pushes the image
with skopeo, and then, for every iteration and every tool in turn (interleaved), times a cold
pull + unpack into a fresh store:

  moat    crates/moat-image/examples/pull (release build): download, verify, unpack into
          overlay snapshots
  podman  podman pull into a fresh --root (overlay driver): download, verify, apply layers
  skopeo  skopeo copy docker:// -> oci: layout, then umoci unpack into a bundle

Each fresh store lives on the same filesystem (a temporary directory under /var/tmp). Reports
median / p10 / p90 wall time in seconds and writes bench/RESULTS.md (--out).
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MOAT_PULL = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")), "release", "examples", "pull")


def die(msg):
    print(f"pull.py: {msg}", file=sys.stderr)
    sys.exit(1)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def blob(layout, data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", d), "wb") as f:
        f.write(data)
    return "sha256:" + d, len(data)


def layer_from(add):
    """A gzip layer from a function that fills a TarFile; returns (uncompressed digest, gz bytes)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        add(t)
    raw = raw.getvalue()
    return "sha256:" + hashlib.sha256(raw).hexdigest(), gzip.compress(raw, compresslevel=6, mtime=0)


def add_tree(t, src, arc):
    if os.path.isdir(src):
        t.add(src, arcname=arc, recursive=True, filter=lambda ti: None if ti.name.endswith(".pyc") else ti)


def build_layout(layout):
    os.makedirs(os.path.join(layout, "blobs", "sha256"))

    def l1(t):
        t.add("/bin/busybox", arcname="bin/busybox")
        add_tree(t, "/usr/lib/python3.11", "usr/lib/python3.11")

    def l2(t):
        rnd = random.Random(42)
        for i in range(8):
            data = rnd.randbytes(4 << 20)
            ti = tarfile.TarInfo(f"data/random{i}.bin")
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))

    def l3(t):
        add_tree(t, "/usr/share/perl", "usr/share/perl")

    diff_ids, layers = [], []
    for fill in (l1, l2, l3):
        diff_id, gz = layer_from(fill)
        d, n = blob(layout, gz)
        diff_ids.append(diff_id)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n})
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/busybox", "sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    cd, cn = blob(layout, config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
                           "layers": layers}).encode()
    md, mn = blob(layout, manifest)
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                   "digest": md, "size": mn, "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    return sum(l["size"] for l in layers)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_registry(work):
    port = free_port()
    cfg = os.path.join(work, "registry.yml")
    with open(cfg, "w") as f:
        f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {work}/registry\n"
                f"http:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen(["docker-registry", "serve", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    die("docker-registry did not start")


def unmount_under(path):
    with open("/proc/self/mounts") as f:
        points = [l.split()[1] for l in f if l.split()[1].startswith(path)]
    for p in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", p], stderr=subprocess.DEVNULL)


def tools(ref, scratch):
    def moat(i):
        run([MOAT_PULL, "--quiet", "--root", f"{scratch}/moat{i}", ref])

    def podman(i):
        run(["podman", "--root", f"{scratch}/podman{i}", "--runroot", f"{scratch}/podrun{i}",
             "--storage-driver", "overlay", "pull", "-q", "--tls-verify=false", ref])

    def skopeo_umoci(i):
        run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"oci:{scratch}/sk{i}:v1"])
        run(["umoci", "unpack", "--image", f"{scratch}/sk{i}:v1", f"{scratch}/bundle{i}"])

    return [("moat-image", moat), ("podman pull", podman), ("skopeo copy + umoci unpack", skopeo_umoci)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--iterations", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build --release")
    args = ap.parse_args()
    if os.geteuid() != 0:
        die("must run as root (overlay snapshots, podman and umoci keep ownership)")
    for t in ("docker-registry", "skopeo", "umoci", "podman"):
        if not shutil.which(t):
            die(f"{t} not found (apt-get install docker-registry skopeo umoci podman)")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "moat-image", "--example", "pull"], cwd=REPO, check=True)
    if not os.path.exists(MOAT_PULL):
        die(f"{MOAT_PULL} not built")

    load = os.getloadavg()[0]
    work = tempfile.mkdtemp(prefix="moat-pullbench-", dir="/var/tmp")
    reg = None
    try:
        layout = os.path.join(work, "layout")
        size = build_layout(layout)
        reg, port = start_registry(work)
        ref = f"127.0.0.1:{port}/bench/img:v1"
        run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{ref}"])
        times = {}
        for i in range(args.iterations):
            for name, fn in tools(ref, work):
                scratch_before = set(os.listdir(work))
                t0 = time.monotonic()
                try:
                    fn(i)
                except subprocess.CalledProcessError as e:
                    die(f"{name}: {e.stderr.decode(errors='replace').strip()}")
                times.setdefault(name, []).append(time.monotonic() - t0)
                for d in set(os.listdir(work)) - scratch_before:
                    unmount_under(os.path.join(work, d))
                    shutil.rmtree(os.path.join(work, d), ignore_errors=True)
            print(f"iteration {i + 1}/{args.iterations} done", file=sys.stderr)
    finally:
        if reg:
            reg.kill()
            reg.wait()
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)

    def q(xs, p):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]

    base = statistics.median(times["moat-image"])
    rows = []
    for name, xs in times.items():
        m = statistics.median(xs)
        rows.append(f"| {name} | {m:.2f} | {q(xs, 0.1):.2f} | {q(xs, 0.9):.2f} | {m / base:.2f} |")
    report = "\n".join([
        "# Pull benchmark (bench/pull.py)",
        "",
        f"{datetime.date.today()}, {platform.node()}, {os.cpu_count()} CPUs, kernel {platform.release()}. "
        f"Image: 3 gzip layers, {size / 1e6:.1f} MB compressed, from Debian's docker-registry on 127.0.0.1 "
        f"(plain HTTP); cold store each time; {args.iterations} iterations, tools interleaved; "
        f"load average at start {load:.2f} (the machine is shared: compare within one run).",
        "Each time is download + digest verification + unpack to a usable root filesystem.",
        "",
        "| tool | median s | p10 s | p90 s | / moat |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ])
    print(report)
    # Append a dated section: bench/RESULTS.md keeps every run, runtime and pull alike.
    with open(args.out, "a") as f:
        f.write("\n## Image pull + unpack (bench/pull.py)\n\n" + report)


if __name__ == "__main__":
    main()
