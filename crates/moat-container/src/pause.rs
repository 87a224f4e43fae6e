//! `pause` and `resume`: freeze and thaw every process of a container through its cgroup
//! (freezer.state on v1, cgroup.freeze on v2).

use crate::error::{ContainerError, Result};
use crate::state::{Status, Store};

fn cgroup_of(
    store: &Store,
    id: &str,
    action: &'static str,
    want: Status,
) -> Result<moat_cgroups::Cgroup> {
    let st = store.load(id)?;
    let status = store.status(&st);
    if status != want {
        return Err(ContainerError::BadStatus {
            id: id.into(),
            action,
            status: status.to_string(),
        });
    }
    st.cgroup.ok_or_else(|| {
        ContainerError::Unsupported(format!("container {id} has no cgroup to freeze"))
    })
}

pub fn pause(store: &Store, id: &str) -> Result<()> {
    let _lock = store.lock(id)?;
    cgroup_of(store, id, "pause", Status::Running)?.freeze()?;
    Ok(())
}

pub fn resume(store: &Store, id: &str) -> Result<()> {
    let _lock = store.lock(id)?;
    cgroup_of(store, id, "resume", Status::Paused)?.thaw()?;
    Ok(())
}

/// Change the resource limits of a live container.
pub fn update(store: &Store, id: &str, res: &oci_spec::runtime::LinuxResources) -> Result<()> {
    let _lock = store.lock(id)?;
    let st = store.load(id)?;
    let status = store.status(&st);
    if status == Status::Stopped {
        return Err(ContainerError::BadStatus {
            id: id.into(),
            action: "update",
            status: status.to_string(),
        });
    }
    let cg = st
        .cgroup
        .as_ref()
        .ok_or_else(|| ContainerError::Unsupported(format!("container {id} has no cgroup")))?;
    // Device rules of an update apply on top of the container's own (its spec's rules, the
    // default devices and `linux.devices`), not instead of them: a deny rule takes that device
    // away and leaves /dev/null and the rest usable.
    let mut res = res.clone();
    if let Some(extra) = res.devices().clone().filter(|d| !d.is_empty()) {
        // The rules of create, recorded in the state (a state from an older moat: the bundle's).
        let mut devs = match &st.devices {
            Some(d) => d.clone(),
            None => crate::resources::effective(&crate::spec::load_bundle(&st.bundle)?.spec)
                .and_then(|r| r.devices().clone())
                .unwrap_or_default(),
        };
        devs.extend(extra);
        res.set_devices(Some(devs));
    }
    cg.update(&res)?;
    Ok(())
}
