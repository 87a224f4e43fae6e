//! Pulls from a real registry (Debian's `docker-registry` on 127.0.0.1, images pushed with
//! skopeo): layered merge with whiteouts (snapshots and a real overlay mount), gzip and zstd
//! layers, hostile layers, corrupted blobs, concurrent pulls, platform selection, import/export
//! and garbage collection.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::registry::{push_with, Registry};
use common::{is_root, write_layout, write_layout_platform, Comp, Tar};
use moat_image::error::ImageError;
use moat_image::{archive, pull_blocking, NoProgress, PullOptions, Store};

fn opts() -> PullOptions {
    PullOptions {
        auth_files: vec![],
        ..Default::default()
    }
}

fn busybox_layer() -> Vec<u8> {
    let bb = std::fs::read("/bin/busybox").expect("busybox-static installed");
    let mut t = Tar::new();
    t.dir("bin/")
        .file_mode("bin/busybox", &bb, 0o755)
        .symlink("bin/sh", "busybox")
        .symlink("bin/cat", "busybox");
    t.dir("etc/").file("etc/a", b"a").file("etc/b", b"b");
    t.dir("d/")
        .file("d/old1", b"1")
        .file("d/old2", b"2")
        .dir("keep/")
        .file("keep/x", b"x");
    t.finish()
}

/// Three layers: plain tar (busybox), gzip (whiteout + opaque dir), zstd (additions).
fn layered_image(dir: &Path) -> String {
    let mut l2 = Tar::new();
    l2.dir("etc/")
        .file("etc/.wh.b", b"")
        .dir("d/")
        .file("d/.wh..wh..opq", b"")
        .file("d/new", b"n")
        .file("top", b"t");
    let mut l3 = Tar::new();
    l3.dir("etc/")
        .file("etc/c", b"c")
        .dir("keep/")
        .file("keep/y", b"y");
    write_layout(
        dir,
        "v1",
        &[
            (busybox_layer(), Comp::None),
            (l2.finish(), Comp::Gzip),
            (l3.finish(), Comp::Zstd),
        ],
        &["/bin/sh", "-c", "cat /etc/a /etc/c"],
    )
}

const MERGED: &[&str] = &[
    "bin",
    "bin/busybox",
    "bin/cat",
    "bin/sh",
    "d",
    "d/new",
    "etc",
    "etc/a",
    "etc/c",
    "keep",
    "keep/x",
    "keep/y",
    "top",
];

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn layered_image_merges_with_whiteouts_and_opaque_dirs() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let Some(reg) = Registry::start() else { return };
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let manifest = layered_image(&layout);
    reg.push(&layout, "v1", "test/layered");
    let store = Store::open(t.path().join("store")).unwrap();
    let name = format!("{}/test/layered:v1", reg.addr());
    let p = pull_blocking(&store, &name, &opts(), &NoProgress).unwrap();
    // skopeo compresses the uncompressed layer on push, so the manifest differs; the layers'
    // contents (diff IDs, hence chain IDs) do not.
    let _ = manifest;
    let ours = Store::open(t.path().join("ours")).unwrap();
    archive::import_oci_layout(&ours, &layout, Some("x:v1")).unwrap();
    assert_eq!(p.chain_ids, ours.image("x:v1").unwrap().chain_ids());
    let magic: Vec<_> = p
        .layers
        .iter()
        .map(|l| {
            let b = std::fs::read(store.blob_path(l)).unwrap();
            moat_image::manifest::Compression::detect(&b[..4])
        })
        .collect();
    use moat_image::manifest::Compression;
    assert_eq!(
        magic,
        [Compression::Gzip, Compression::Gzip, Compression::Zstd]
    );
    assert_eq!(store.list().unwrap().len(), 1);

    // The snapshots, one per layer, in overlay's format.
    let snap = |i: usize| store.snapshot_dir(&p.chain_ids[i]).join("fs");
    assert!(snap(0).join("bin/busybox").is_file() && snap(0).join("etc/b").is_file());
    let wh = std::fs::symlink_metadata(snap(1).join("etc/b")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    let mut v = [0u8; 2];
    let n = rustix::fs::getxattr(
        snap(1).join("d").as_path(),
        "trusted.overlay.opaque",
        &mut v,
    )
    .unwrap();
    assert_eq!(&v[..n], b"y");
    assert_eq!(common::tree(&snap(2)), ["etc", "etc/c", "keep", "keep/y"]);

    // The merged tree through a real overlay mount, and a process that runs in it.
    let rootfs = moat_image::prepare_rootfs(&store, &name, "c1", &Default::default()).unwrap();
    let merged = common::tree(&rootfs.path);
    rootfs.unmount().ok();
    let rootfs = moat_image::snapshot::rootfs_of(&store, "c1").unwrap();
    assert_eq!(merged, MERGED);
    let rootfs2 = moat_image::prepare_rootfs(&store, &name, "c2", &Default::default()).unwrap();
    let out = std::process::Command::new("chroot")
        .arg(&rootfs2.path)
        .args(["/bin/sh", "-c", "cat /etc/a /etc/c; echo w > /w"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ac");
    assert!(
        rootfs2.dir.join("upper/w").exists(),
        "writes go to the container's upperdir"
    );
    assert!(!snap(0).join("w").exists() && !snap(2).join("w").exists());

    // The spec from the image config.
    let img = store.image(&name).unwrap();
    let spec = moat_image::spec::runtime_spec(
        &Default::default(),
        &img.config,
        &Default::default(),
        Some(&rootfs2.path),
    )
    .unwrap();
    let proc_ = spec.process().as_ref().unwrap();
    assert_eq!(proc_.args().as_ref().unwrap()[0], "/bin/sh");
    assert!(proc_
        .env()
        .as_ref()
        .unwrap()
        .contains(&"HELLO=world".to_string()));
    rootfs2.remove().unwrap();
    rootfs.remove().unwrap();

    // Untag and collect: everything goes.
    store.untag(&name).unwrap();
    let gc = store.gc().unwrap();
    assert_eq!((gc.blobs_removed, gc.snapshots_removed), (5, 3));
    assert_eq!(count(&t.path().join("store/blobs/sha256")), 0);
}

/// One hostile layer on top of a harmless one, pushed and pulled; returns the pull's result.
fn pull_hostile(
    reg: &Registry,
    t: &Path,
    case: &str,
    layer: Vec<u8>,
    comp: Comp,
) -> (Result<moat_image::Pulled, ImageError>, Store) {
    let layout = t.join(format!("layout-{case}"));
    let mut base = Tar::new();
    base.dir("etc/").file("etc/ok", b"ok");
    write_layout(
        &layout,
        "v1",
        &[(base.finish(), Comp::Gzip), (layer, comp)],
        &["/bin/true"],
    );
    reg.push(&layout, "v1", &format!("hostile/{case}"));
    let store = Store::open(t.join(format!("store-{case}"))).unwrap();
    let mut o = opts();
    if let Some(u) = o.unpack.as_mut() {
        u.limits.max_bytes = 32 << 20;
    }
    (
        pull_blocking(
            &store,
            &format!("{}/hostile/{case}:v1", reg.addr()),
            &o,
            &NoProgress,
        ),
        store,
    )
}

#[test]
fn hostile_layers_are_refused_and_write_nothing_outside() {
    let Some(reg) = Registry::start() else { return };
    let t = tempfile::tempdir().unwrap();
    let sentinel = t.path().join("sentinel");
    std::fs::create_dir(&sentinel).unwrap();
    std::fs::write(sentinel.join("f"), b"original").unwrap();
    let s = sentinel.display().to_string();
    let mut bomb = Tar::new();
    bomb.zeros("bomb", 128 << 20);
    let cases: Vec<(&str, Vec<u8>, Comp, bool)> = vec![
        (
            "traversal",
            Tar::new().file("../../x", b"evil").finish(),
            Comp::None,
            false,
        ),
        (
            "absolute",
            Tar::new()
                .file(&format!("{s}/abs"), b"evil")
                .file("/etc/x", b"x")
                .finish(),
            Comp::Gzip,
            true,
        ),
        (
            "symlink",
            Tar::new().symlink("a", &s).file("a/file", b"evil").finish(),
            Comp::Gzip,
            false,
        ),
        (
            "hardlink",
            Tar::new().hardlink("h", &format!("{s}/f")).finish(),
            Comp::Zstd,
            false,
        ),
        (
            "hardlink-dotdot",
            Tar::new().hardlink("h", "../../../sentinel/f").finish(),
            Comp::None,
            false,
        ),
        (
            "whiteout",
            Tar::new().file("../.wh.x", b"").finish(),
            Comp::Gzip,
            false,
        ),
        ("bomb", bomb.finish(), Comp::Gzip, false),
    ];
    for (case, layer, comp, neutralised) in cases {
        let (res, store) = pull_hostile(&reg, t.path(), case, layer, comp);
        match (&res, neutralised) {
            (Ok(_), true) => {}
            (Err(ImageError::UnsafeEntry { .. } | ImageError::LimitExceeded { .. }), false) => {
                // Refused: not tagged, no snapshot of the hostile layer, nothing left in tmp/.
                assert!(store.list().unwrap().is_empty(), "{case}: tagged");
                assert_eq!(
                    count(&store.root().join("snapshots")),
                    1,
                    "{case}: snapshots"
                );
                assert_eq!(count(&store.tmp_dir()), 0, "{case}: tmp not cleaned");
            }
            _ => panic!("{case}: unexpected result {res:?}"),
        }
        assert_eq!(common::tree(&sentinel), ["f"], "{case}: sentinel changed");
        assert_eq!(
            std::fs::read(sentinel.join("f")).unwrap(),
            b"original",
            "{case}"
        );
        assert_eq!(
            std::fs::metadata(sentinel.join("f")).unwrap().nlink(),
            1,
            "{case}: linked"
        );
        let mut top: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        top.retain(|n| !n.starts_with("layout-") && !n.starts_with("store-") && n != "sentinel");
        assert!(top.is_empty(), "{case}: created {top:?}");
        assert!(
            !Path::new("/x").exists() && !Path::new("/etc/x").exists(),
            "{case}"
        );
    }
}

#[test]
fn corrupted_blob_fails_verification_and_commits_nothing() {
    let Some(reg) = Registry::start() else { return };
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let mut l = Tar::new();
    l.file("data", &vec![7u8; 100_000]);
    write_layout(&layout, "v1", &[(l.finish(), Comp::Gzip)], &["/x"]);
    reg.push(&layout, "v1", "test/corrupt");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let md = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(&md[7..])).unwrap())
            .unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let file = reg.blob_file(&layer);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();

    let store = Store::open(t.path().join("store")).unwrap();
    let e = pull_blocking(
        &store,
        &format!("{}/test/corrupt:v1", reg.addr()),
        &opts(),
        &NoProgress,
    )
    .unwrap_err();
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e:?}");
    assert!(
        e.to_string().contains(&layer),
        "error does not name the digest: {e}"
    );
    assert!(!store.blob_path(&layer.parse().unwrap()).exists());
    assert_eq!(count(&store.tmp_dir()), 0);
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn concurrent_pulls_both_succeed_and_store_one_copy() {
    let Some(reg) = Registry::start() else { return };
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let mut l2 = Tar::new();
    l2.zeros("big", 8 << 20);
    write_layout(
        &layout,
        "v1",
        &[(busybox_layer(), Comp::Gzip), (l2.finish(), Comp::Zstd)],
        &["/bin/sh"],
    );
    reg.push(&layout, "v1", "test/concurrent");
    let store = Store::open(t.path().join("store")).unwrap();
    let name = format!("{}/test/concurrent:v1", reg.addr());
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| s.spawn(|| pull_blocking(&store, &name, &opts(), &NoProgress)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    assert_eq!(count(&store.root().join("blobs/sha256")), 4); // manifest, config, 2 layers
    assert_eq!(count(&store.root().join("snapshots")), 2);
    assert_eq!(count(&store.tmp_dir()), 0);
    assert_eq!(store.list().unwrap().len(), 1);
    // A second pull downloads nothing.
    let again = pull_blocking(&store, &name, &opts(), &NoProgress).unwrap();
    assert_eq!(again.downloaded, 0);
}

#[test]
fn index_selects_the_platform() {
    let Some(reg) = Registry::start() else { return };
    let t = tempfile::tempdir().unwrap();
    // Two single-image layouts pushed by digest, then an index over them.
    let mut pushed = Vec::new();
    for arch in ["arm64", "amd64"] {
        let dir = t.path().join(arch);
        let mut l = Tar::new();
        l.file("arch", arch.as_bytes());
        let d = write_layout_platform(&dir, "v1", &[(l.finish(), Comp::Gzip)], &["/x"], arch);
        push_with(
            &dir,
            "v1",
            &format!("docker://{}/test/multi:{arch}", reg.addr()),
            &[],
        );
        let size = std::fs::metadata(dir.join("blobs/sha256").join(&d[7..]))
            .unwrap()
            .len();
        pushed.push((arch, d, size, dir));
    }
    let ix = t.path().join("index");
    for (_, _, _, dir) in &pushed {
        for e in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
            let e = e.unwrap();
            std::fs::create_dir_all(ix.join("blobs/sha256")).unwrap();
            std::fs::copy(e.path(), ix.join("blobs/sha256").join(e.file_name())).unwrap();
        }
    }
    let inner = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": pushed.iter().map(|(a, d, s, _)| serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": d, "size": s, "platform": {"os": "linux", "architecture": a}})).collect::<Vec<_>>()});
    let inner = serde_json::to_vec(&inner).unwrap();
    let id = common::write_blob(&ix, &inner);
    let outer = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": id, "size": inner.len(), "annotations": {"org.opencontainers.image.ref.name": "multi"}}]});
    std::fs::write(ix.join("index.json"), serde_json::to_vec(&outer).unwrap()).unwrap();
    std::fs::write(ix.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    push_with(
        &ix,
        "multi",
        &format!("docker://{}/test/multi:multi", reg.addr()),
        &["--all"],
    );

    let store = Store::open(t.path().join("store")).unwrap();
    let name = format!("{}/test/multi:multi", reg.addr());
    let p = pull_blocking(&store, &name, &opts(), &NoProgress).unwrap();
    assert_eq!(
        p.manifest_digest.as_str(),
        pushed[1].1,
        "default platform is linux/amd64"
    );
    let arm = PullOptions {
        platform: "linux/arm64".parse().unwrap(),
        unpack: None,
        ..opts()
    };
    let p = pull_blocking(&store, &name, &arm, &NoProgress).unwrap();
    assert_eq!(p.manifest_digest.as_str(), pushed[0].1);
    let s390 = PullOptions {
        platform: "linux/s390x".parse().unwrap(),
        ..opts()
    };
    let e = pull_blocking(&store, &name, &s390, &NoProgress).unwrap_err();
    assert!(matches!(e, ImageError::NoPlatform { .. }), "{e}");
}

#[test]
fn import_and_export_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let manifest = layered_image(&layout);
    let store = Store::open(t.path().join("store")).unwrap();
    // OCI layout.
    let tagged =
        archive::import_oci_layout(&store, &layout, Some("example.com/a/layered:v1")).unwrap();
    assert_eq!(tagged[0].1.as_str(), manifest);
    assert_eq!(
        store.inspect("example.com/a/layered:v1").unwrap()["config"]["Env"][1],
        "HELLO=world"
    );
    // Export as oci-archive, import into a second store.
    let tarball = t.path().join("img.tar");
    archive::export_oci_archive(&store, "example.com/a/layered:v1", &tarball).unwrap();
    let store2 = Store::open(t.path().join("store2")).unwrap();
    let tagged = archive::import_oci_archive(&store2, &tarball, None).unwrap();
    assert!(
        tagged.is_empty(),
        "a bare tag in ref.name is not an image name: {tagged:?}"
    );
    let tagged = archive::import_oci_archive(&store2, &tarball, Some("b:v1")).unwrap();
    assert_eq!(tagged[0].1.as_str(), manifest);
    // docker-archive written by skopeo (which cannot put zstd layers in one).
    let layout = t.path().join("layout-docker");
    let mut l2 = Tar::new();
    l2.file("etc/.wh.a", b"").file("more", b"m");
    write_layout(
        &layout,
        "v1",
        &[(busybox_layer(), Comp::None), (l2.finish(), Comp::Gzip)],
        &["/bin/sh"],
    );
    let darchive = t.path().join("docker.tar");
    let out = std::process::Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            &format!("oci:{}:v1", layout.display()),
            &format!("docker-archive:{}:test/docker:v9", darchive.display()),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store3 = Store::open(t.path().join("store3")).unwrap();
    let tagged = archive::import_docker_archive(&store3, &darchive, None).unwrap();
    assert_eq!(tagged[0].0, "docker.io/test/docker:v9");
    let img = store3.image("test/docker:v9").unwrap();
    assert_eq!(img.manifest.layers.len(), 2);
    if is_root() {
        let chains =
            moat_image::snapshot::ensure_snapshots(&store3, &img, &Default::default(), &NoProgress)
                .unwrap();
        assert!(store3
            .snapshot_dir(&chains[0])
            .join("fs/bin/busybox")
            .is_file());
    }
    // moat's own docker-archive export: skopeo reads it, and moat imports it back.
    let exported = t.path().join("moat-docker.tar");
    archive::export_docker_archive(&store3, "test/docker:v9", &exported).unwrap();
    let out = std::process::Command::new("skopeo")
        .args(["inspect", &format!("docker-archive:{}", exported.display())])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo cannot read moat's docker-archive: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store4 = Store::open(t.path().join("store4")).unwrap();
    let tagged = archive::import_docker_archive(&store4, &exported, None).unwrap();
    assert_eq!(tagged[0].0, "docker.io/test/docker:v9");
    assert_eq!(
        store4
            .image("test/docker:v9")
            .unwrap()
            .manifest
            .layers
            .len(),
        2
    );
    let _: PathBuf = darchive;
}

/// A TCP proxy to 127.0.0.1:`upstream` that cuts the first connection once it has carried more
/// than `cut` bytes towards the client. Returns its port.
fn cutting_proxy(upstream: u16, cut: usize) -> u16 {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let done = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut client) = c else { return };
            let mut up = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
            let (mut c2, mut u2) = (client.try_clone().unwrap(), up.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut u2);
                let _ = u2.shutdown(Shutdown::Write);
            });
            let done = done.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 << 10];
                let mut sent = 0;
                while let Ok(n) = up.read(&mut buf) {
                    if n == 0 || client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n;
                    if sent > cut && !done.swap(true, Ordering::SeqCst) {
                        let _ = client.shutdown(Shutdown::Both);
                        let _ = up.shutdown(Shutdown::Both);
                        return;
                    }
                }
                let _ = client.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<String>>);

impl moat_image::Progress for Recorder {
    fn blob_progress(&self, d: &moat_image::Digest, done: u64, _size: u64) {
        self.0.lock().unwrap().push(format!("progress {d} {done}"));
    }
    fn retry(&self, d: &moat_image::Digest, attempt: u32, _e: &str) {
        self.0.lock().unwrap().push(format!("retry {d} {attempt}"));
    }
}

#[test]
fn interrupted_download_resumes_with_range() {
    let Some(reg) = Registry::start() else { return };
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let noise: Vec<u8> = (0..(3 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut l = Tar::new();
    l.file("noise", &noise);
    write_layout(&layout, "v1", &[(l.finish(), Comp::Gzip)], &["/x"]);
    reg.push(&layout, "v1", "test/resume");
    let cut = 1 << 20;
    let port = cutting_proxy(reg.port, cut);
    let store = Store::open(t.path().join("store")).unwrap();
    let rec = Recorder::default();
    let p = pull_blocking(
        &store,
        &format!("127.0.0.1:{port}/test/resume:v1"),
        &opts(),
        &rec,
    )
    .unwrap();
    assert!(p.downloaded > 3 << 20, "{}", p.downloaded);
    let events = rec.0.lock().unwrap().clone();
    let r = events
        .iter()
        .position(|e| e.starts_with("retry"))
        .expect("the proxy cut a download");
    // The first progress of the same blob after the retry (other blobs download concurrently).
    let digest = events[r].split_whitespace().nth(1).unwrap().to_owned();
    let next = events[r + 1..]
        .iter()
        .find(|e| e.starts_with(&format!("progress {digest} ")))
        .expect("no progress after the retry");
    let resumed_at: u64 = next.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        resumed_at > (cut as u64) / 2,
        "restarted from zero instead of resuming: {}",
        next
    );
    assert!(store.image(&p.name).is_ok());
}

#[test]
fn basic_auth_credentials_come_from_the_auth_file() {
    use base64::Engine as _;
    let Some(reg) = Registry::start_with_auth("moat", "s3cret") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let mut l = Tar::new();
    l.file("hello", b"world");
    write_layout(&layout, "v1", &[(l.finish(), Comp::Gzip)], &["/x"]);
    push_with(
        &layout,
        "v1",
        &format!("docker://{}/private/img:v1", reg.addr()),
        &["--dest-creds", "moat:s3cret"],
    );
    let name = format!("{}/private/img:v1", reg.addr());
    let store = Store::open(t.path().join("store")).unwrap();

    let e = pull_blocking(&store, &name, &opts(), &NoProgress).unwrap_err();
    assert!(
        matches!(e, ImageError::Registry { .. }),
        "anonymous pull: {e:?}"
    );

    let auth = t.path().join("auth.json");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    std::fs::write(
        &auth,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            reg.addr(),
            b64("moat:wrong")
        ),
    )
    .unwrap();
    let o = PullOptions {
        auth_files: vec![auth.clone()],
        ..opts()
    };
    assert!(
        pull_blocking(&store, &name, &o, &NoProgress).is_err(),
        "wrong password accepted"
    );

    std::fs::write(
        &auth,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            reg.addr(),
            b64("moat:s3cret")
        ),
    )
    .unwrap();
    let p = pull_blocking(&store, &name, &o, &NoProgress).unwrap();
    assert_eq!(store.list().unwrap()[0].digest, p.manifest_digest);
}
