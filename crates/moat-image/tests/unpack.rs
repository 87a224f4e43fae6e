//! The layer unpacker on hand-made tar streams, without a registry: normal entries, overlay
//! whiteouts, compression, limits, and a corpus of hostile layers that must neither succeed in
//! escaping nor write anything outside the unpack root.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{gzip, is_root, sha, zstd, Tar};
use moat_image::error::ImageError;
use moat_image::unpack::{unpack_layer, Limits, UnpackOptions};

/// A sandbox: `dest/` is the unpack root, `outside/` a sentinel that must stay empty.
struct Sandbox {
    _t: tempfile::TempDir,
    base: PathBuf,
}

impl Sandbox {
    fn new() -> Self {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().to_owned();
        std::fs::create_dir(base.join("dest")).unwrap();
        std::fs::create_dir(base.join("outside")).unwrap();
        std::fs::write(base.join("outside/f"), b"original").unwrap();
        Sandbox { _t: t, base }
    }
    fn dest(&self) -> PathBuf {
        self.base.join("dest")
    }
    fn outside(&self) -> PathBuf {
        self.base.join("outside")
    }
    fn unpack(&self, tar: &[u8]) -> Result<moat_image::unpack::UnpackStats, ImageError> {
        unpack_layer(tar, &self.dest(), "sha256:test", &UnpackOptions::default())
    }
    /// Nothing outside `dest/` changed.
    fn assert_untouched(&self) {
        let mut top: Vec<_> = std::fs::read_dir(&self.base)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        top.sort();
        assert_eq!(
            top,
            ["dest", "outside"],
            "something was created beside the unpack root"
        );
        assert_eq!(
            common::tree(&self.outside()),
            ["f"],
            "the sentinel directory changed"
        );
        assert_eq!(
            std::fs::read(self.outside().join("f")).unwrap(),
            b"original"
        );
        assert_eq!(
            std::fs::metadata(self.outside().join("f")).unwrap().nlink(),
            1,
            "hard link to outside"
        );
    }
}

fn unsafe_entry(r: Result<moat_image::unpack::UnpackStats, ImageError>) -> String {
    match r {
        Err(e @ ImageError::UnsafeEntry { .. }) => e.to_string(),
        other => panic!("expected UnsafeEntry, got {other:?}"),
    }
}

#[test]
fn regular_entries_keep_modes_links_times_and_xattrs() {
    let s = Sandbox::new();
    let mut t = Tar::new();
    t.dir("etc/")
        .file_mode("etc/shadow", b"secret", 0o640)
        .file_mode("bin/tool", b"#!", 0o4755);
    t.symlink("bin/sh", "/bin/busybox")
        .hardlink("bin/tool2", "bin/tool");
    t.pax(&[
        ("SCHILY.xattr.user.note", b"hi"),
        ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
        ("uid", b"4242"),
    ]);
    t.file("etc/owned", b"x");
    t.raw(tar::EntryType::Fifo, b"run/fifo", b"", b"", 0o600);
    t.dir("ro/")
        .file("ro/inner", b"x")
        .raw(tar::EntryType::Directory, b"ro/", b"", b"", 0o555);
    let tarball = t.finish();
    let st = s.unpack(&tarball).unwrap();
    assert_eq!(st.diff_id.as_str(), sha(&tarball));
    let d = s.dest();
    assert_eq!(std::fs::read(d.join("etc/shadow")).unwrap(), b"secret");
    assert_eq!(
        std::fs::metadata(d.join("etc/shadow"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o640
    );
    assert_eq!(
        std::fs::metadata(d.join("bin/tool"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o4755
    );
    assert_eq!(
        std::fs::metadata(d.join("etc/shadow")).unwrap().mtime(),
        1_600_000_000
    );
    assert_eq!(
        std::fs::read_link(d.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(
        std::fs::metadata(d.join("bin/tool")).unwrap().ino(),
        std::fs::metadata(d.join("bin/tool2")).unwrap().ino()
    );
    assert!(std::fs::symlink_metadata(d.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        std::fs::metadata(d.join("ro"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o555
    );
    let note =
        rustix::fs::getxattr(d.join("etc/owned").as_path(), "user.note", &mut [0u8; 16]).unwrap();
    assert_eq!(note, 2);
    if is_root() {
        assert_eq!(std::fs::metadata(d.join("etc/owned")).unwrap().uid(), 4242);
        // A layer cannot forge overlay metadata.
        assert!(rustix::fs::getxattr(
            d.join("etc/owned").as_path(),
            "trusted.overlay.opaque",
            &mut [0u8; 4]
        )
        .is_err());
    }
    s.assert_untouched();
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let s = Sandbox::new();
    let mut t = Tar::new();
    t.dir("d/")
        .file("d/.wh..wh..opq", b"")
        .file("d/new", b"n")
        .file(".wh.gone", b"")
        .file("a/.wh..wh.plnk", b"");
    s.unpack(&t.finish()).unwrap();
    let m = std::fs::symlink_metadata(s.dest().join("gone")).unwrap();
    assert!(m.file_type().is_char_device() && m.rdev() == 0);
    let mut v = [0u8; 4];
    let n = rustix::fs::getxattr(
        s.dest().join("d").as_path(),
        "trusted.overlay.opaque",
        &mut v,
    )
    .unwrap();
    assert_eq!(&v[..n], b"y");
    assert!(s.dest().join("d/new").exists());
    assert!(!s.dest().join("a/.wh..wh.plnk").exists());
    s.assert_untouched();
}

#[test]
fn compressions_give_the_same_tree_and_diff_id() {
    let mut t = Tar::new();
    t.dir("x/").file("x/y", b"hello").symlink("x/z", "y");
    let tarball = t.finish();
    for (name, blob) in [
        ("tar", tarball.clone()),
        ("gzip", gzip(&tarball)),
        ("zstd", zstd(&tarball)),
    ] {
        let s = Sandbox::new();
        let st = s.unpack(&blob).unwrap();
        assert_eq!(st.diff_id.as_str(), sha(&tarball), "{name}");
        assert_eq!(common::tree(&s.dest()), ["x", "x/y", "x/z"], "{name}");
    }
}

#[test]
fn path_traversal_is_refused() {
    let s = Sandbox::new();
    let e = unsafe_entry(
        s.unpack(
            &Tar::new()
                .file("../../x", b"evil")
                .file("../outside/f", b"evil")
                .finish(),
        ),
    );
    assert!(e.contains("../../x") && e.contains("sha256:test"), "{e}");
    s.assert_untouched();
    let e = unsafe_entry(s.unpack(&Tar::new().file("a/../../outside/f", b"evil").finish()));
    assert!(e.contains("climbs out"), "{e}");
    s.assert_untouched();
}

#[test]
fn absolute_paths_land_inside_the_root() {
    let s = Sandbox::new();
    let abs = format!("{}/f", s.outside().display());
    s.unpack(&Tar::new().file("/etc/x", b"a").file(&abs, b"evil").finish())
        .unwrap();
    assert_eq!(std::fs::read(s.dest().join("etc/x")).unwrap(), b"a");
    assert_eq!(
        std::fs::read(s.dest().join(abs.trim_start_matches('/'))).unwrap(),
        b"evil"
    );
    s.assert_untouched();
}

#[test]
fn no_write_through_symlinks() {
    let s = Sandbox::new();
    let out = s.outside().display().to_string();
    for (link, through) in [
        (out.as_str(), "a/file"),
        ("../outside", "a/file"),
        ("/", "a/x"),
        (".", "a/b"),
    ] {
        let e = unsafe_entry(
            s.unpack(
                &Tar::new()
                    .symlink("a", link)
                    .file(through, b"evil")
                    .finish(),
            ),
        );
        assert!(e.contains("symlink"), "{e}");
        s.assert_untouched();
        std::fs::remove_file(s.dest().join("a")).unwrap();
    }
    // A directory swapped for a symlink later in the same layer.
    let e = unsafe_entry(
        s.unpack(
            &Tar::new()
                .dir("d/")
                .file("d/ok", b"")
                .symlink("d", &out)
                .file("d/f", b"evil")
                .finish(),
        ),
    );
    assert!(e.contains("d/f"), "{e}");
    s.assert_untouched();
    // Replacing a symlink with a file replaces the link, not its target.
    let s = Sandbox::new();
    s.unpack(
        &Tar::new()
            .symlink("f", &format!("{out}/f"))
            .file("f", b"new")
            .finish(),
    )
    .unwrap();
    assert_eq!(std::fs::read(s.dest().join("f")).unwrap(), b"new");
    s.assert_untouched();
}

#[test]
fn hard_links_stay_inside() {
    let s = Sandbox::new();
    let out = s.outside().display().to_string();
    let e = unsafe_entry(s.unpack(&Tar::new().hardlink("h", "../outside/f").finish()));
    assert!(e.contains("hard link"), "{e}");
    s.assert_untouched();
    // Absolute target: resolved inside the root, where it does not exist.
    assert!(s
        .unpack(&Tar::new().hardlink("h", &format!("{out}/f")).finish())
        .is_err());
    s.assert_untouched();
    // Through a symlinked parent.
    let e = unsafe_entry(s.unpack(&Tar::new().symlink("s", &out).hardlink("h", "s/f").finish()));
    assert!(e.contains("symlink"), "{e}");
    s.assert_untouched();
}

#[test]
fn whiteouts_stay_inside() {
    let s = Sandbox::new();
    unsafe_entry(s.unpack(&Tar::new().file("../.wh.outside", b"").finish()));
    unsafe_entry(s.unpack(&Tar::new().file("../outside/.wh.f", b"").finish()));
    unsafe_entry(s.unpack(&Tar::new().file(".wh..", b"").finish()));
    let out = s.outside().display().to_string();
    unsafe_entry(s.unpack(&Tar::new().symlink("l", &out).file("l/.wh.f", b"").finish()));
    unsafe_entry(
        s.unpack(
            &Tar::new()
                .symlink("m", &out)
                .file("m/.wh..wh..opq", b"")
                .finish(),
        ),
    );
    s.assert_untouched();
}

#[test]
fn devices_only_as_root() {
    let s = Sandbox::new();
    let mut t = Tar::new();
    t.raw(tar::EntryType::Char, b"dev/null", b"", b"", 0o666);
    t.raw(tar::EntryType::Block, b"dev/sda", b"", b"", 0o660);
    let opts = UnpackOptions {
        privileged: false,
        ..Default::default()
    };
    let st = unpack_layer(&t.finish()[..], &s.dest(), "sha256:test", &opts).unwrap();
    assert_eq!(st.skipped, 2);
    assert!(!s.dest().join("dev/null").exists() && !s.dest().join("dev/sda").exists());
    s.assert_untouched();
}

#[test]
fn decompression_bombs_are_cut_off() {
    let s = Sandbox::new();
    let mut t = Tar::new();
    t.zeros("bomb", 64 << 20);
    let bomb = gzip(&t.finish());
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let opts = UnpackOptions {
        limits: Limits {
            max_bytes: 8 << 20,
            max_entries: 100,
        },
        ..Default::default()
    };
    let e = unpack_layer(&bomb[..], &s.dest(), "sha256:bomb", &opts).unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::LimitExceeded {
                what: "uncompressed size",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("sha256:bomb"));
    let written = std::fs::metadata(s.dest().join("bomb"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(written <= 8 << 20, "{written}");

    let s = Sandbox::new();
    let mut t = Tar::new();
    for i in 0..50 {
        t.file(&format!("f{i}"), b"");
    }
    let opts = UnpackOptions {
        limits: Limits {
            max_bytes: 1 << 30,
            max_entries: 10,
        },
        ..Default::default()
    };
    let e = unpack_layer(&t.finish()[..], &s.dest(), "sha256:many", &opts).unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::LimitExceeded {
                what: "entry count",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn later_entries_replace_earlier_ones() {
    let s = Sandbox::new();
    let mut t = Tar::new();
    t.file("a", b"1")
        .file("a", b"2")
        .dir("b/")
        .file("b/x", b"")
        .file("b", b"file now")
        .symlink("c", "a")
        .dir("c/");
    s.unpack(&t.finish()).unwrap();
    assert_eq!(std::fs::read(s.dest().join("a")).unwrap(), b"2");
    assert_eq!(std::fs::read(s.dest().join("b")).unwrap(), b"file now");
    assert!(std::fs::symlink_metadata(s.dest().join("c"))
        .unwrap()
        .is_dir());
    s.assert_untouched();
}
