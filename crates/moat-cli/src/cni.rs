//! Container networking through CNI plugins (Debian's `containernetworking-plugins` in
//! /usr/lib/cni, or the directories in `$CNI_PATH`), invoked exactly as the CNI spec says: the
//! plugin binary with `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS=/proc/<init>/ns/net`,
//! `CNI_IFNAME`, `CNI_PATH` in its environment and the network config on stdin. moat writes no
//! netlink or iptables code of its own.
//!
//! `--network none` runs the `loopback` plugin only (to bring `lo` up); `--network bridge` runs
//! `loopback`, then the chain `bridge` (bridge `moat0`, `host-local` addresses kept host-wide in
//! /var/lib/cni/networks/moat, masquerade) → `portmap` (for `-p`) → `firewall`.
//!
//! The bridge subnet ([`choose_subnet`]): the one `moat0` already routes, else the first /24 of
//! 10.213.0.0/16 (from 10.213.87.0) that overlaps no host route — outside the ranges Docker
//! (172.17-31.x, 192.168.x), podman (10.88.0.0/16, 10.89.x), Kubernetes CNIs (10.244.x, 10.42.x,
//! 10.96.0.0/12) and the CNI examples (10.1.x, 10.10.x, 10.22.x) use, and moving on to the next free
//! one with a notice when a host route takes it (as Docker's default-address-pools do), instead of
//! hijacking another network's addresses.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::error::{CliError, Result};
use crate::meta::{Meta, Paths};

/// The preferred bridge subnet and the prefix of every candidate.
pub const SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 213, 87, 0), 24);
/// The pool the bridge subnet is taken from: the /24s of 10.213.0.0/16, from [`SUBNET`] on.
const POOL_PREFIX: (u8, u8) = (10, 213);
/// The bridge device.
pub const BRIDGE: &str = "moat0";
const CNI_VERSION: &str = "1.0.0";

fn plugin_dirs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::env::var("CNI_PATH")
        .map(|p| p.split(':').map(PathBuf::from).collect())
        .unwrap_or_default();
    v.push("/usr/lib/cni".into());
    v.push("/opt/cni/bin".into());
    v
}

fn find_plugin(typ: &str) -> Option<PathBuf> {
    plugin_dirs()
        .into_iter()
        .map(|d| d.join(typ))
        .find(|p| p.is_file())
}

/// Run one plugin; returns its result JSON (empty for DEL).
fn invoke(command: &str, id: &str, netns: &str, ifname: &str, conf: &Value) -> Result<Value> {
    let typ = conf["type"].as_str().unwrap_or_default();
    let bin = find_plugin(typ).ok_or_else(|| {
        CliError::Network(format!(
            "CNI plugin {typ:?} not found in {:?} (apt-get install containernetworking-plugins)",
            plugin_dirs()
        ))
    })?;
    let path = plugin_dirs()
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut child = Command::new(&bin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(CliError::io("run CNI plugin", &bin))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(conf.to_string().as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(CliError::io("run CNI plugin", &bin))?;
    let result: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if !out.status.success() {
        let msg = result["msg"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_owned());
        let details = result["details"].as_str().unwrap_or_default();
        return Err(CliError::Network(format!(
            "CNI {command} with plugin {typ} for container {}: {msg} {details}",
            &id[..12.min(id.len())]
        )));
    }
    Ok(result)
}

/// The bridge subnet for this host, from /proc/net/route's text: the one `moat0` routes already
/// (stable for the bridge's life), else the first /24 of the pool from [`SUBNET`] that collides with
/// no host route; with a notice saying why when that is not the preferred one.
pub fn choose_subnet(routes_text: &str) -> Result<((Ipv4Addr, u8), Option<String>)> {
    if let Some((dst, _, _)) = host_routes(routes_text).into_iter().find(|(d, m, dev)| {
        dev == BRIDGE && u32::from(*m).count_ones() == u32::from(SUBNET.1) && !d.is_unspecified()
    }) {
        return Ok(((dst, SUBNET.1), None));
    }
    let first = match check_subnet(routes_text, SUBNET.0, SUBNET.1) {
        Ok(()) => return Ok((SUBNET, None)),
        Err(e) => e,
    };
    let start = SUBNET.0.octets()[2];
    for third in (start..=255).chain(0..start) {
        let net = Ipv4Addr::new(POOL_PREFIX.0, POOL_PREFIX.1, third, 0);
        if check_subnet(routes_text, net, SUBNET.1).is_ok() {
            return Ok((
                (net, SUBNET.1),
                Some(format!("{first}; using {net}/{} instead", SUBNET.1)),
            ));
        }
    }
    Err(CliError::Network(format!(
        "no free bridge subnet in {}.{}.0.0/16: every /24 collides with a host route ({first})",
        POOL_PREFIX.0, POOL_PREFIX.1
    )))
}

/// The bridge subnet in use now (for a config that must match the one containers got).
fn current_subnet() -> (Ipv4Addr, u8) {
    std::fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|r| choose_subnet(&r).ok())
        .map_or(SUBNET, |(s, _)| s)
}

/// The chained configs of the bridge network for container `m`.
fn bridge_chain(m: &Meta) -> Vec<Value> {
    let (net, prefix) = current_subnet();
    let mut chain = vec![json!({
        "type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": true, "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": format!("{net}/{prefix}") }]],
            "routes": [{ "dst": "0.0.0.0/0" }],
        },
    })];
    if !m.ports.is_empty() {
        let maps: Vec<Value> = m
            .ports
            .iter()
            .map(|p| json!({"hostPort": p.host_port, "containerPort": p.container_port, "protocol": p.protocol, "hostIP": p.host_ip}))
            .collect();
        chain.push(json!({
            "type": "portmap", "snat": true,
            "capabilities": { "portMappings": true },
            "runtimeConfig": { "portMappings": maps },
        }));
    }
    chain.push(json!({ "type": "firewall" }));
    chain
}

fn with_header(mut conf: Value, prev: Option<&Value>) -> Value {
    conf["cniVersion"] = json!(CNI_VERSION);
    conf["name"] = json!("moat");
    if let Some(p) = prev {
        conf["prevResult"] = p.clone();
    }
    conf
}

/// A host route (destination, mask, device) from /proc/net/route.
fn host_routes(text: &str) -> Vec<(Ipv4Addr, Ipv4Addr, String)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let hex = |s: &str| {
                u32::from_str_radix(s, 16)
                    .ok()
                    .map(|v| Ipv4Addr::from(v.swap_bytes()))
            };
            Some((hex(f.get(1)?)?, hex(f.get(7)?)?, f.first()?.to_string()))
        })
        .collect()
}

/// Refuse a subnet that overlaps a host route (other than the default route and our bridge).
pub fn check_subnet(routes_text: &str, net: Ipv4Addr, prefix: u8) -> Result<()> {
    let mask = |p: u32| if p == 0 { 0 } else { u32::MAX << (32 - p) };
    let ours = u32::from(net) & mask(prefix as u32);
    for (dst, m, dev) in host_routes(routes_text) {
        let (d, mm) = (u32::from(dst), u32::from(m));
        if mm == 0 || dev == BRIDGE {
            continue;
        }
        let common = mm & mask(prefix as u32);
        if d & common == ours & common {
            return Err(CliError::Network(format!(
                "bridge subnet {net}/{prefix} collides with the host route {dst}/{} on {dev}",
                mm.count_ones()
            )));
        }
    }
    Ok(())
}

/// Set up the network of container `m` whose init is `pid` (between create and start); records
/// the address in `m`.
pub fn setup(m: &mut Meta, pid: i32, pin: &Path) -> Result<()> {
    let netns = format!("/proc/{pid}/ns/net");
    match m.network.as_str() {
        "host" => return Ok(()),
        "none" => {
            // Without the plugin lo stays down; say so rather than fail.
            if find_plugin("loopback").is_none() {
                eprintln!(
                    "warning: CNI loopback plugin not found: lo stays down in container {}",
                    m.name
                );
                return Ok(());
            }
            invoke(
                "ADD",
                &m.id,
                &netns,
                "lo",
                &with_header(json!({"type": "loopback"}), None),
            )?;
            return Ok(());
        }
        _ => {}
    }
    check_host_routes()?;
    // Keep the namespace alive after the container exits: the bridge plugin can remove its
    // masquerade rules on DEL only while it can enter the namespace.
    pin_netns(&netns, pin)?;
    bridge_pinned(m, pin)
}

/// Check the bridge's subnet against the host's routes (saying so when it moved).
fn check_host_routes() -> Result<()> {
    let routes = std::fs::read_to_string("/proc/net/route")
        .map_err(CliError::io("read", "/proc/net/route"))?;
    if let (_, Some(notice)) = choose_subnet(&routes)? {
        eprintln!("moat: {notice}");
    }
    Ok(())
}

/// The bridge network of a VM container: a new network namespace pinned at `pin` (no process
/// lives in it yet: the VM joins it, with a tap joined to its `eth0`), and the bridge chain in
/// it. The VM backend brings `lo` up in the guest itself.
pub fn setup_vm(m: &mut Meta, pin: &Path) -> Result<()> {
    check_host_routes()?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(CliError::sys("create a network namespace"))?;
            pin_netns("/proc/thread-self/ns/net", pin)
        })
        .join()
        .unwrap_or_else(|_| Err(CliError::Usage("network namespace thread panicked".into())))
    })?;
    bridge_pinned(m, pin)
}

/// Run the bridge chain in the namespace pinned at `pin`; records the address in `m`. On
/// failure the namespace is released.
fn bridge_pinned(m: &mut Meta, pin: &Path) -> Result<()> {
    let netns = pin.display().to_string();
    invoke(
        "ADD",
        &m.id,
        &netns,
        "lo",
        &with_header(json!({"type": "loopback"}), None),
    )?;
    let mut prev: Option<Value> = None;
    let mut done = Vec::new();
    for conf in bridge_chain(m) {
        let c = with_header(conf, prev.as_ref());
        match invoke("ADD", &m.id, &netns, "eth0", &c) {
            Ok(r) => {
                done.push(c);
                prev = Some(r);
            }
            Err(e) => {
                for c in done.iter().rev() {
                    let _ = invoke("DEL", &m.id, &netns, "eth0", c);
                }
                unpin_netns(pin);
                return Err(e);
            }
        }
    }
    m.ip = prev
        .as_ref()
        .and_then(|r| r["ips"][0]["address"].as_str())
        .map(|a| a.split('/').next().unwrap_or(a).to_owned());
    Ok(())
}

/// Bind-mount the network namespace `netns` on the file `pin`.
fn pin_netns(netns: &str, pin: &Path) -> Result<()> {
    std::fs::write(pin, b"").map_err(CliError::io("create", pin))?;
    nix::mount::mount(
        Some(netns),
        pin,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(CliError::sys(format!("bind {netns} on {}", pin.display())))
}

/// Unmount and remove the pinned namespace file (harmless when absent).
pub fn unpin_netns(pin: &Path) {
    let _ = nix::mount::umount2(pin, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(pin);
}

/// Tear the bridge network of container `id` down exactly once and release its namespace.
///
/// The container's monitor (on exit) and `moat rm -f` can get here at the same moment, and two
/// CNI DELs of one container race inside iptables (portmap's `-N` of a chain the other DEL is
/// deleting fails with "File exists"). An exclusive lock on the container's `net.lock`
/// serializes them; the second one reads `ip = None` from the metadata and only unpins.
pub fn release(paths: &Paths, id: &str) -> Result<()> {
    let lock_path = paths.container_dir(id).join("net.lock");
    // No container directory: the container is already gone, and so is its network.
    let _lock = match std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
    {
        Ok(f) => {
            f.lock().map_err(CliError::io("lock", &lock_path))?;
            Some(f)
        }
        Err(_) => None,
    };
    let pin = paths.netns(id);
    if let Ok(mut m) = paths.load(id) {
        if m.ip.is_some() {
            teardown(&m, &pin)?;
            m.ip = None;
            paths.save(&m)?;
        }
    }
    unpin_netns(&pin);
    Ok(())
}

/// Undo the bridge network of `m` (its address, masquerade, port mappings and firewall rules)
/// through the namespace pinned at `pin`, then release the namespace.
pub fn teardown(m: &Meta, pin: &Path) -> Result<()> {
    let prev = m.ip.as_ref().map(|ip| {
        json!({"cniVersion": CNI_VERSION, "interfaces": [{"name": "eth0"}],
               "ips": [{"address": format!("{ip}/{}", SUBNET.1), "interface": 0}]})
    });
    let netns = if pin.exists() {
        pin.display().to_string()
    } else {
        String::new()
    };
    let mut first = None;
    for conf in bridge_chain(m).into_iter().rev() {
        if let Err(e) = invoke(
            "DEL",
            &m.id,
            &netns,
            "eth0",
            &with_header(conf, prev.as_ref()),
        ) {
            // DEL must be idempotent (CNI spec): what is already gone is not an error — the
            // container's monitor may have torn the network down a moment earlier.
            let text = e.to_string();
            if !(text.contains("no such device")
                || text.contains("not found")
                || text.contains("No such file"))
            {
                first.get_or_insert(e);
            }
        }
    }
    unpin_netns(pin);
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
wg0\t0000580A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";

    #[test]
    fn subnet_collisions_are_refused() {
        // 192.168.1.0/24 on eth0: no overlap with 10.88.87.0/24.
        let n = Ipv4Addr::new(10, 88, 87, 0);
        check_subnet(&ROUTES.replace("wg0", "moat0"), n, 24).unwrap();
        // 10.88.0.0/16 on wg0 (podman's default) covers 10.88.87.0/24.
        let e = check_subnet(ROUTES, n, 24).unwrap_err();
        assert!(e.to_string().contains("wg0"), "{e}");
        check_subnet(ROUTES, Ipv4Addr::new(10, 99, 0, 0), 24).unwrap();
    }

    /// A host route line for /proc/net/route: device, network, prefix length.
    fn route(dev: &str, net: [u8; 4], prefix: u32) -> String {
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        format!(
            "{dev}\t{:08X}\t00000000\t0001\t0\t0\t0\t{:08X}\t0\t0\t0\n",
            u32::from_be_bytes(net).swap_bytes(),
            mask.swap_bytes()
        )
    }

    #[test]
    fn the_default_subnet_coexists_with_podman_and_docker() {
        // podman's cni-podman0 (10.88.0.0/16) and docker0 (172.17.0.0/16) are left alone.
        let routes = format!(
            "{}{}{}",
            ROUTES,
            route("cni-podman0", [10, 88, 0, 0], 16),
            route("docker0", [172, 17, 0, 0], 16)
        );
        let (s, notice) = choose_subnet(&routes).unwrap();
        assert_eq!((s, notice), (SUBNET, None));
    }

    #[test]
    fn a_taken_subnet_moves_to_the_next_free_one_and_says_so() {
        let routes = format!(
            "{}{}{}",
            ROUTES,
            route("vpn0", [10, 213, 87, 0], 24),
            route("vpn1", [10, 213, 88, 0], 24)
        );
        let (s, notice) = choose_subnet(&routes).unwrap();
        assert_eq!(s, (Ipv4Addr::new(10, 213, 89, 0), 24));
        let notice = notice.unwrap();
        assert!(
            notice.contains("vpn0") && notice.contains("10.213.89.0/24"),
            "{notice}"
        );
        // The bridge's own subnet stays, whatever else appeared since.
        let with_bridge = format!("{routes}{}", route("moat0", [10, 213, 90, 0], 24));
        assert_eq!(
            choose_subnet(&with_bridge).unwrap().0,
            (Ipv4Addr::new(10, 213, 90, 0), 24)
        );
        // A /16 over the whole pool: a clear error.
        let all = format!("{ROUTES}{}", route("big0", [10, 213, 0, 0], 16));
        assert!(choose_subnet(&all)
            .unwrap_err()
            .to_string()
            .contains("no free bridge subnet"));
    }
}
