//! The VM's network attachment, Kata's model: the VM joins the network namespace its container
//! was given. For every interface of that namespace except `lo` (the veth that CNI, podman or the
//! CRI plugin made), [`attach`] creates a tap device in the same namespace and joins the two with
//! tc: an `ingress` qdisc on each and a `u32` match-all filter whose action is `mirred egress
//! redirect` to the other, so every frame that reaches the veth goes to the guest and every frame
//! the guest sends leaves by the veth. QEMU runs inside that namespace ([`in_netns`]) with a
//! `virtio-net-device` per tap carrying the veth's MAC, and the agent gives the guest the veth's
//! addresses, routes and MTU ([`Attachment::interfaces`], [`Attachment::routes`]). A VM without
//! a namespace of its own gets a fresh empty one: nothing of the host's network stack is reachable
//! from the guest or from QEMU, ever.
//!
//! Why `ip` and `tc` (iproute2) and not a netlink crate: `rtnetlink` is async (a tokio runtime in
//! the synchronous create path, which DESIGN.md keeps lean), and `netlink-packet-route`'s tc
//! support would have us hand-assemble the u32 selector and mirred action; iproute2 is present
//! wherever CNI runs, the commands are run from a thread that entered the namespace (so they act
//! there and nowhere else), and each failure names the command. Cost: ~10 commands, a few ms each,
//! next to a boot of seconds.
//!
//! Teardown ([`detach`]) deletes the taps (their qdiscs and filters go with them) and the ingress
//! qdisc on each veth (with its filter); it works from the recorded names alone, after QEMU was
//! killed, and is a no-op when the namespace is already gone.
//!
//! What it must never do: touch an interface outside the given namespace (every command runs in
//! a thread that `setns`ed into it), or leave a tap or qdisc behind when attaching fails half-way.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use moat_agent_proto::{IpNet, NetInterface, NetRoute};
use serde_json::Value;

use crate::error::{Result, VmError};

/// The suffix of moat's tap devices (`tap0_moat`, ...), as Kata names its `tap0_kata`.
pub const TAP_SUFFIX: &str = "_moat";

/// One interface of the namespace joined to its tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The interface of the namespace (e.g. `eth0`).
    pub interface: String,
    /// The tap joined to it.
    pub tap: String,
    pub mac: String,
}

/// What [`attach`] made and what the guest must be told.
#[derive(Debug, Clone, Default)]
pub struct Attachment {
    pub netns: PathBuf,
    pub links: Vec<Link>,
    /// The guest's interfaces: one per link, in link order.
    pub interfaces: Vec<NetInterface>,
    pub routes: Vec<NetRoute>,
}

/// A NIC of the VM: QEMU opens `tap` (inside the namespace it runs in) and gives the guest
/// `mac`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub tap: String,
    pub mac: String,
}

impl Attachment {
    pub fn nics(&self) -> Vec<Nic> {
        self.links
            .iter()
            .map(|l| Nic {
                tap: l.tap.clone(),
                mac: l.mac.clone(),
            })
            .collect()
    }
}

/// Run `f` on a thread inside the network namespace at `netns` (`None`: a new, empty one that
/// lives as long as something uses it). Processes spawned by `f` start in that namespace.
pub fn in_netns<T: Send>(netns: Option<&Path>, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            match netns {
                Some(p) => {
                    let fd = std::fs::File::open(p).map_err(VmError::io("open netns", p))?;
                    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                        |errno| VmError::Net {
                            what: format!("enter the network namespace {}", p.display()),
                            reason: errno.to_string(),
                        },
                    )?;
                }
                None => {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|errno| {
                        VmError::Net {
                            what: "create a network namespace for the VM".into(),
                            reason: errno.to_string(),
                        }
                    })?
                }
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(VmError::Net {
                what: "network namespace thread".into(),
                reason: "panicked".into(),
            })
        })
    })
}

/// Run `prog args` (in the calling thread's namespace) and return its stdout; a failure names
/// the command, its status and its stderr.
pub fn run(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| VmError::Spawn {
            program: prog.into(),
            source,
        })?;
    if !out.status.success() {
        return Err(VmError::Command {
            command: format!("{prog} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn json(prog: &str, args: &[&str]) -> Result<Vec<Value>> {
    let text = run(prog, args)?;
    if text.trim().is_empty() {
        return Ok(vec![]);
    }
    serde_json::from_str(&text).map_err(|e| VmError::Command {
        command: format!("{prog} {}", args.join(" ")),
        status: "0".into(),
        stderr: format!("unexpected output ({e}): {text}"),
    })
}

/// Join every interface of the namespace at `netns` (except `lo` and non-Ethernet devices such
/// as the `tunl0`/`sit0` fallback devices) to a new tap; read the addresses and routes the guest
/// must get. On failure nothing it made is left.
pub fn attach(netns: &Path) -> Result<Attachment> {
    in_netns(Some(netns), || {
        let mut att = Attachment {
            netns: netns.to_path_buf(),
            ..Default::default()
        };
        let links = json("ip", &["-j", "link", "show"])?;
        for l in &links {
            let name = l["ifname"].as_str().unwrap_or_default();
            if name.ends_with(TAP_SUFFIX) {
                return Err(VmError::Net {
                    what: format!("attach to {}", netns.display()),
                    reason: format!("{name} exists: another VM uses this network namespace"),
                });
            }
        }
        let ethers: Vec<&Value> = links.iter().filter(|l| l["link_type"] == "ether").collect();
        for (i, l) in ethers.iter().enumerate() {
            let name = l["ifname"].as_str().unwrap_or_default().to_string();
            let mac = l["address"].as_str().unwrap_or_default().to_string();
            let mtu = l["mtu"].as_u64().unwrap_or(1500) as u32;
            let addrs = json("ip", &["-j", "addr", "show", "dev", &name])?;
            let addresses = addrs
                .first()
                .and_then(|a| a["addr_info"].as_array())
                .into_iter()
                .flatten()
                .filter(|a| a["scope"] == "global")
                .filter_map(|a| {
                    Some(IpNet {
                        address: a["local"].as_str()?.to_string(),
                        prefix_len: a["prefixlen"].as_u64()? as u8,
                    })
                })
                .collect();
            let tap = format!("tap{i}{TAP_SUFFIX}");
            let link = Link {
                interface: name.clone(),
                tap,
                mac: mac.clone(),
            };
            if mac.is_empty() {
                undo(&att.links);
                return Err(VmError::Net {
                    what: format!("attach to {name} in {}", netns.display()),
                    reason: "it has no MAC address".into(),
                });
            }
            if let Err(e) = join(&link, mtu) {
                undo(&att.links);
                return Err(e);
            }
            att.links.push(link);
            att.interfaces.push(NetInterface {
                name,
                mac,
                mtu,
                addresses,
            });
        }
        let names: Vec<&str> = att.interfaces.iter().map(|i| i.name.as_str()).collect();
        for family in ["-4", "-6"] {
            let routes = match json("ip", &["-j", family, "route", "show", "table", "main"]) {
                Ok(r) => r,
                Err(e) => {
                    undo(&att.links);
                    return Err(e);
                }
            };
            att.routes
                .extend(routes.iter().filter_map(|r| route(r, &names)));
        }
        Ok(att)
    })
}

/// The route the guest needs for `r` (one of `ip -j route`), if any: the kernel's own routes
/// (of an address's subnet, link-local, multicast) come back by themselves in the guest.
fn route(r: &Value, devices: &[&str]) -> Option<NetRoute> {
    if r["protocol"] == "kernel" || r.get("type").is_some_and(|t| t != "unicast") {
        return None;
    }
    let dev = r["dev"].as_str()?;
    if !devices.contains(&dev) {
        return None;
    }
    let dst = r["dst"].as_str()?;
    let destination = if dst == "default" {
        None
    } else {
        let (a, p) = match dst.split_once('/') {
            Some((a, p)) => (a, p.parse().ok()?),
            None => (dst, if dst.contains(':') { 128 } else { 32 }),
        };
        if a.starts_with("fe80:") || a.starts_with("ff") {
            return None;
        }
        Some(IpNet {
            address: a.into(),
            prefix_len: p,
        })
    };
    Some(NetRoute {
        destination,
        gateway: r["gateway"].as_str().map(String::from),
        device: dev.into(),
    })
}

/// Make `link.tap` and redirect both ways between it and `link.interface`; on failure, remove
/// what it made (and only that: an ingress qdisc it could not add is not its own).
fn join(link: &Link, mtu: u32) -> Result<()> {
    let (ifc, tap) = (link.interface.as_str(), link.tap.as_str());
    let mtu = mtu.to_string();
    run("ip", &["tuntap", "add", "dev", tap, "mode", "tap"])?;
    let first = run("ip", &["link", "set", "dev", tap, "mtu", &mtu, "up"])
        .and_then(|_| run("tc", &["qdisc", "add", "dev", ifc, "ingress"]));
    if let Err(e) = first {
        let _ = run("ip", &["link", "del", "dev", tap]);
        return Err(e);
    }
    let redirect = |from: &str, to: &str| {
        run(
            "tc",
            &[
                "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match",
                "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
            ],
        )
    };
    let rest = redirect(ifc, tap)
        .and_then(|_| run("tc", &["qdisc", "add", "dev", tap, "ingress"]))
        .and_then(|_| redirect(tap, ifc));
    if let Err(e) = rest {
        undo(std::slice::from_ref(link));
        return Err(e);
    }
    Ok(())
}

/// Remove the taps (with their qdiscs) and the interfaces' ingress qdiscs (with their filters),
/// in the calling thread's namespace; what is already gone is fine.
fn undo(links: &[Link]) -> Vec<VmError> {
    let mut errs = vec![];
    for l in links {
        for args in [
            &["link", "del", "dev", l.tap.as_str()][..],
            &["qdisc", "del", "dev", l.interface.as_str(), "ingress"][..],
        ] {
            let prog = if args[0] == "link" { "ip" } else { "tc" };
            match run(prog, args) {
                Ok(_) => {}
                Err(VmError::Command { ref stderr, .. })
                    if stderr.contains("Cannot find device")
                        // Deleted between the lookup and the delete (a concurrent teardown).
                        || stderr.contains("No such device")
                        || stderr.contains("does not exist")
                        || stderr.contains("Invalid handle")
                        || stderr.contains("Cannot find specified qdisc")
                        || stderr.contains("Cannot delete qdisc with handle of zero") => {}
                Err(e) => errs.push(e),
            }
        }
    }
    errs
}

/// Undo [`attach`] from the recorded links: delete the taps and the ingress qdiscs. A namespace
/// that is gone took all of it along.
pub fn detach(netns: &Path, links: &[Link]) -> Result<()> {
    if links.is_empty() || !netns.exists() {
        return Ok(());
    }
    in_netns(Some(netns), || match undo(links).into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_routes_the_guest_cannot_derive_are_copied() {
        let routes: Value = serde_json::from_str(
            r#"[{"dst":"default","gateway":"10.231.5.1","dev":"eth0"},
                {"dst":"10.231.5.0/24","dev":"eth0","protocol":"kernel","scope":"link"},
                {"dst":"192.168.9.0/24","dev":"eth0","scope":"link"},
                {"dst":"10.9.0.0/16","dev":"other","gateway":"10.231.5.9"},
                {"dst":"10.7.0.0/16","type":"unreachable","dev":"lo"}]"#,
        )
        .unwrap();
        let got: Vec<NetRoute> = routes
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| route(r, &["eth0"]))
            .collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].destination, None);
        assert_eq!(got[0].gateway.as_deref(), Some("10.231.5.1"));
        assert_eq!(
            got[1].destination,
            Some(IpNet {
                address: "192.168.9.0".into(),
                prefix_len: 24
            })
        );
    }
}
