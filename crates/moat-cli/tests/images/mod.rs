//! Images the CLI tests import: busybox with /etc/passwd as an OCI layout.
#![allow(dead_code)]

#[path = "../../../moat-image/tests/common/mod.rs"]
pub mod common;

use std::path::Path;

use common::{write_layout, Comp, Tar};

use crate::harness::Moat;

/// An OCI layout holding busybox with /etc/passwd, tagged `v1`.
pub fn busybox_layout(dir: &Path) {
    let bb = std::fs::read("/bin/busybox").expect("busybox-static installed");
    let mut t = Tar::new();
    t.dir("bin/").file_mode("bin/busybox", &bb, 0o755);
    for c in ["sh", "echo", "cat", "id", "sleep", "touch", "httpd", "wget"] {
        t.symlink(&format!("bin/{c}"), "busybox");
    }
    t.dir("etc/")
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n",
        )
        .file("etc/group", b"root:x:0:\nnogroup:x:65534:\n");
    write_layout(
        dir,
        "v1",
        &[(t.finish(), Comp::Gzip)],
        &["/bin/sh", "-c", "echo default"],
    );
}

pub fn import(m: &Moat, name: &str) {
    let layout = tempfile::tempdir().unwrap();
    busybox_layout(layout.path());
    let out = m.ok(&[
        "image",
        "import",
        layout.path().to_str().unwrap(),
        "--name",
        name,
    ]);
    assert!(out.contains("Loaded image"), "{out}");
}
