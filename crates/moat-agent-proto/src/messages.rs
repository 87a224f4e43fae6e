//! The messages. Wire types only: the host and the agent translate them to and from their own
//! types at the boundary (a container spec travels as the bundle's `config.json` text, so this
//! crate does not depend on `oci-spec`).

use serde::{Deserialize, Serialize};

/// A request from the host, answered by one [`GuestMessage::Response`] with the same `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostMessage {
    pub id: u64,
    pub request: Request,
}

/// What the host asks of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Liveness check; answered with [`Reply::Pong`].
    Ping,
    /// Create a container from a bundle config and a root filesystem disk; its process waits
    /// until [`Request::Start`].
    Create {
        container_id: String,
        /// The bundle's `config.json`, verbatim (its bind mount sources are host paths: the
        /// agent replaces those listed in `shared` and refuses any other bind mount).
        config_json: String,
        rootfs: RootfsDisk,
        /// Give the init a stdin pipe fed by [`Request::Stdin`] (else /dev/null).
        #[serde(default)]
        stdin: bool,
        /// The bind mounts served from the host's shared directory ([`SHARE_TAG`]).
        #[serde(default)]
        shared: Vec<SharedMount>,
        /// Bind mounts of small regular files whose content the host sends along (a VM with
        /// no shared directory: a clone of a template). (Added within version 2.)
        #[serde(default)]
        files: Vec<InlineFile>,
    },
    /// Create a container like [`Request::Create`], its root filesystem a directory of the
    /// host's shared directory ([`SHARE_TAG`]) instead of a disk: what a pod VM uses, where the
    /// host adds each container's rootfs to the running VM's share. (Added within version 2: an
    /// agent without it answers `Malformed`.)
    CreateShared {
        container_id: String,
        /// As in [`Request::Create`].
        config_json: String,
        rootfs: SharedRootfs,
        #[serde(default)]
        stdin: bool,
        #[serde(default)]
        shared: Vec<SharedMount>,
    },
    /// Start the process of a created container.
    Start { container_id: String },
    /// Run another process in a running container (`process_json` is an OCI `process` object).
    Exec {
        container_id: String,
        exec_id: String,
        process_json: String,
        /// Give the process a stdin pipe fed by [`Request::Stdin`] (else /dev/null).
        #[serde(default)]
        stdin: bool,
    },
    /// Bytes for the stdin of the init (`exec_id: None`) or of an exec'd process. Answered once
    /// the bytes are in the process's pipe, so a host that waits for the answer before sending
    /// more never makes the agent buffer more than one chunk.
    Stdin {
        container_id: String,
        exec_id: Option<String>,
        data: Vec<u8>,
    },
    /// Close that stdin (after what was sent): the process reads EOF.
    CloseStdin {
        container_id: String,
        exec_id: Option<String>,
    },
    /// Freeze every process of the container (its cgroup in the guest).
    Pause { container_id: String },
    /// Thaw a paused container.
    Resume { container_id: String },
    /// Resource usage of the container's cgroup; answered with [`Reply::Stats`].
    Stats { container_id: String },
    /// The container's processes; answered with [`Reply::Processes`].
    Processes { container_id: String },
    /// Send `signal` to the container's init (or to an exec'd process, or with `all` to every
    /// process of the container).
    Kill {
        container_id: String,
        exec_id: Option<String>,
        signal: i32,
        all: bool,
    },
    /// Delete a stopped container (or any, with `force`), unmounting its root filesystem.
    Delete { container_id: String, force: bool },
    /// End the sandbox: kill every container and power the VM off.
    Shutdown,
    /// Configure the guest's network like the host network namespace the VM joined: each
    /// interface (found by its MAC, which the host gave the VM's NIC) gets its name, MTU and
    /// addresses and is brought up, then the routes are added in order. `lo` is always brought
    /// up. (Added within version 2: an agent without it answers `Malformed`.)
    Network {
        interfaces: Vec<NetInterface>,
        routes: Vec<NetRoute>,
    },
    /// To the agent of a template VM (booted with [`crate::TEMPLATE_FLAG`]), just before the host
    /// saves it: drop the guest's caches so that clones share as little stale memory as
    /// possible, and from now on treat a closed port 0 as normal (the host goes away while the
    /// VM is saved). (Added within version 2.)
    PrepareTemplate,
    /// The first request to a clone resumed from a template: make this guest unique before any
    /// container process runs (Firecracker's guidance for restored snapshots). The agent mixes
    /// `entropy` into the kernel's pool and forces a CRNG reseed, sets the wall clock, the
    /// hostname and /etc/machine-id, gives each NIC its MAC, and takes up the sandbox mode the
    /// kernel command line of a cold boot would have given. Refused by an agent that was not
    /// booted as a template. (Added within version 2.)
    Restored(Restore),
    /// Set the window size of the terminal of the init (`exec_id: None`) or of an exec'd process
    /// (`TIOCSWINSZ` on the pty master in the guest; the kernel signals its foreground process
    /// group). A process has a terminal when its OCI process says `terminal: true`: the agent
    /// then opens a pty in the container, its output comes as [`Stream::Stdout`] and
    /// [`Request::Stdin`] writes to it. (Added within version 2: an agent without it answers
    /// `Malformed`.)
    Resize {
        container_id: String,
        exec_id: Option<String>,
        width: u16,
        height: u16,
    },
    /// From now on, send the output and exit of the init (`exec_id: None`) or of an exec'd
    /// process to this connection (a host relay that outlives the command that created the
    /// process); a later [`Request::Start`] does not take them back. (Added within version 2.)
    Attach {
        container_id: String,
        exec_id: Option<String>,
    },
    /// Give the pod's namespaces in the guest (those its containers share with the agent: UTS,
    /// IPC, network) the sandbox's settings: the hostname, then the sysctls. A sysctl that no
    /// namespace of the pod holds (one of the guest kernel's globals) is refused, as runc
    /// refuses it on a host. (Added within version 2: an agent without it answers `Malformed`.)
    Pod(PodSettings),
    /// Open a TCP connection to `127.0.0.1:port` in the guest's network namespace (the pod's)
    /// and carry it as a process of key ([`FORWARD_ID`], `stream`): what it receives comes as
    /// `Output` (stdout), `Stdin` writes to it, `CloseStdin` shuts its sending side, and
    /// `Exited` (code 0) follows its end of stream. Port forwarding of a pod VM (`kubectl
    /// port-forward`). (Added within version 2: an agent without it answers `Malformed`.)
    Dial { stream: String, port: u16 },
}

/// The container id of the connections [`Request::Dial`] opens (no container can have it: a
/// container id has no `/`).
pub const FORWARD_ID: &str = "/forward";

/// The settings of a pod sandbox that the guest applies ([`Request::Pod`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSettings {
    /// The sandbox spec's `hostname` (none: the guest keeps its own).
    pub hostname: Option<String>,
    /// The sandbox spec's `linux.sysctl`, e.g. `("net.ipv4.ip_forward", "1")`.
    pub sysctls: Vec<(String, String)>,
}

/// What makes a clone of a template one guest of its own ([`Request::Restored`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restore {
    /// Random bytes from the host (at least 32).
    pub entropy: Vec<u8>,
    /// The host's CLOCK_REALTIME when the request was sent, in nanoseconds since the epoch.
    pub realtime_ns: u64,
    pub hostname: String,
    /// 32 lowercase hex digits.
    pub machine_id: String,
    /// `(MAC the template gave the NIC, MAC it gets now)`, both `aa:bb:cc:dd:ee:ff`.
    pub macs: Vec<(String, String)>,
    /// As [`crate::SINGLE_SANDBOX_FLAG`] on a cold boot's command line.
    pub single: bool,
}

/// A network interface of the guest, copied from one of the host network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInterface {
    /// The name it gets in the guest (the host interface's, e.g. `eth0`): at most 15 bytes.
    pub name: String,
    /// `aa:bb:cc:dd:ee:ff`: the MAC of the host interface, also given to the VM's NIC.
    pub mac: String,
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
}

/// An address with its prefix length, e.g. `10.88.87.2`/24 or `fd00::2`/64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpNet {
    pub address: String,
    pub prefix_len: u8,
}

/// A route of the guest's main table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRoute {
    /// `None`: the default route (of `gateway`'s family, IPv4 when there is no gateway).
    pub destination: Option<IpNet>,
    pub gateway: Option<String>,
    /// The name of the interface (as in [`NetInterface::name`]).
    pub device: String,
}

/// The block device holding a container's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsDisk {
    /// The virtio-blk serial the host gave the disk; the agent finds it in /sys/block/*/serial.
    pub serial: String,
    /// Filesystem type, e.g. `ext4`.
    pub fstype: String,
    /// Mount read-only (the host also attaches the disk read-only).
    pub readonly: bool,
    /// The container writes to an overlay on the (read-only) disk, its upper layer a tmpfs of
    /// the guest: the disk is an image shared by many containers. (Added within version 2.)
    #[serde(default)]
    pub overlay: bool,
}

/// A bind mount of the container's config whose source is a small regular file the host sent
/// (copied, as Kata does for /etc/hosts and the like when nothing is shared).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InlineFile {
    /// Index of the mount in the config's `mounts` array.
    pub index: u32,
    pub content: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
    pub readonly: bool,
}

/// The largest file the host sends inline ([`InlineFile`]).
pub const INLINE_FILE_MAX: u64 = 64 * 1024;

/// A container root filesystem that the host placed in the shared directory ([`SHARE_TAG`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedRootfs {
    /// Where it is inside the shared directory: relative, normal components only.
    pub path: String,
    /// The host shares it read-only (the guest also mounts it read-only).
    pub readonly: bool,
}

/// The virtiofs tag of the directory the host shares with the guest (one per VM).
pub const SHARE_TAG: &str = "moatfs";

/// A bind mount of the container's config whose source the host placed in the shared directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedMount {
    /// Index of the mount in the config's `mounts` array.
    pub index: u32,
    /// Where the source is inside the shared directory: relative, normal components only.
    pub path: String,
    /// The host shares it read-only (the guest also mounts it read-only).
    pub readonly: bool,
}

/// A message from the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestMessage {
    /// First message of the agent once it serves requests.
    Ready {
        version: u32,
        /// The guest kernel's release (`uname -r`).
        kernel_release: String,
    },
    /// The answer to request `id` (0 when the request was too malformed to carry an id).
    Response {
        id: u64,
        result: Result<Reply, AgentError>,
    },
    /// Bytes a container process wrote to stdout or stderr.
    Output {
        container_id: String,
        exec_id: Option<String>,
        stream: Stream,
        data: Vec<u8>,
    },
    /// A container's init (or exec'd process) ended; sent after all its output.
    Exited {
        container_id: String,
        exec_id: Option<String>,
        status: ExitStatus,
    },
    /// The kernel's OOM killer killed a process of the container (its cgroup's `oom_kill`
    /// count grew). Sent to every connected host; before the `Exited` of a process it killed.
    /// (Added within version 2: a host without it fails to decode it, so an agent sends it only
    /// from the same build as the host's.)
    Oom { container_id: String },
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Pong,
    Done,
    /// The guest pid of the created container's init or of the exec'd process.
    Pid(i32),
    Stats(ContainerStats),
    Processes(Vec<GuestProcess>),
}

/// Resource usage of a container's cgroup in the guest (0: unknown or unlimited).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    pub cpu_usage_ns: u64,
    pub memory_usage_bytes: u64,
    pub memory_max_usage_bytes: u64,
    pub memory_limit_bytes: u64,
    pub pids_current: u64,
    pub pids_limit: u64,
}

/// One process of a container, as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestProcess {
    /// The pid in the guest's initial pid namespace.
    pub pid: i32,
    /// Its command line, arguments joined by spaces.
    pub command: String,
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl Request {
    /// What the request does, naming its container (and exec), for error messages.
    pub fn describe(&self) -> String {
        match self {
            Request::Ping => "ping".into(),
            Request::Create { container_id, .. } | Request::CreateShared { container_id, .. } => {
                format!("create {container_id}")
            }
            Request::Start { container_id } => format!("start {container_id}"),
            Request::Exec {
                container_id,
                exec_id,
                ..
            } => format!("exec {exec_id} in {container_id}"),
            Request::Kill { container_id, .. } => format!("kill {container_id}"),
            Request::Stdin { container_id, .. } => format!("stdin of {container_id}"),
            Request::CloseStdin { container_id, .. } => format!("close stdin of {container_id}"),
            Request::Pause { container_id } => format!("pause {container_id}"),
            Request::Resume { container_id } => format!("resume {container_id}"),
            Request::Stats { container_id } => format!("stats of {container_id}"),
            Request::Processes { container_id } => format!("processes of {container_id}"),
            Request::Delete { container_id, .. } => format!("delete {container_id}"),
            Request::Shutdown => "shutdown".into(),
            Request::PrepareTemplate => "prepare the template".into(),
            Request::Restored(_) => "make the clone unique".into(),
            Request::Network { interfaces, .. } => {
                let names: Vec<&str> = interfaces.iter().map(|i| i.name.as_str()).collect();
                format!("configure the network ({})", names.join(", "))
            }
            Request::Resize {
                container_id,
                exec_id,
                width,
                height,
            } => match exec_id {
                Some(e) => {
                    format!("resize the terminal of exec {e} in {container_id} to {width}x{height}")
                }
                None => format!("resize the terminal of {container_id} to {width}x{height}"),
            },
            Request::Attach {
                container_id,
                exec_id,
            } => match exec_id {
                Some(e) => format!("attach to exec {e} in {container_id}"),
                None => format!("attach to {container_id}"),
            },
            Request::Pod(_) => "apply the pod's hostname and sysctls".into(),
            Request::Dial { port, .. } => format!("connect to port {port} in the guest"),
        }
    }
}

impl ExitStatus {
    /// The shell convention: the code, or 128+N when killed by signal N.
    pub fn as_shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

/// A failed request: a typed code the host can act on and a message naming what failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct AgentError {
    pub code: ErrorCode,
    pub message: String,
}

/// Closed set of failure classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame could not be decoded.
    Malformed,
    /// The request is well-formed but its arguments are not acceptable.
    InvalidArgument,
    NotFound,
    AlreadyExists,
    /// Finding or mounting the root filesystem disk failed.
    Rootfs,
    /// The container backend refused or failed.
    Container,
    Io,
    /// The request does not apply now (e.g. a second stdin chunk before the first was taken).
    Busy,
}
