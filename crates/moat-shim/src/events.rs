//! Events to containerd (TaskExit, TaskOOM, ...) through its ttrpc publisher, for the namespaces
//! service and the VM pods alike.
//!
//! One connection per event, not one kept open: ttrpc 0.10's synchronous client polls its socket
//! with a 10 ms timeout for as long as it lives (`ClientConnection::ready`), so each kept
//! publisher cost the shim 100 wakeups a second while nothing happened (measured: two of them,
//! ~400 context switches in 2 s of an idle pod). A container has a handful of events; a connect
//! to containerd's unix socket is far below a millisecond. It also makes a containerd restart
//! harmless: the next event connects to the new socket at the same address.
//!
//! What it must never do: block a caller on a containerd that is gone (a failure is logged, the
//! event dropped), or publish under another namespace than the shim's.

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;
use containerd_shim_protos::protobuf::MessageDyn;

pub struct Events {
    /// containerd's ttrpc address (`TTRPC_ADDRESS`).
    address: Option<String>,
    namespace: String,
}

impl Events {
    /// `address`: `None` publishes nothing (a service that serves no task yet).
    pub fn new(address: Option<String>, namespace: &str) -> Events {
        Events {
            address,
            namespace: namespace.to_string(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn publish(&self, topic: &str, ev: Box<dyn MessageDyn>) {
        let Some(a) = &self.address else {
            return;
        };
        let sent = RemotePublisher::new(a)
            .and_then(|p| p.publish(Context::default(), topic, &self.namespace, ev));
        if let Err(e) = sent {
            log::warn!("publish {topic} to containerd at {a}: {e}");
        }
    }
}
