//! Container networking through CNI plugins (Debian's `containernetworking-plugins` in
//! /usr/lib/cni, or the directories in `$CNI_PATH`), invoked exactly as the CNI spec says: the
//! plugin binary with `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS=/proc/<init>/ns/net`,
//! `CNI_IFNAME`, `CNI_PATH` in its environment and the network config on stdin. moat writes no
//! netlink or iptables code of its own.
//!
//! `--network none` runs the `loopback` plugin only (to bring `lo` up); `--network bridge` runs
//! `loopback`, then the chain `bridge` (bridge `moat0`, `host-local` addresses from
//! 10.88.87.0/24 kept host-wide in /var/lib/cni/networks/moat, masquerade) → `portmap` (for `-p`) → `firewall`. A bridge subnet that overlaps
//! a host route on another interface is refused (from /proc/net/route) instead of hijacking it.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::error::{CliError, Result};
use crate::meta::{Meta, Paths};

/// The bridge network's subnet and prefix.
pub const SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 88, 87, 0), 24);
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

/// The chained configs of the bridge network for container `m`.
fn bridge_chain(m: &Meta) -> Vec<Value> {
    let (net, prefix) = SUBNET;
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
    let routes = std::fs::read_to_string("/proc/net/route")
        .map_err(CliError::io("read", "/proc/net/route"))?;
    check_subnet(&routes, SUBNET.0, SUBNET.1)?;
    // Keep the namespace alive after the container exits: the bridge plugin can remove its
    // masquerade rules on DEL only while it can enter the namespace.
    pin_netns(&netns, pin)?;
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
        check_subnet(&ROUTES.replace("wg0", "moat0"), SUBNET.0, SUBNET.1).unwrap();
        // 10.88.0.0/16 on wg0 covers 10.88.87.0/24.
        let e = check_subnet(ROUTES, SUBNET.0, SUBNET.1).unwrap_err();
        assert!(e.to_string().contains("wg0"), "{e}");
        check_subnet(ROUTES, Ipv4Addr::new(10, 99, 0, 0), 24).unwrap();
    }
}
