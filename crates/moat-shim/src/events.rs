//! Events to containerd (TaskExit, TaskOOM, ...) through its ttrpc publisher, for the namespaces
//! service and the VM pods alike. When containerd restarts while the shim lives on (it finds the
//! shim again through the bundle's `address` file), the old connection is dead: a failed publish
//! reconnects to `TTRPC_ADDRESS` once and sends the event again.
//!
//! What it must never do: block a caller on a containerd that is gone (a failure is logged, the
//! event dropped), or publish under another namespace than the shim's.

use std::sync::RwLock;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;
use containerd_shim_protos::protobuf::MessageDyn;

pub struct Events {
    publisher: RwLock<Option<RemotePublisher>>,
    namespace: String,
}

impl Events {
    /// `publisher`: `None` publishes nothing (a service that serves no task yet).
    pub fn new(publisher: Option<RemotePublisher>, namespace: &str) -> Events {
        Events {
            publisher: RwLock::new(publisher),
            namespace: namespace.to_string(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn publish(&self, topic: &str, ev: Box<dyn MessageDyn>) {
        {
            let publisher = self.publisher.read().unwrap_or_else(|e| e.into_inner());
            let Some(p) = publisher.as_ref() else {
                return;
            };
            let Err(e) = p.publish(Context::default(), topic, &self.namespace, ev.clone_box())
            else {
                return;
            };
            log::info!("publish {topic}: {e}; reconnecting to containerd");
        }
        // containerd restarted: its ttrpc socket is a new one at the same address.
        let again = std::env::var("TTRPC_ADDRESS")
            .map_err(|_| "TTRPC_ADDRESS is not set".to_string())
            .and_then(|a| RemotePublisher::new(&a).map_err(|e| e.to_string()))
            .and_then(|p| {
                p.publish(Context::default(), topic, &self.namespace, ev)
                    .map(|()| p)
                    .map_err(|e| e.to_string())
            });
        match again {
            Ok(p) => *self.publisher.write().unwrap_or_else(|e| e.into_inner()) = Some(p),
            Err(e) => log::warn!("publish {topic} after reconnecting to containerd: {e}"),
        }
    }
}
