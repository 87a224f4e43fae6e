//! `moat run`'s flags turned into an OCI runtime spec: the translation at the boundary between
//! the command line and the runtime core. It starts from the hardened default
//! (`moat_container::defaults`), lets `moat_image::spec` apply the image config (entrypoint, cmd,
//! env, user, workdir) and the user's overrides of those, then applies every other flag to the
//! spec. It only ever loosens the default where a flag asks for it (`--cap-add`, `--privileged`,
//! `--security-opt seccomp=unconfined`, `--network host`).

use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::Spec;
use serde_json::{json, Value};

use crate::error::{CliError, Result};
use crate::meta::is_clean_absolute;

/// The flags of `moat run` that shape the container.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SpecArgs {
    /// Set an environment variable (KEY=VALUE, or KEY to copy it from moat's environment).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from FILE (one KEY=VALUE a line, # comments).
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User (name or uid) and optionally group, looked up in the container's /etc/passwd.
    #[arg(short, long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Bind mount a host directory or file (HOST must be an absolute path that exists).
    #[arg(short, long = "volume", value_name = "HOST:CTR[:ro]")]
    pub volume: Vec<String>,
    /// Mount a fresh tmpfs at PATH (default options nosuid,nodev,noexec,mode=1777).
    #[arg(long, value_name = "PATH[:OPTS]")]
    pub tmpfs: Vec<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Memory limit: bytes or a number with b, k, m or g (e.g. 64m).
    #[arg(short, long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// CPU limit as a number of CPUs (e.g. 0.5).
    #[arg(long, value_name = "N")]
    pub cpus: Option<f64>,
    /// Maximum number of processes in the container.
    #[arg(long, value_name = "N")]
    pub pids_limit: Option<i64>,
    /// Add a capability (NET_ADMIN or CAP_NET_ADMIN, ALL) to the default set.
    #[arg(long, value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability (or ALL) from the default set.
    #[arg(long, value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// seccomp=unconfined, seccomp=PROFILE.json, no-new-privileges[=true|false].
    #[arg(long, value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// Give the container every capability, no seccomp filter, no masked paths, all devices in
    /// its device cgroup and a writable /sys. Host devices are not added to its /dev.
    #[arg(long)]
    pub privileged: bool,
    /// bridge (default): a veth on the moat0 bridge (10.213.87.0/24, or the next free /24 of 10.213.0.0/16; outbound NAT) through the CNI
    /// plugins, needed for -p; none: own network namespace with loopback only; host: the host's.
    /// With --isolation vm: bridge (the VM joins the container's namespace through a tap) or none;
    /// host is refused (a VM cannot share the host's network stack).
    /// Rootless: slirp4netns (default: a user-mode network stack, outbound NAT, -p through it),
    /// pasta (passt: the host's addresses in the container, -p through it), none or host.
    #[arg(long, value_parser = ["none", "host", "bridge", "slirp4netns", "pasta"])]
    pub network: Option<String>,
    /// Container host name (default: the first 12 digits of the id).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Override the image's entrypoint ("" clears it).
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,
}

/// Files moat bind-mounts over the container's /etc.
pub struct EtcFiles {
    pub hostname: PathBuf,
    pub hosts: PathBuf,
    pub resolv_conf: Option<PathBuf>,
}

/// `64m` to bytes.
pub fn parse_size(s: &str) -> Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = t[i..].trim_end_matches('b');
            let m: i64 = match unit {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                _ => return Err(CliError::Usage(format!("size {s:?}: unknown unit"))),
            };
            (&t[..i], m)
        }
        None => (t.as_str(), 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| CliError::Usage(format!("size {s:?}: expected a number with b, k, m or g")))?;
    if n.is_nan() || n <= 0.0 {
        return Err(CliError::Usage(format!("size {s:?}: must be positive")));
    }
    Ok((n * mult as f64) as i64)
}

/// The environment from `-e` and `--env-file`, in order.
pub fn collect_env(a: &SpecArgs) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut add = |kv: &str| {
        if kv.contains('=') {
            out.push(kv.to_owned());
        } else if let Ok(v) = std::env::var(kv) {
            out.push(format!("{kv}={v}"));
        }
    };
    for f in &a.env_file {
        let text = std::fs::read_to_string(f).map_err(CliError::io("read env file", f))?;
        for line in text.lines().map(str::trim) {
            if !line.is_empty() && !line.starts_with('#') {
                add(line);
            }
        }
    }
    for kv in &a.env {
        if kv.is_empty() || kv.starts_with('=') {
            return Err(CliError::Usage(format!(
                "-e {kv:?}: expected KEY=VALUE or KEY"
            )));
        }
        add(kv);
    }
    Ok(out)
}

/// `NET_ADMIN` / `cap_net_admin` to `CAP_NET_ADMIN`, checked against the kernel's list.
fn cap_name(s: &str) -> Result<String> {
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    if caps::all().iter().any(|c| c.to_string() == name) {
        Ok(name)
    } else {
        Err(CliError::Usage(format!("unknown capability {s:?}")))
    }
}

/// "ALL": every capability this process may grant (its bounding set; a sandboxed host may lack
/// some, e.g. CAP_SYS_RESOURCE, and asking for them would fail the container's capset).
fn all_caps() -> Vec<String> {
    let set = caps::read(None, caps::CapSet::Bounding).unwrap_or_else(|_| caps::all());
    let mut v: Vec<String> = set.iter().map(|c| c.to_string()).collect();
    v.sort();
    v
}

/// Every character and block device under the host's /dev (not /dev/pts, /dev/shm, /dev/mqueue
/// or the console), as OCI `linux.devices` entries.
fn host_devices() -> Vec<serde_json::Value> {
    fn walk(dir: &Path, out: &mut Vec<serde_json::Value>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let path = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let ft = meta.file_type();
            use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
            if ft.is_dir() {
                if !["/dev/pts", "/dev/shm", "/dev/mqueue"]
                    .iter()
                    .any(|s| path == Path::new(s))
                {
                    walk(&path, out);
                }
                continue;
            }
            let typ = if ft.is_char_device() {
                "c"
            } else if ft.is_block_device() {
                "b"
            } else {
                continue;
            };
            if path == Path::new("/dev/console") || path == Path::new("/dev/ptmx") {
                continue;
            }
            let rdev = meta.rdev();
            out.push(json!({
                "path": path, "type": typ,
                "major": nix::sys::stat::major(rdev), "minor": nix::sys::stat::minor(rdev),
                "fileMode": meta.permissions().mode() & 0o777, "uid": meta.uid(), "gid": meta.gid(),
            }));
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/dev"), &mut out);
    out
}

/// Apply `--cap-add`/`--cap-drop` to one capability set.
fn adjust_caps(set: &mut Vec<String>, add: &[String], drop: &[String]) -> Result<()> {
    for d in drop {
        if d.eq_ignore_ascii_case("all") {
            set.clear();
        } else {
            let n = cap_name(d)?;
            set.retain(|c| *c != n);
        }
    }
    for a in add {
        if a.eq_ignore_ascii_case("all") {
            *set = all_caps();
        } else {
            let n = cap_name(a)?;
            if !set.contains(&n) {
                set.push(n);
            }
        }
    }
    Ok(())
}

/// `HOST:CTR[:ro|rw]` to an OCI bind mount.
pub fn volume_mount(v: &str) -> Result<Value> {
    let parts: Vec<&str> = v.split(':').collect();
    let (host, ctr, opts) = match parts.as_slice() {
        [h, c] => (*h, *c, ""),
        [h, c, o] => (*h, *c, *o),
        _ => return Err(CliError::Usage(format!("-v {v:?}: expected HOST:CTR[:ro]"))),
    };
    let (hp, cp) = (Path::new(host), Path::new(ctr));
    if !is_clean_absolute(hp) {
        return Err(CliError::Usage(format!(
            "-v {v:?}: the host path must be absolute (named volumes are not supported)"
        )));
    }
    if !is_clean_absolute(cp) || cp == Path::new("/") {
        return Err(CliError::Usage(format!(
            "-v {v:?}: the container path must be absolute, without .., and not /"
        )));
    }
    if !hp.exists() {
        return Err(CliError::Usage(format!(
            "-v {v:?}: host path {host} does not exist"
        )));
    }
    let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" | "rw" => options.push(o.into()),
            _ => return Err(CliError::Usage(format!("-v {v:?}: unknown option {o:?}"))),
        }
    }
    Ok(json!({"destination": ctr, "type": "bind", "source": host, "options": options}))
}

/// `PATH[:OPTS]` to a tmpfs mount.
pub fn tmpfs_mount(t: &str) -> Result<Value> {
    let (path, opts) = t.split_once(':').unwrap_or((t, ""));
    if !is_clean_absolute(Path::new(path)) || path == "/" {
        return Err(CliError::Usage(format!(
            "--tmpfs {t:?}: expected an absolute path other than /"
        )));
    }
    let options: Vec<&str> = if opts.is_empty() {
        vec!["nosuid", "nodev", "noexec", "mode=1777"]
    } else {
        opts.split(',').collect()
    };
    Ok(json!({"destination": path, "type": "tmpfs", "source": "tmpfs", "options": options}))
}

/// Build the spec of a container with root filesystem `rootfs` from `config` (the image's, or an
/// empty one for `--rootfs`), the command-line `cmd` and the flags `a`.
pub fn build(
    a: &SpecArgs,
    config: &ImageConfiguration,
    cmd: &[String],
    rootfs: &Path,
    hostname: &str,
    etc: &EtcFiles,
    tty: bool,
) -> Result<Spec> {
    let base = moat_container::defaults::default_spec(false)
        .map_err(CliError::container("build the default spec"))?;
    let overrides = moat_image::spec::Overrides {
        entrypoint: a.entrypoint.as_ref().map(|e| {
            if e.is_empty() {
                vec![]
            } else {
                vec![e.clone()]
            }
        }),
        cmd: (!cmd.is_empty()).then(|| cmd.to_vec()),
        env: collect_env(a)?,
        user: a.user.clone(),
        workdir: a.workdir.clone(),
    };
    let spec = moat_image::spec::runtime_spec(&base, config, &overrides, Some(rootfs))
        .map_err(CliError::image("build the container's process"))?;
    let mut v = serde_json::to_value(&spec).map_err(|e| CliError::Usage(e.to_string()))?;
    apply_flags(&mut v, a, hostname, etc, tty)?;
    let spec: Spec = serde_json::from_value(v)
        .map_err(|e| CliError::Usage(format!("build the runtime spec: {e}")))?;
    moat_container::spec::validate(&spec).map_err(CliError::container("check the runtime spec"))?;
    Ok(spec)
}

fn security_opts(v: &mut Value, opts: &[String]) -> Result<()> {
    for o in opts {
        let (k, val) = o.split_once(['=', ':']).unwrap_or((o, ""));
        match (k, val) {
            ("seccomp", "unconfined") => {
                if let Some(l) = v["linux"].as_object_mut() {
                    l.remove("seccomp");
                }
            }
            ("seccomp", path) if !path.is_empty() => {
                let text = std::fs::read_to_string(path)
                    .map_err(CliError::io("read seccomp profile", path))?;
                let profile: oci_spec::runtime::LinuxSeccomp = serde_json::from_str(&text)
                    .map_err(|e| CliError::Usage(format!("seccomp profile {path}: {e}")))?;
                v["linux"]["seccomp"] = serde_json::to_value(profile).unwrap_or_default();
            }
            ("no-new-privileges", "" | "true") => v["process"]["noNewPrivileges"] = json!(true),
            ("no-new-privileges", "false") => v["process"]["noNewPrivileges"] = json!(false),
            ("apparmor", "unconfined") | ("label", "disable") => {}
            _ => {
                return Err(CliError::Usage(format!(
                    "--security-opt {o:?}: supported are seccomp=unconfined, seccomp=PROFILE.json, no-new-privileges[=true|false]"
                )))
            }
        }
    }
    Ok(())
}

fn apply_flags(
    v: &mut Value,
    a: &SpecArgs,
    hostname: &str,
    etc: &EtcFiles,
    tty: bool,
) -> Result<()> {
    v["process"]["terminal"] = json!(tty);
    v["hostname"] = json!(hostname);
    v["root"]["readonly"] = json!(a.read_only);
    // Capabilities.
    let (add, drop): (Vec<String>, Vec<String>) = if a.privileged {
        (vec!["ALL".into()], vec![])
    } else {
        (a.cap_add.clone(), a.cap_drop.clone())
    };
    for set in ["bounding", "effective", "permitted"] {
        let mut caps: Vec<String> =
            serde_json::from_value(v["process"]["capabilities"][set].clone()).unwrap_or_default();
        adjust_caps(&mut caps, &add, &drop)?;
        v["process"]["capabilities"][set] = json!(caps);
    }
    if a.privileged {
        v["process"]["noNewPrivileges"] = json!(false);
        let l = &mut v["linux"];
        if let Some(o) = l.as_object_mut() {
            o.remove("seccomp");
        }
        l["maskedPaths"] = json!([]);
        l["readonlyPaths"] = json!([]);
        l["resources"]["devices"] = json!([{"allow": true, "access": "rwm"}]);
        // The host's device nodes, as docker and podman give a privileged container.
        l["devices"] = json!(host_devices());
        if let Some(mounts) = v["mounts"].as_array_mut() {
            for m in mounts.iter_mut() {
                if m["destination"] == "/sys" || m["destination"] == "/sys/fs/cgroup" {
                    if let Some(opts) = m["options"].as_array_mut() {
                        opts.retain(|o| o != "ro");
                    }
                }
            }
        }
    }
    security_opts(v, &a.security_opt)?;
    // Resources.
    let res = &mut v["linux"]["resources"];
    if let Some(m) = &a.memory {
        let bytes = parse_size(m)?;
        if bytes < 6 << 20 {
            return Err(CliError::Usage(format!("--memory {m}: the minimum is 6m")));
        }
        res["memory"] = json!({ "limit": bytes });
    }
    if let Some(c) = a.cpus {
        if c.is_nan() || c <= 0.0 {
            return Err(CliError::Usage(format!("--cpus {c}: must be positive")));
        }
        res["cpu"] = json!({ "quota": (c * 100_000.0) as i64, "period": 100_000 });
    }
    if let Some(p) = a.pids_limit {
        res["pids"] = json!({ "limit": p });
    }
    // Network.
    if a.network.as_deref() == Some("host") {
        if let Some(ns) = v["linux"]["namespaces"].as_array_mut() {
            ns.retain(|n| n["type"] != "network");
        }
    }
    // Mounts: /etc files, volumes, tmpfs.
    let mut extra = vec![
        json!({"destination": "/etc/hostname", "type": "bind", "source": etc.hostname, "options": ["rbind", "rprivate"]}),
        json!({"destination": "/etc/hosts", "type": "bind", "source": etc.hosts, "options": ["rbind", "rprivate"]}),
    ];
    if let Some(r) = &etc.resolv_conf {
        extra.push(json!({"destination": "/etc/resolv.conf", "type": "bind", "source": r, "options": ["rbind", "rprivate"]}));
    }
    for vol in &a.volume {
        extra.push(volume_mount(vol)?);
    }
    for t in &a.tmpfs {
        extra.push(tmpfs_mount(t)?);
    }
    if let Some(mounts) = v["mounts"].as_array_mut() {
        let dests: Vec<Value> = extra.iter().map(|m| m["destination"].clone()).collect();
        mounts.retain(|m| !dests.contains(&m["destination"]));
        mounts.extend(extra);
    }
    Ok(())
}

/// Rootless: the container runs in moat's user namespace (no user namespace of its own), so the
/// devpts `gid=5` option stays only when that namespace maps gid 5.
pub fn adapt_rootless(spec: &mut Spec) {
    if crate::rootless::maps_gid(5) {
        return;
    }
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for m in mounts.iter_mut() {
        if m.destination() == Path::new("/dev/pts") {
            let opts: Vec<String> = m
                .options()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|o| o != "gid=5")
                .collect();
            m.set_options(Some(opts));
        }
    }
    spec.set_mounts(Some(mounts));
}

/// Make the spec's network namespace the one pinned at `pin` (a VM container's, made before the
/// VM boots).
pub fn join_netns(spec: &mut oci_spec::runtime::Spec, pin: &Path) {
    let Some(ns) = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.namespaces_mut().as_mut())
    else {
        return;
    };
    for n in ns.iter_mut() {
        if n.typ() == oci_spec::runtime::LinuxNamespaceType::Network {
            n.set_path(Some(pin.to_path_buf()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etc() -> EtcFiles {
        EtcFiles {
            hostname: "/tmp/h".into(),
            hosts: "/tmp/hosts".into(),
            resolv_conf: None,
        }
    }

    fn spec(a: &SpecArgs) -> Result<Spec> {
        let d = tempfile::tempdir().unwrap();
        build(
            a,
            &ImageConfiguration::default(),
            &["sh".into()],
            d.path(),
            "h1",
            &etc(),
            false,
        )
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("512K").unwrap(), 512 << 10);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("10mb").unwrap(), 10 << 20);
        assert!(
            parse_size("12x").is_err() && parse_size("m").is_err() && parse_size("-1").is_err()
        );
    }

    #[test]
    fn flags_reach_the_spec() {
        let a = SpecArgs {
            memory: Some("32m".into()),
            cpus: Some(0.5),
            pids_limit: Some(20),
            cap_add: vec!["net_admin".into()],
            cap_drop: vec!["CAP_CHOWN".into()],
            tmpfs: vec!["/scratch".into()],
            volume: vec!["/tmp:/data:ro".into()],
            read_only: true,
            network: Some("host".into()),
            env: vec!["A=1".into()],
            ..Default::default()
        };
        let s = spec(&a).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 32 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 20);
        let eff = v["process"]["capabilities"]["effective"].to_string();
        assert!(
            eff.contains("CAP_NET_ADMIN") && !eff.contains("CAP_CHOWN"),
            "{eff}"
        );
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["hostname"], "h1");
        assert!(!v["linux"]["namespaces"].to_string().contains("network"));
        let mounts = v["mounts"].to_string();
        assert!(
            mounts.contains("/scratch")
                && mounts.contains("\"ro\"")
                && mounts.contains("/etc/hostname")
        );
        assert!(v["process"]["env"].to_string().contains("A=1"));
        assert!(
            v["linux"]["seccomp"].is_object(),
            "the default seccomp profile stays"
        );
    }

    #[test]
    fn loosening_needs_a_flag() {
        let s = serde_json::to_value(spec(&SpecArgs::default()).unwrap()).unwrap();
        assert!(s["linux"]["namespaces"].to_string().contains("network"));
        assert_eq!(s["process"]["noNewPrivileges"], true);
        let a = SpecArgs {
            security_opt: vec!["seccomp=unconfined".into()],
            ..Default::default()
        };
        let s = serde_json::to_value(spec(&a).unwrap()).unwrap();
        assert!(s["linux"]["seccomp"].is_null());
        let p = SpecArgs {
            privileged: true,
            ..Default::default()
        };
        let s = serde_json::to_value(spec(&p).unwrap()).unwrap();
        assert!(s["process"]["capabilities"]["bounding"]
            .to_string()
            .contains("CAP_SYS_ADMIN"));
        assert!(
            s["linux"]["devices"].to_string().contains("\"/dev/null\""),
            "host devices missing"
        );
        for bad in [
            SpecArgs {
                volume: vec!["rel:/x".into()],
                ..Default::default()
            },
            SpecArgs {
                volume: vec!["/tmp:/x:zz".into()],
                ..Default::default()
            },
            SpecArgs {
                cap_add: vec!["NOPE".into()],
                ..Default::default()
            },
            SpecArgs {
                security_opt: vec!["apparmor=x".into()],
                ..Default::default()
            },
            SpecArgs {
                memory: Some("1k".into()),
                ..Default::default()
            },
        ] {
            assert!(spec(&bad).is_err(), "{bad:?}");
        }
    }
}
