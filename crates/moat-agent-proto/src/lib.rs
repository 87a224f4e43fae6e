//! `moat-agent-proto`: the wire protocol between moat on the host and `moat-agent`, the PID 1 of
//! a moat guest VM. It owns the typed messages ([`HostMessage`], [`GuestMessage`]) and their
//! framing (a little-endian `u32` length, then that many bytes of JSON), and nothing else.
//!
//! The guest announces itself with [`GuestMessage::Ready`] carrying [`PROTOCOL_VERSION`]; the
//! host refuses a guest with another version. Every request carries an id that its
//! [`GuestMessage::Response`] repeats; output and exit events are unsolicited.
//!
//! Version 2 added stdin forwarding (`Stdin`, `CloseStdin`, the `stdin` flags of `Create` and
//! `Exec`), bind mounts shared over virtiofs (`Create.shared`, [`SHARE_TAG`]) and the resource
//! requests (`Pause`, `Resume`, `Stats`, `Processes`); later, additively, `CreateShared` (a
//! container whose rootfs is in the shared directory: the containers of a pod VM), the
//! unsolicited [`GuestMessage::Oom`] and `Network` (the guest's interfaces, addresses and routes,
//! copied from the host network namespace the VM joined) and `Pod` (the sandbox's hostname and
//! sysctls, applied in the pod's namespaces in the guest).
//!
//! What it must never do: perform I/O, or panic, allocate without bound or loop on hostile bytes.
//! Both sides treat the other as untrusted, so [`Decoder`] turns every malformed frame into a
//! [`DecodeError`] and keeps the stream in sync where the framing allows it.
#![forbid(unsafe_code)]

mod frame;
mod messages;

pub use frame::{encode, DecodeError, Decoder, EncodeError, HEADER_LEN, MAX_FRAME};
pub use messages::*;

/// The version of this protocol; bumped on any incompatible change of a message.
pub const PROTOCOL_VERSION: u32 = 2;

/// The `name=` of the virtio-serial port the agent listens on (the first of them).
pub const AGENT_PORT_NAME: &str = "io.moat.agent.0";

/// On the guest kernel command line, `moat.agent_ports=N`: the host gave the agent N ports
/// (named by [`agent_port_name`]), so that N host commands can be attached at once. One without.
pub const AGENT_PORTS_FLAG: &str = "moat.agent_ports";

/// The `name=` of agent port `i` (port 0 is [`AGENT_PORT_NAME`]).
pub fn agent_port_name(i: u32) -> String {
    format!("io.moat.agent.{i}")
}

/// The `name=` of the virtio-serial port that carries the shared directory of a VM resumed from
/// a template: raw FUSE messages, relayed by the agent between `/dev/fuse` and the port, served by
/// the host's `moat-vmfs` (a clone cannot have virtiofs: see docs/vm-templates.md). A VM booted
/// cold shares its directory over virtiofs instead and has no such port.
pub const FS_PORT_NAME: &str = "io.moat.fs";

/// On the guest kernel command line: a one-container sandbox. The host may disconnect from the
/// agent port and come back (each runtime command is one connection; the agent sends `Ready` on
/// every new one), and the VM powers off once the container's init has exited. Without it, the
/// host closing the port ends the sandbox.
pub const SINGLE_SANDBOX_FLAG: &str = "moat.sandbox=single";

/// On the guest kernel command line: a template VM. The agent waits for
/// [`Request::PrepareTemplate`] before the host saves the VM, and each clone resumed from the
/// saved state is made unique by [`Request::Restored`] before anything else runs in it.
pub const TEMPLATE_FLAG: &str = "moat.template";

/// In a container config sent to the agent: the path of the pid namespace that the containers of
/// a pod share (CRI's `POD` pid mode; the guest has no pause process, so the agent keeps a
/// process of its own as that namespace's init and binds its namespace here on first use).
pub const POD_PID_NS: &str = "/run/moat-agent/pod-pid-ns";
