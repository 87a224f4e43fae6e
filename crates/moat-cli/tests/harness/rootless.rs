//! The rootless `moat` tests' users and stores: unprivileged users created once (with and
//! without /etc/subuid and /etc/subgid ranges, as crates/moat-runtime/tests/rootless.rs does),
//! a private store per test ([`Session`], `XDG_DATA_HOME` in the user's home, every container
//! removed on drop), the "nothing left" check over the user's processes, and a `/dev/net/tun`
//! the user may open while a test needs it ([`Tun`]).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const WITH_RANGES: &str = "moat-rootless";
pub const WITHOUT_RANGES: &str = "moat-rootless-nosub";
pub const BIN: &str = env!("CARGO_BIN_EXE_moat");

/// An unprivileged test user.
pub struct User {
    pub name: &'static str,
    pub uid: u32,
    pub home: PathBuf,
    pub xdg: PathBuf,
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn sh(cmd: &mut Command, what: &str) -> String {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{what}: {}", text(&o.stderr));
    text(&o.stdout)
}

/// The subordinate ranges of `name` in `file` (/etc/subuid or /etc/subgid).
pub fn ranges(file: &str, name: &str) -> Vec<(u64, u64)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() == 3 && f[0] == name).then(|| (f[1].parse().unwrap(), f[2].parse().unwrap()))
        })
        .collect()
}

/// Create the user once (idempotent across runs), with or without subordinate id ranges.
pub fn user(name: &'static str) -> &'static User {
    static WITH: OnceLock<User> = OnceLock::new();
    static WITHOUT: OnceLock<User> = OnceLock::new();
    static EDIT: Mutex<()> = Mutex::new(());
    let cell = if name == WITH_RANGES { &WITH } else { &WITHOUT };
    cell.get_or_init(|| {
        let _edit = EDIT.lock().unwrap();
        if !Command::new("id")
            .arg(name)
            .output()
            .unwrap()
            .status
            .success()
        {
            sh(
                Command::new("useradd").args(["-m", "-s", "/bin/sh", name]),
                "useradd",
            );
        }
        let uid: u32 = sh(Command::new("id").args(["-u", name]), "id")
            .trim()
            .parse()
            .unwrap();
        for (file, flag) in [
            ("/etc/subuid", "--add-subuids"),
            ("/etc/subgid", "--add-subgids"),
        ] {
            let mine = !ranges(file, name).is_empty();
            if name == WITH_RANGES && !mine {
                sh(
                    Command::new("usermod").args([flag, "300000-365535", name]),
                    "usermod",
                );
            } else if name == WITHOUT_RANGES && mine {
                // Debian's useradd gives every new user a range: take it away.
                let kept: String = std::fs::read_to_string(file)
                    .unwrap()
                    .lines()
                    .filter(|l| !l.starts_with(&format!("{name}:")))
                    .map(|l| format!("{l}\n"))
                    .collect();
                std::fs::write(file, kept).unwrap();
            }
        }
        let xdg = PathBuf::from(format!("/run/user/{uid}"));
        std::fs::create_dir_all(&xdg).unwrap();
        std::os::unix::fs::chown(&xdg, Some(uid), Some(uid)).unwrap();
        std::fs::set_permissions(&xdg, PermissionsExt::from_mode(0o700)).unwrap();
        User {
            name,
            uid,
            home: PathBuf::from(format!("/home/{name}")),
            xdg,
        }
    })
}

/// A private store of one test (`XDG_DATA_HOME` in the user's home); its drop removes every
/// container left in it, then the store.
pub struct Session {
    pub user: &'static User,
    pub data: tempfile::TempDir,
}

impl Session {
    pub fn new(name: &'static str) -> Option<Session> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to create the test users");
            return None;
        }
        for bin in ["newuidmap", "newgidmap", "runuser"] {
            if !Path::new("/usr/bin").join(bin).exists() && !Path::new("/sbin").join(bin).exists() {
                eprintln!("skipped: {bin} is not installed (apt-get install uidmap util-linux)");
                return None;
            }
        }
        let u = user(name);
        let data = tempfile::Builder::new()
            .prefix("moat-rl-")
            .tempdir_in(&u.home)
            .unwrap();
        std::os::unix::fs::chown(data.path(), Some(u.uid), Some(u.uid)).unwrap();
        Some(Session { user: u, data })
    }

    /// The store: `$XDG_DATA_HOME/moat`.
    pub fn store(&self) -> PathBuf {
        self.data.path().join("moat")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let u = self.user;
        let mut c = Command::new("runuser");
        c.args(["-u", u.name, "--", "timeout", "120", "env"])
            .arg(format!("XDG_RUNTIME_DIR={}", u.xdg.display()))
            .arg(format!("XDG_DATA_HOME={}", self.data.path().display()))
            .arg(format!("HOME={}", u.home.display()))
            .arg(format!("USER={}", u.name))
            .arg("PATH=/usr/bin:/bin")
            .arg(BIN)
            .args(args)
            .stdin(std::process::Stdio::null());
        c
    }

    pub fn cmd(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        super::Moat::require_ok(args, self.cmd(args))
    }

    /// Nothing of container `id` is left: no container directory, runtime state, process, or
    /// mount in any of the user's processes.
    pub fn assert_gone(&self, id: &str) {
        assert!(
            !self.store().join("containers").join(id).exists(),
            "container dir left"
        );
        assert!(
            !self.user.xdg.join("moat").join(id).exists(),
            "runtime state left"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = processes_of(self.user, id);
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "processes left: {left:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let ids = self.cmd(&["ps", "-a", "-q"]);
        for id in text(&ids.stdout).split_whitespace() {
            let _ = self.cmd(&["rm", "-f", id]);
        }
    }
}

/// Processes (of the user, or of its subordinate ids) whose command line, working directory or
/// mounts mention `needle`.
pub fn processes_of(u: &User, needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(md) = std::fs::metadata(e.path()) else {
            continue;
        };
        if md.uid() != u.uid && md.uid() < 100_000 {
            continue;
        }
        let cmdline = text(&std::fs::read(e.path().join("cmdline")).unwrap_or_default());
        let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
        let mounts = std::fs::read_to_string(e.path().join("mountinfo")).unwrap_or_default();
        if cmdline.contains(needle)
            || cwd.to_string_lossy().contains(needle)
            || mounts.contains(needle)
        {
            out.push(format!("{pid}: {}", cmdline.replace('\0', " ")));
        }
    }
    out
}

/// `/dev/net/tun` usable by everybody while held (Debian's default mode 0666; this development
/// machine has 0600): the first holder widens the mode, the last one restores it.
pub struct Tun;

pub static TUN: Mutex<(u32, Option<u32>)> = Mutex::new((0, None));

impl Tun {
    pub fn open() -> Tun {
        let mut g = TUN.lock().unwrap();
        if g.0 == 0 {
            let mode = std::fs::metadata("/dev/net/tun").unwrap().mode() & 0o7777;
            if mode & 0o006 != 0o006 {
                std::fs::set_permissions("/dev/net/tun", PermissionsExt::from_mode(0o666)).unwrap();
                g.1 = Some(mode);
            }
        }
        g.0 += 1;
        Tun
    }
}

impl Drop for Tun {
    fn drop(&mut self) {
        let mut g = TUN.lock().unwrap_or_else(|e| e.into_inner());
        g.0 -= 1;
        if g.0 == 0 {
            if let Some(mode) = g.1.take() {
                let _ = std::fs::set_permissions("/dev/net/tun", PermissionsExt::from_mode(mode));
            }
        }
    }
}

pub fn have_slirp() -> bool {
    if !Path::new("/usr/bin/slirp4netns").exists() {
        eprintln!("skipped: slirp4netns is not installed (apt-get install slirp4netns)");
        return false;
    }
    true
}

/// Runs its closure when dropped (cleanup that also runs when an assertion fails).
pub struct Cleanup<F: FnMut()>(pub F);

impl<F: FnMut()> Drop for Cleanup<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}
