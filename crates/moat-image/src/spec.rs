//! Image config to runtime spec: the translation at the boundary between an image (`Env`,
//! `Entrypoint`, `Cmd`, `User`, `WorkingDir`) plus the user's overrides and the OCI runtime spec
//! the runtime core consumes. It starts from a template `Spec` (the hardened default) and changes
//! only the process (args, env, cwd, user) and the root path.
//!
//! User and group names are looked up in the image's own `/etc/passwd` and `/etc/group`, opened
//! inside the rootfs with `open_in_root`, never through a path join.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::Spec;

use crate::error::{ImageError, Result};

/// PATH when neither the template nor the image sets one.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the user asked for on top of the image config.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// Replaces the image's Entrypoint (and, as with Docker, drops its Cmd unless `cmd` is set).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's Cmd.
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE` entries added last (they win).
    pub env: Vec<String>,
    /// `user[:group]`, names or numbers.
    pub user: Option<String>,
    /// Working directory.
    pub workdir: Option<String>,
}

/// Build the runtime spec of a container of an image with `config`, from `template`. `rootfs`,
/// when given, becomes `root.path` and is where user and group names are resolved.
pub fn runtime_spec(
    template: &Spec,
    config: &ImageConfiguration,
    overrides: &Overrides,
    rootfs: Option<&Path>,
) -> Result<Spec> {
    let empty = oci_spec::image::Config::default();
    let ic = config.config().as_ref().unwrap_or(&empty);
    let entrypoint = overrides
        .entrypoint
        .clone()
        .or_else(|| ic.entrypoint().clone())
        .unwrap_or_default();
    let cmd = match (&overrides.cmd, &overrides.entrypoint) {
        (Some(c), _) => c.clone(),
        (None, Some(_)) => Vec::new(),
        (None, None) => ic.cmd().clone().unwrap_or_default(),
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(ImageError::Config(
            "no command: the image sets neither Entrypoint nor Cmd".into(),
        ));
    }

    let mut spec = template.clone();
    let mut process = spec.process().clone().unwrap_or_default();
    let tmpl_env = process.env().clone().unwrap_or_default();
    let image_env = ic.env().clone().unwrap_or_default();
    process.set_env(Some(merge_env([&tmpl_env, &image_env, &overrides.env])));
    process.set_args(Some(args));

    let cwd = overrides
        .workdir
        .clone()
        .or_else(|| ic.working_dir().clone())
        .filter(|s| !s.is_empty());
    let cwd = match cwd {
        Some(c) if c.starts_with('/') => PathBuf::from(c),
        Some(c) => Path::new("/").join(c),
        None => PathBuf::from("/"),
    };
    process.set_cwd(cwd);

    let user_str = overrides
        .user
        .clone()
        .or_else(|| ic.user().clone())
        .filter(|s| !s.is_empty());
    let mut user = process.user().clone();
    let (uid, gid, extra) = match user_str {
        None => (0, 0, Vec::new()),
        Some(u) => resolve_user(&u, rootfs)?,
    };
    user.set_uid(uid);
    user.set_gid(gid);
    user.set_additional_gids(if extra.is_empty() { None } else { Some(extra) });
    process.set_user(user);
    spec.set_process(Some(process));

    if let Some(r) = rootfs {
        let mut root = spec.root().clone().unwrap_or_default();
        root.set_path(r.to_owned());
        spec.set_root(Some(root));
    }
    Ok(spec)
}

/// Merge `KEY=VALUE` lists, later lists winning, keeping first-seen order; adds PATH if missing.
pub fn merge_env<'a>(lists: impl IntoIterator<Item = &'a Vec<String>>) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut vals: BTreeMap<String, String> = BTreeMap::new();
    for l in lists {
        for kv in l {
            let key = kv
                .split_once('=')
                .map_or(kv.as_str(), |(k, _)| k)
                .to_owned();
            if !vals.contains_key(&key) {
                order.push(key.clone());
            }
            vals.insert(key, kv.clone());
        }
    }
    let mut out: Vec<String> = order.into_iter().filter_map(|k| vals.remove(&k)).collect();
    if !out.iter().any(|kv| kv.starts_with("PATH=")) {
        out.insert(0, DEFAULT_PATH.into());
    }
    out
}

/// Read a small file of the rootfs (`/etc/passwd`), resolved inside it.
fn read_in_root(rootfs: &Path, path: &str) -> Option<String> {
    let root = std::fs::File::open(rootfs).ok()?;
    let fd =
        moat_sys::resolve::open_in_root(root.as_fd(), Path::new(path), libc::O_RDONLY, 0).ok()?;
    let mut s = String::new();
    std::fs::File::from(fd)
        .take(4 << 20)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

/// `user[:group]` to (uid, gid, additional gids).
fn resolve_user(spec: &str, rootfs: Option<&Path>) -> Result<(u32, u32, Vec<u32>)> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = rootfs
        .and_then(|r| read_in_root(r, "/etc/passwd"))
        .unwrap_or_default();
    let group = rootfs
        .and_then(|r| read_in_root(r, "/etc/group"))
        .unwrap_or_default();
    // name:x:uid:gid:...
    let pw: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 4)
        .collect();
    let gr: Vec<Vec<&str>> = group
        .lines()
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 3)
        .collect();
    let entry = pw
        .iter()
        .find(|f| f[0] == u || (u.parse::<u32>().is_ok() && f[2] == u));
    let uid = match u.parse::<u32>() {
        Ok(n) => n,
        Err(_) => entry.and_then(|f| f[2].parse().ok()).ok_or_else(|| {
            ImageError::Config(format!("user {u:?} not found in the image's /etc/passwd"))
        })?,
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => gr
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    ImageError::Config(format!("group {g:?} not found in the image's /etc/group"))
                })?,
        },
        None => entry.and_then(|f| f[3].parse().ok()).unwrap_or(0),
    };
    let mut extra = Vec::new();
    if g.is_none() {
        if let Some(name) = entry.map(|f| f[0]) {
            for f in &gr {
                let members = f.get(3).copied().unwrap_or("");
                if members.split(',').any(|m| m == name) {
                    if let Ok(n) = f[2].parse::<u32>() {
                        if n != gid && !extra.contains(&n) {
                            extra.push(n);
                        }
                    }
                }
            }
        }
    }
    Ok((uid, gid, extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> ImageConfiguration {
        serde_json::from_str(json).unwrap()
    }

    const BASE: &str = r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
        "config":{"Env":["PATH=/bin","A=image"],"Entrypoint":["/bin/ep"],"Cmd":["--flag"],"WorkingDir":"/srv","User":"app"}}"#;

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\napp:x:1001:\nwheel:x:10:app,root\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn image_config_becomes_process() {
        let r = rootfs();
        let tmpl = Spec::default();
        let s = runtime_spec(&tmpl, &config(BASE), &Overrides::default(), Some(r.path())).unwrap();
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["/bin/ep", "--flag"]);
        assert_eq!(p.cwd(), Path::new("/srv"));
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 1001));
        assert_eq!(p.user().additional_gids().as_ref().unwrap(), &[10]);
        let env = p.env().as_ref().unwrap();
        assert!(
            env.contains(&"PATH=/bin".to_string()) && env.contains(&"A=image".to_string()),
            "{env:?}"
        );
        assert_eq!(s.root().as_ref().unwrap().path(), r.path());
    }

    #[test]
    fn overrides_win() {
        let o = Overrides {
            entrypoint: Some(vec!["/bin/sh".into()]),
            cmd: None,
            env: vec!["A=override".into()],
            user: Some("0:0".into()),
            workdir: Some("tmp".into()),
        };
        let s = runtime_spec(&Spec::default(), &config(BASE), &o, None).unwrap();
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["/bin/sh"]); // Cmd dropped with the entrypoint
        assert_eq!(p.cwd(), Path::new("/tmp"));
        assert_eq!((p.user().uid(), p.user().gid()), (0, 0));
        let env = p.env().as_ref().unwrap();
        assert!(env.contains(&"A=override".to_string()) && !env.contains(&"A=image".to_string()));
    }

    #[test]
    fn errors_name_what_is_missing() {
        let none =
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        assert!(
            runtime_spec(&Spec::default(), &config(none), &Overrides::default(), None).is_err()
        );
        let o = Overrides {
            user: Some("nobody".into()),
            ..Default::default()
        };
        let r = rootfs();
        let e = runtime_spec(&Spec::default(), &config(BASE), &o, Some(r.path())).unwrap_err();
        assert!(e.to_string().contains("nobody"), "{e}");
    }

    #[test]
    fn env_merge_keeps_order_and_adds_path() {
        let out = merge_env([
            &vec!["B=1".to_string(), "C=2".to_string()],
            &vec!["B=3".to_string()],
        ]);
        assert_eq!(
            out,
            vec![DEFAULT_PATH.to_string(), "B=3".into(), "C=2".into()]
        );
    }
}
