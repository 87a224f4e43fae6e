//! Stand-ins for the images critest pulls, built here without network and pushed under critest's
//! own names to the local registry: busybox (Debian's `busybox` package with its applets, plus
//! `ipcs` and `pgrep` scripts, which Debian's build lacks), a static pause, nginx (Debian's binary and its
//! libraries, fetched with `apt-get download` into the cri-tools cache), an httpd (busybox's,
//! printing the line critest looks for), nonewprivs (a static setuid-root program printing its
//! effective uid), and the tagged, user and group images of the image specs. The digest image
//! (`test-image-digest@sha256:9700f9...`) cannot be reproduced: that spec fails for every handler.

use crate::support::*;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const K8S: &str = "registry.k8s.io";
const GCR: &str = "gcr.io/k8s-staging-cri-tools";

/// A busybox root filesystem at `dir`: Debian's dynamically linked `busybox` (its shell runs
/// commands from PATH like the Docker Hub image's; busybox-static's prefers its own applets, so
/// critest's MaskedPaths spec could not mask `/bin/ls`) with its libraries, applets as hard links.
fn busybox_rootfs(dir: &Path) {
    for d in [
        "bin", "etc", "tmp", "proc", "sys", "dev", "root", "usr/bin", "var/run",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let bb = from_deb("busybox", "bin/busybox");
    copy_with_libs(&bb, Path::new("/bin/busybox"), dir);
    let list = Command::new(&bb).arg("--list").output().unwrap();
    for applet in text(&list.stdout).lines() {
        // Hard links, as in the busybox images of Docker Hub: masking one applet
        // (critest's MaskedPaths masks /bin/ls) must not mask them all.
        if applet != "busybox" {
            let _ = std::fs::hard_link(dir.join("bin/busybox"), dir.join("bin").join(applet));
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n",
    )
    .unwrap();
    let script = |name: &str, body: &str| {
        let p = dir.join("usr/bin").join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    script(
        "ipcs",
        "#!/bin/sh\n# stand-in for util-linux ipcs: the shared memory segments of this IPC namespace\n\
         echo '------ Shared Memory Segments --------'\nexec cat /proc/sysvipc/shm\n",
    );
    script(
        "pgrep",
        "#!/bin/sh\n# stand-in for procps pgrep NAME\nfor p in $(pidof \"$@\"); do echo $p; done\n",
    );
}

/// Tar `rootfs` into `img/layer.tar` and write a docker-archive of it as `tag`.
/// Each image gets a label naming it, so that images built from the same rootfs still differ
/// (critest counts image ids).
fn archive(work: &Path, name: &str, rootfs: &Path, tag: &str, mut config: Value) -> PathBuf {
    config["Labels"] = json!({ "io.moat.critest.image": name });
    let img = work.join(format!("img-{name}"));
    std::fs::create_dir_all(&img).unwrap();
    ok(
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(rootfs)
            .arg("-cf")
            .arg(img.join("layer.tar"))
            .arg("."),
        Duration::from_secs(60),
        "tar a layer",
    );
    let tarball = work.join(format!("{name}.tar"));
    docker_archive(&img, tag, config, &tarball);
    tarball
}

fn push(tarball: &Path, dest: &str, registry: &str) {
    // `registry.k8s.io/x/y:t` goes to `127.0.0.1:PORT/x/y:t`, where the mirror looks.
    let (_, path) = dest.split_once('/').unwrap();
    ok(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("docker-archive:{}", tarball.display()))
            .arg(format!("docker://{registry}/{path}")),
        Duration::from_secs(120),
        "skopeo copy",
    );
}

/// `path` of Debian's package `package`, fetched once (`apt-get download`) into the cri-tools cache.
fn from_deb(package: &str, path: &str) -> PathBuf {
    let cache = PathBuf::from(
        std::env::var("MOAT_CRI_TOOLS_CACHE")
            .unwrap_or_else(|_| "/var/cache/moat-test/cri-tools".into()),
    )
    .join("debs")
    .join(package);
    let bin = cache.join(path);
    if bin.exists() {
        return bin;
    }
    let _ = std::fs::remove_dir_all(&cache);
    std::fs::create_dir_all(&cache).unwrap();
    ok(
        Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(&cache),
        Duration::from_secs(300),
        &format!("apt-get download {package}"),
    );
    let deb = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap_or_else(|| panic!("no .deb of {package} in {}", cache.display()));
    ok(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&cache),
        Duration::from_secs(60),
        &format!("dpkg-deb -x {package}"),
    );
    let _ = std::fs::remove_file(deb);
    assert!(bin.exists(), "{} missing after unpacking", bin.display());
    bin
}

/// Copy `bin` and the shared libraries `ldd` lists into `rootfs` at the same paths.
fn copy_with_libs(bin: &Path, dest: &Path, rootfs: &Path) {
    std::fs::create_dir_all(rootfs.join(dest.parent().unwrap().strip_prefix("/").unwrap()))
        .unwrap();
    std::fs::copy(bin, rootfs.join(dest.strip_prefix("/").unwrap())).unwrap();
    let out = ok(Command::new("ldd").arg(bin), Duration::from_secs(30), "ldd");
    for lib in out.split_whitespace().filter(|w| w.starts_with('/')) {
        let lib = Path::new(lib);
        let to = rootfs.join(lib.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
}

fn nginx_rootfs(dir: &Path, port: u16) {
    busybox_rootfs(dir);
    copy_with_libs(
        &from_deb("nginx", "usr/sbin/nginx"),
        Path::new("/usr/sbin/nginx"),
        dir,
    );
    for d in [
        "var/log/nginx",
        "var/lib/nginx",
        "etc/nginx",
        "usr/share/nginx/html",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(
        dir.join("etc/nginx/nginx.conf"),
        format!(
            "user root;\nworker_processes 1;\npid /var/run/nginx.pid;\nerror_log stderr;\n\
             events {{ worker_connections 64; }}\nhttp {{ access_log off; server {{ listen {port}; \
             root /usr/share/nginx/html; }} }}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("usr/share/nginx/html/index.html"),
        "<h1>Welcome to nginx!</h1>\n",
    )
    .unwrap();
}

/// Compile the C program `src` statically to `bin` (mode `mode`).
fn cc_static(work: &Path, name: &str, src: &str, bin: &Path, mode: u32) {
    let c = work.join(format!("{name}.c"));
    std::fs::write(&c, src).unwrap();
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    ok(
        Command::new("cc")
            .args(["-static", "-O2", "-o"])
            .arg(bin)
            .arg(&c),
        Duration::from_secs(120),
        &format!("cc -static {name} (apt-get install gcc libc6-dev)"),
    );
    std::fs::set_permissions(bin, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A static program printing its effective uid, setuid root (critest's nonewprivs image).
fn nonewprivs_rootfs(dir: &Path, work: &Path) {
    busybox_rootfs(dir);
    cc_static(
        work,
        "nnp",
        "#include <stdio.h>\n#include <unistd.h>\n\
         int main(void) { printf(\"Effective uid: %d\\n\", (int)geteuid()); return 0; }\n",
        &dir.join("usr/local/bin/nnp"),
        0o4755,
    );
}

/// A static pause: sleeps until SIGTERM or SIGINT, reaps children (no `sleep` process: critest's
/// execSync-with-timeout spec looks for one in the pod).
fn pause_rootfs(dir: &Path, work: &Path) {
    std::fs::create_dir_all(dir.join("dev")).unwrap();
    cc_static(
        work,
        "pause",
        "#include <signal.h>\n#include <stdlib.h>\n#include <sys/wait.h>\n#include <unistd.h>\n\
         static void quit(int s) { (void)s; _exit(0); }\n\
         static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }\n\
         int main(void) { signal(SIGTERM, quit); signal(SIGINT, quit); signal(SIGCHLD, reap);\n\
         for (;;) pause(); }\n",
        &dir.join("pause"),
        0o755,
    );
}

/// Build every stand-in in `work` and push it to the registry at `registry` (`127.0.0.1:PORT`).
pub fn build_and_push(work: &Path, registry: &str) {
    let cfg = |extra: Value| {
        let mut c = json!({"Env": [PATH_ENV]});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let mut images: Vec<(String, PathBuf)> = Vec::new();
    let mut add = |name: &str, rootfs: &Path, tags: &[String], config: Value| {
        let tarball = archive(work, name, rootfs, &tags[0], config);
        for t in tags {
            images.push((t.clone(), tarball.clone()));
        }
    };

    let bb = work.join("rootfs-busybox");
    busybox_rootfs(&bb);
    add(
        "busybox",
        &bb,
        &[format!("{K8S}/e2e-test-images/busybox:1.29-2")],
        cfg(json!({"Cmd": ["sh"]})),
    );
    let pause = work.join("rootfs-pause");
    pause_rootfs(&pause, work);
    add(
        "pause",
        &pause,
        &[format!("{K8S}/pause:3.6")],
        cfg(json!({"Entrypoint": ["/pause"]})),
    );
    add(
        "httpd",
        &bb,
        &[format!("{K8S}/e2e-test-images/httpd:2.4.39-4")],
        cfg(
            json!({"Cmd": ["sh", "-c", "echo 'httpd -D FOREGROUND'; mkdir -p /htdocs; echo '<h1>It works!</h1>' > /htdocs/index.html; exec httpd -f -p 80 -h /htdocs"]}),
        ),
    );
    let tagged = |name: &str, tags: &[&str]| -> Vec<String> {
        tags.iter().map(|t| format!("{GCR}/{name}:{t}")).collect()
    };
    add(
        "test-latest",
        &bb,
        &tagged("test-image-latest", &["latest"]),
        cfg(json!({"Cmd": ["sh"]})),
    );
    add(
        "test-tag",
        &bb,
        &tagged("test-image-tag", &["test", "all"]),
        cfg(json!({"Cmd": ["sh"]})),
    );
    add(
        "test-tags",
        &bb,
        &tagged("test-image-tags", &["1", "2", "3"]),
        cfg(json!({"Cmd": ["sh"]})),
    );
    for n in 1..=3 {
        // Three different images: a file of its own in each.
        let d = work.join(format!("rootfs-test-{n}"));
        busybox_rootfs(&d);
        std::fs::write(d.join(format!("test-image-{n}")), format!("{n}\n")).unwrap();
        add(
            &format!("test-{n}"),
            &d,
            &tagged(&format!("test-image-{n}"), &["latest"]),
            cfg(json!({"Cmd": ["sh"]})),
        );
    }
    for (name, user) in [
        ("test-image-user-uid", "1002"),
        ("test-image-user-username", "www-data"),
        ("test-image-user-uid-group", "1003:1004"),
        ("test-image-user-username-group", "www-data:1004"),
    ] {
        add(
            name,
            &bb,
            &tagged(name, &["latest"]),
            cfg(json!({"Cmd": ["sh"], "User": user})),
        );
    }
    let pg = work.join("rootfs-predefined-group");
    busybox_rootfs(&pg);
    std::fs::write(
        pg.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\ndefault-user:x:1000:1000::/home/default-user:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        pg.join("etc/group"),
        "root:x:0:\ndefault-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n",
    )
    .unwrap();
    add(
        "predefined-group",
        &pg,
        &tagged("test-image-predefined-group", &["latest"]),
        cfg(json!({"Cmd": ["sh"], "User": "1000"})),
    );
    let nginx = work.join("rootfs-nginx");
    nginx_rootfs(&nginx, 80);
    let nginx_cmd = json!({"Cmd": ["nginx", "-g", "daemon off;"], "ExposedPorts": {"80/tcp": {}}});
    add(
        "nginx",
        &nginx,
        &[format!("{K8S}/e2e-test-images/nginx:1.14-2")],
        cfg(nginx_cmd.clone()),
    );
    let hostnet = work.join("rootfs-hostnet-nginx");
    nginx_rootfs(&hostnet, 12003);
    add(
        "hostnet-nginx",
        &hostnet,
        &[format!("{GCR}/hostnet-nginx-amd64:latest")],
        cfg(nginx_cmd),
    );
    let nnp = work.join("rootfs-nonewprivs");
    nonewprivs_rootfs(&nnp, work);
    add(
        "nonewprivs",
        &nnp,
        &[format!("{K8S}/e2e-test-images/nonewprivs:1.3")],
        cfg(json!({"Entrypoint": ["/usr/local/bin/nnp"]})),
    );

    for (tag, tarball) in &images {
        push(tarball, tag, registry);
    }
}
