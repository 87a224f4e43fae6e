//! The high-level containers `moat` knows about, stored beside the image store:
//!
//! ```text
//! <root>/containers/<id>/meta.json     what `moat run` was asked for, and the exit status
//! <root>/containers/<id>/bundle/       the OCI bundle handed to the runtime core
//! <root>/containers/<id>/ctr.log       stdout and stderr of a detached container
//! <root>/containers/<id>/netns         its network namespace, pinned (bridge network only)
//! <root>/names/<name>                  the id owning <name> (created with O_EXCL: names are unique)
//! <root>/runtime/<id>/                 the runtime core's state of the container (rootless:
//!                                      $XDG_RUNTIME_DIR/moat/<id>, see `crate::rootless`)
//! ```
//!
//! Ids are 64 random hex digits; a container is named by its name, its full id or a unique id
//! prefix, as with docker. This module owns those files and never touches the runtime state.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CliError, Result};

/// Where a container's root filesystem comes from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RootfsSource {
    /// An overlay of an image's snapshots under `containers/<id>/rootfs`.
    Image { name: String, digest: String },
    /// A directory given with `--rootfs`, used as is.
    Dir { path: PathBuf },
}

/// A published port (`-p [IP:]HOSTPORT:CTRPORT[/PROTO]`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Port {
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
}

/// What `moat` records about a container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    pub id: String,
    pub name: String,
    pub rootfs: RootfsSource,
    /// The command as run (entrypoint and arguments).
    pub command: Vec<String>,
    /// RFC 3339 creation time.
    pub created: String,
    pub auto_remove: bool,
    pub detached: bool,
    /// `none`, `host` or `bridge`; rootless `slirp4netns` or `pasta`.
    pub network: String,
    #[serde(default)]
    pub ports: Vec<Port>,
    /// Address given by the bridge network, when there is one.
    #[serde(default)]
    pub ip: Option<String>,
    /// Exit status once the container has exited (128+N when killed by signal N).
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub finished: Option<String>,
}

/// The directory layout of the store, see the module doc.
#[derive(Clone, Debug)]
pub struct Paths {
    pub root: PathBuf,
    /// The runtime core's state directory.
    pub runtime_root: PathBuf,
}

/// The lock file a running `moat run` (or its detached monitor) holds in the container's
/// directory until it has recorded the exit and released the network.
const FINISH_LOCK: &str = "finish.lock";

/// Take the finish lock of container `id` (see [`FINISH_LOCK`]); released when every copy of
/// the returned descriptor is closed (a forked monitor shares it).
pub fn hold_finish_lock(paths: &Paths, id: &str) -> Result<fs::File> {
    let p = paths.container_dir(id).join(FINISH_LOCK);
    let f = fs::File::create(&p).map_err(CliError::io("create", &p))?;
    f.lock().map_err(CliError::io("lock", &p))?;
    Ok(f)
}

/// Wait (up to `limit`) until nobody holds the finish lock of container `id`: its `moat run`
/// or monitor has recorded the exit and will not write in the directory again.
pub fn wait_finished(paths: &Paths, id: &str, limit: std::time::Duration) {
    let p = paths.container_dir(id).join(FINISH_LOCK);
    let Ok(f) = fs::File::open(&p) else { return };
    let deadline = std::time::Instant::now() + limit;
    while f.try_lock_shared().is_err() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

impl Paths {
    pub fn new(root: impl Into<PathBuf>) -> Paths {
        let root = root.into();
        Paths {
            runtime_root: root.join("runtime"),
            root,
        }
    }
    /// A store whose runtime state lives in `runtime_root` (rootless: `$XDG_RUNTIME_DIR/moat`).
    pub fn with_runtime(root: impl Into<PathBuf>, runtime_root: impl Into<PathBuf>) -> Paths {
        Paths {
            root: root.into(),
            runtime_root: runtime_root.into(),
        }
    }
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }
    pub fn meta(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("meta.json")
    }
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("bundle")
    }
    pub fn log(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("ctr.log")
    }
    /// The file the container's network namespace is bind-mounted on (bridge network).
    pub fn netns(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("netns")
    }
    /// A directory with a short path for sockets whose name in the container's directory would
    /// be too long: /run, or (rootless) the runtime state directory, which is the user's.
    pub fn short_socket_dir(&self) -> PathBuf {
        if self.runtime_root == self.root.join("runtime") {
            PathBuf::from("/run")
        } else {
            self.runtime_root.clone()
        }
    }
    pub fn names(&self) -> PathBuf {
        self.root.join("names")
    }
    pub fn runtime(&self) -> moat_container::Store {
        moat_container::Store::new(&self.runtime_root)
    }

    pub fn save(&self, m: &Meta) -> Result<()> {
        let p = self.meta(&m.id);
        let tmp = p.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(m).map_err(|e| CliError::Io {
            what: "encode",
            path: p.clone(),
            source: e.into(),
        })?;
        fs::write(&tmp, body).map_err(CliError::io("write", &tmp))?;
        fs::rename(&tmp, &p).map_err(CliError::io("rename", &p))
    }

    pub fn load(&self, id: &str) -> Result<Meta> {
        let p = self.meta(id);
        let b = fs::read(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CliError::NoSuchContainer(id.into()),
            _ => CliError::Io {
                what: "read",
                path: p.clone(),
                source: e,
            },
        })?;
        serde_json::from_slice(&b).map_err(|e| CliError::Io {
            what: "parse",
            path: p,
            source: e.into(),
        })
    }

    /// Every container with a meta.json, oldest first.
    pub fn list(&self) -> Result<Vec<Meta>> {
        let dir = self.root.join("containers");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(CliError::io("read directory", &dir)(e)),
        };
        let mut out: Vec<Meta> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|id| self.load(&id).ok())
            .collect();
        out.sort_by(|a, b| a.created.cmp(&b.created));
        Ok(out)
    }

    /// Claim `name` for `id`; fails if another container has it.
    pub fn reserve_name(&self, name: &str, id: &str) -> Result<()> {
        validate_name(name)?;
        let dir = self.names();
        fs::create_dir_all(&dir).map_err(CliError::io("mkdir", &dir))?;
        let p = dir.join(name);
        match fs::OpenOptions::new().write(true).create_new(true).open(&p) {
            Ok(mut f) => f
                .write_all(id.as_bytes())
                .map_err(CliError::io("write", &p)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(CliError::NameInUse {
                name: name.into(),
                id: fs::read_to_string(&p).unwrap_or_default(),
            }),
            Err(e) => Err(CliError::io("create", &p)(e)),
        }
    }

    /// Give `name` back (only if `id` owns it).
    pub fn release_name(&self, name: &str, id: &str) {
        let p = self.names().join(name);
        if fs::read_to_string(&p).is_ok_and(|owner| owner == id) {
            let _ = fs::remove_file(p);
        }
    }

    /// The id of the container named by `query`: a name, a full id or a unique id prefix.
    pub fn resolve(&self, query: &str) -> Result<String> {
        if query.is_empty() {
            return Err(CliError::NoSuchContainer(query.into()));
        }
        if validate_name(query).is_ok() {
            if let Ok(id) = fs::read_to_string(self.names().join(query)) {
                if self.meta(&id).is_file() {
                    return Ok(id);
                }
            }
        }
        if !query.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CliError::NoSuchContainer(query.into()));
        }
        let matches: Vec<String> = self
            .list()?
            .into_iter()
            .map(|m| m.id)
            .filter(|id| id.starts_with(query))
            .collect();
        match matches.len() {
            0 => Err(CliError::NoSuchContainer(query.into())),
            1 => Ok(matches.into_iter().next().unwrap_or_default()),
            _ => Err(CliError::Ambiguous {
                prefix: query.into(),
                matches: matches
                    .iter()
                    .map(|m| m.get(..12).unwrap_or(m))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

/// Docker's rule for container names.
pub fn validate_name(name: &str) -> Result<()> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(CliError::BadName(name.into()))
    }
}

/// `n` random bytes from the kernel.
pub fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(CliError::io("read", "/dev/urandom"))?;
    Ok(buf)
}

/// A new container id: 64 lowercase hex digits.
pub fn new_id() -> Result<String> {
    Ok(random_bytes(32)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

const ADJECTIVES: &[&str] = &[
    "brave", "calm", "clever", "eager", "fervent", "gentle", "happy", "jolly", "keen", "lucid",
    "merry", "nimble", "quiet", "sharp", "steady", "sturdy", "swift", "tender", "vivid", "witty",
    "bold", "bright", "proud", "serene",
];
const NOUNS: &[&str] = &[
    "badger",
    "beaver",
    "castle",
    "drawbridge",
    "falcon",
    "gate",
    "heron",
    "keep",
    "lynx",
    "moat",
    "otter",
    "owl",
    "pike",
    "rampart",
    "raven",
    "salmon",
    "tower",
    "turret",
    "vole",
    "wall",
    "wren",
    "bastion",
    "barbican",
    "portcullis",
];

/// A generated name, `adjective_noun`, with a number appended after collisions.
pub fn generate_name(attempt: u32) -> Result<String> {
    let r = random_bytes(2)?;
    let a = ADJECTIVES[r[0] as usize % ADJECTIVES.len()];
    let n = NOUNS[r[1] as usize % NOUNS.len()];
    Ok(if attempt < 8 {
        format!("{a}_{n}")
    } else {
        format!("{a}_{n}{attempt}")
    })
}

/// True when `path` is absolute and has no `..` component.
pub fn is_clean_absolute(path: &Path) -> bool {
    path.is_absolute()
        && !path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, name: &str) -> Meta {
        Meta {
            id: id.into(),
            name: name.into(),
            rootfs: RootfsSource::Dir { path: "/x".into() },
            command: vec![],
            created: moat_container::state::now_rfc3339(),
            auto_remove: false,
            detached: false,
            network: "none".into(),
            ports: vec![],
            ip: None,
            exit_code: None,
            finished: None,
        }
    }

    #[test]
    fn names_are_unique_and_ids_match_by_prefix() {
        let d = tempfile::tempdir().unwrap();
        let p = Paths::new(d.path());
        for (id, name) in [("abc123", "one"), ("abd456", "two")] {
            fs::create_dir_all(p.container_dir(id)).unwrap();
            p.save(&meta(id, name)).unwrap();
            p.reserve_name(name, id).unwrap();
        }
        assert!(matches!(
            p.reserve_name("one", "x"),
            Err(CliError::NameInUse { .. })
        ));
        assert_eq!(p.resolve("one").unwrap(), "abc123");
        assert_eq!(p.resolve("abc").unwrap(), "abc123");
        assert!(matches!(p.resolve("ab"), Err(CliError::Ambiguous { .. })));
        assert!(matches!(
            p.resolve("ffff"),
            Err(CliError::NoSuchContainer(_))
        ));
        p.release_name("one", "abc123");
        p.reserve_name("one", "y").unwrap();
    }

    #[test]
    fn names_follow_docker_rules() {
        assert!(validate_name("web-1.a_b").is_ok());
        for bad in ["", "-x", "a/b", "../x", "a b"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(validate_name(&generate_name(0).unwrap()).is_ok());
        assert_eq!(new_id().unwrap().len(), 64);
    }
}
