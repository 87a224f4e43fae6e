//! The guest's network, configured as the host asks (`Request::Network`): each interface is found
//! by the MAC the host gave the VM's NIC, renamed to the host interface's name, given its MTU and
//! addresses and brought up; then the routes are added; `lo` is always brought up.
//!
//! The agent speaks rtnetlink itself (a few fixed-layout messages: `RTM_NEWLINK`,
//! `RTM_NEWADDR`, `RTM_NEWROUTE`, each acknowledged) over a `NETLINK_ROUTE` socket from nix:
//! the initramfs holds no `ip`, and these four message shapes are smaller than a netlink crate.
//!
//! What it must never do: touch an interface the host did not name (other than `lo`), or accept
//! a malformed address, name or MAC (each is parsed before anything changes).

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use moat_agent_proto::{IpNet, NetInterface, NetRoute};
use nix::sys::socket::{
    bind, recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};

use crate::error::{AgentFailure, Result};

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const IFF_UP: u32 = 0x1;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

fn invalid(what: String) -> AgentFailure {
    AgentFailure::Invalid(what)
}

/// Configure the interfaces and routes, and bring `lo` up.
pub fn configure(interfaces: &[NetInterface], routes: &[NetRoute]) -> Result<()> {
    // Parse everything first: nothing changes on bad input.
    let mut plan = Vec::new();
    for i in interfaces {
        if i.name.is_empty() || i.name.len() > 15 || i.name.contains(['/', ' ', '\0']) {
            return Err(invalid(format!("interface name {:?}", i.name)));
        }
        if !(68..=65535).contains(&i.mtu) {
            return Err(invalid(format!("mtu {} of {}", i.mtu, i.name)));
        }
        let mac = parse_mac(&i.mac).ok_or_else(|| invalid(format!("mac {:?}", i.mac)))?;
        let addrs = i
            .addresses
            .iter()
            .map(parse_net)
            .collect::<Result<Vec<_>>>()?;
        plan.push((i, mac, addrs));
    }
    let mut parsed_routes = Vec::new();
    for r in routes {
        let dst = r.destination.as_ref().map(parse_net).transpose()?;
        let gw = r
            .gateway
            .as_deref()
            .map(|g| {
                g.parse::<IpAddr>()
                    .map_err(|_| invalid(format!("gateway {g:?}")))
            })
            .transpose()?;
        if !interfaces.iter().any(|i| i.name == r.device) {
            return Err(invalid(format!("route via unknown device {:?}", r.device)));
        }
        parsed_routes.push((r, dst, gw));
    }
    let nl = Netlink::open()?;
    nl.link_up(ifindex("lo")?, None, None)?;
    for (i, mac, addrs) in plan {
        let current = find_by_mac(&mac)
            .ok_or_else(|| AgentFailure::NotFound(format!("a NIC with MAC {}", i.mac)))?;
        let index = ifindex(&current)?;
        let rename = (current != i.name).then_some(i.name.as_str());
        // Renaming needs the link down: it is (the guest never brought it up).
        nl.link_up(index, rename, Some(i.mtu))?;
        for (addr, prefix) in addrs {
            nl.add_addr(index, addr, prefix)
                .map_err(|e| context(e, &format!("add {addr}/{prefix} to {}", i.name)))?;
        }
    }
    // Routes without a gateway (on-link) first: gateways are reached through them.
    parsed_routes.sort_by_key(|(_, _, gw)| gw.is_some());
    for (r, dst, gw) in parsed_routes {
        let index = ifindex(&r.device)?;
        nl.add_route(index, dst, gw).map_err(|e| {
            let to = dst.map_or("default".to_string(), |(a, p)| format!("{a}/{p}"));
            context(e, &format!("add route {to} dev {}", r.device))
        })?;
    }
    Ok(())
}

fn context(e: AgentFailure, what: &str) -> AgentFailure {
    match e {
        AgentFailure::Sys { errno, .. } => AgentFailure::Sys {
            what: what.to_string(),
            errno,
        },
        e => e,
    }
}

fn parse_net(n: &IpNet) -> Result<(IpAddr, u8)> {
    let a: IpAddr = n
        .address
        .parse()
        .map_err(|_| invalid(format!("address {:?}", n.address)))?;
    let max = if a.is_ipv4() { 32 } else { 128 };
    if n.prefix_len > max {
        return Err(invalid(format!("prefix /{} of {a}", n.prefix_len)));
    }
    Ok((a, n.prefix_len))
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Give the NIC whose MAC is `from` the MAC `to` (a clone of a template has the template's MACs).
pub fn set_mac(from: &str, to: &str) -> Result<()> {
    let old = parse_mac(from).ok_or_else(|| invalid(format!("mac {from:?}")))?;
    let new = parse_mac(to).ok_or_else(|| invalid(format!("mac {to:?}")))?;
    let name = find_by_mac(&old)
        .ok_or_else(|| AgentFailure::NotFound(format!("a NIC with MAC {from}")))?;
    let index = ifindex(&name)?;
    let mut body = ifinfo(index, 0, 0);
    push_attr(&mut body, IFLA_ADDRESS, &new);
    Netlink::open()?.request(
        &format!("set the MAC of {name} to {to}"),
        RTM_NEWLINK,
        0,
        &body,
    )
}

/// The name of the interface whose MAC is `mac`.
fn find_by_mac(mac: &[u8; 6]) -> Option<String> {
    let want = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    // The NIC appears once virtio_net has probed it (loaded at boot, before serving).
    for _ in 0..250 {
        if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
            for e in rd.flatten() {
                let a = std::fs::read_to_string(e.path().join("address")).unwrap_or_default();
                if a.trim() == want {
                    return e.file_name().into_string().ok();
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

fn ifindex(name: &str) -> Result<u32> {
    let p = format!("/sys/class/net/{name}/ifindex");
    let s = std::fs::read_to_string(&p).map_err(|e| AgentFailure::io("read", &p, e))?;
    s.trim().parse().map_err(|_| invalid(format!("{p}: {s:?}")))
}

/// A `NETLINK_ROUTE` socket; every request is acknowledged before the next.
struct Netlink {
    fd: OwnedFd,
    seq: std::cell::Cell<u32>,
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn ip_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn family(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        libc_af::INET
    } else {
        libc_af::INET6
    }
}

mod libc_af {
    pub const INET: u8 = 2;
    pub const INET6: u8 = 10;
}

impl Netlink {
    fn open() -> Result<Netlink> {
        let sys = |what: &str| {
            let what = what.to_string();
            move |errno| AgentFailure::Sys { what, errno }
        };
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(sys("open a netlink socket"))?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(sys("bind the netlink socket"))?;
        Ok(Netlink {
            fd,
            seq: std::cell::Cell::new(1),
        })
    }

    /// Send message `kind` with body `body` and wait for its acknowledgement.
    fn request(&self, what: &str, kind: u16, flags: u16, body: &[u8]) -> Result<()> {
        let seq = self.seq.get();
        self.seq.set(seq + 1);
        let mut msg = Vec::with_capacity(16 + body.len());
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        let sys = |errno| AgentFailure::Sys {
            what: what.to_string(),
            errno,
        };
        sendto(
            self.fd.as_raw_fd(),
            &msg,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(sys)?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(sys)?;
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default());
                let typ = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap_or_default());
                let rseq =
                    u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap_or_default());
                if len < 16 {
                    break;
                }
                if typ == NLMSG_ERROR && rseq == seq && off + 20 <= n {
                    let err =
                        i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap_or_default());
                    return if err == 0 {
                        Ok(())
                    } else {
                        Err(sys(nix::errno::Errno::from_raw(-err)))
                    };
                }
                off += (len as usize + 3) & !3;
            }
        }
    }

    /// Bring link `index` up, renaming it and setting its MTU on the way.
    fn link_up(&self, index: u32, name: Option<&str>, mtu: Option<u32>) -> Result<()> {
        let what = format!("configure link {index}");
        if name.is_some() || mtu.is_some() {
            let mut body = ifinfo(index, 0, 0);
            if let Some(n) = name {
                let mut b = n.as_bytes().to_vec();
                b.push(0);
                push_attr(&mut body, IFLA_IFNAME, &b);
            }
            if let Some(m) = mtu {
                push_attr(&mut body, IFLA_MTU, &m.to_ne_bytes());
            }
            self.request(&what, RTM_NEWLINK, 0, &body)?;
        }
        self.request(&what, RTM_NEWLINK, 0, &ifinfo(index, IFF_UP, IFF_UP))
    }

    fn add_addr(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        let mut body = vec![
            family(addr),
            prefix,
            if addr.is_ipv6() { IFA_F_NODAD } else { 0 },
            RT_SCOPE_UNIVERSE,
        ];
        body.extend_from_slice(&index.to_ne_bytes());
        push_attr(&mut body, IFA_LOCAL, &ip_bytes(addr));
        push_attr(&mut body, IFA_ADDRESS, &ip_bytes(addr));
        self.request("add address", RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &body)
    }

    fn add_route(&self, index: u32, dst: Option<(IpAddr, u8)>, gw: Option<IpAddr>) -> Result<()> {
        let fam = match (dst, gw) {
            (Some((a, _)), _) | (None, Some(a)) => family(a),
            (None, None) => libc_af::INET,
        };
        let scope = if gw.is_some() {
            RT_SCOPE_UNIVERSE
        } else {
            RT_SCOPE_LINK
        };
        let mut body = vec![
            fam,
            dst.map_or(0, |(_, p)| p),
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            scope,
            RTN_UNICAST,
        ];
        body.extend_from_slice(&0u32.to_ne_bytes());
        if let Some((a, _)) = dst {
            push_attr(&mut body, RTA_DST, &ip_bytes(a));
        }
        if let Some(g) = gw {
            push_attr(&mut body, RTA_GATEWAY, &ip_bytes(g));
        }
        push_attr(&mut body, RTA_OIF, &index.to_ne_bytes());
        self.request("add route", RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &body)
    }
}

/// An `ifinfomsg` for link `index` changing `change` bits of its flags to `flags`.
fn ifinfo(index: u32, flags: u32, change: u32) -> Vec<u8> {
    let mut b = vec![0u8, 0, 0, 0];
    b.extend_from_slice(&(index as i32).to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&change.to_ne_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(
            parse_mac("02:00:0a:58:57:02"),
            Some([2, 0, 10, 0x58, 0x57, 2])
        );
        assert_eq!(parse_mac("02:00:0a:58:57"), None);
        assert_eq!(parse_mac("02:00:0a:58:57:02:03"), None);
        assert_eq!(parse_mac("2:00:0a:58:57:02"), None);
    }

    #[test]
    fn attributes_are_padded() {
        let mut b = vec![];
        push_attr(&mut b, IFLA_IFNAME, b"eth0\0");
        assert_eq!(b.len(), 12);
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), 9);
    }
}
