//! OOM events: a thread polls the cgroups of the running containers for new OOM kills and
//! publishes `TaskOOM` for each container whose count grew.

use std::sync::Arc;

use containerd_shim::protos::events::task::TaskOOM;
use containerd_shim::protos::topics;

use super::Inner;

pub(super) fn watch(i: Arc<Inner>) {
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let ids: Vec<(String, u64)> = {
            let st = i.state.lock().unwrap_or_else(|e| e.into_inner());
            st.ctrs
                .iter()
                .filter(|(_, c)| c.init.started && c.init.exit.is_none())
                .map(|(id, c)| (id.clone(), c.ooms))
                .collect()
        };
        for (id, seen) in ids {
            let Ok(sf) = i.store.load(&id) else { continue };
            let Some(cg) = sf.cgroup else { continue };
            let n = cg.oom_kill_count().unwrap_or(seen);
            if n > seen {
                if let Some(c) = i
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .ctrs
                    .get_mut(&id)
                {
                    c.ooms = n;
                }
                i.publish(
                    topics::TASK_OOM_EVENT_TOPIC,
                    Box::new(TaskOOM {
                        container_id: id,
                        ..Default::default()
                    }),
                );
            }
        }
    }
}
