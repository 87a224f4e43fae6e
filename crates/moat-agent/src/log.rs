//! The agent's log: lines to /dev/kmsg (the guest kernel log, which the host can capture from the
//! serial console). Never stdout/stderr: those are lent to container processes during create.

use std::io::Write;
use std::sync::Mutex;

static KMSG: Mutex<Option<std::fs::File>> = Mutex::new(None);

pub fn open_kmsg() {
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        if let Ok(mut g) = KMSG.lock() {
            *g = Some(f);
        }
    }
}

fn write(level: u8, msg: &str) {
    if let Ok(mut g) = KMSG.lock() {
        if let Some(f) = g.as_mut() {
            let _ = f.write_all(format!("<{level}>moat-agent: {msg}\n").as_bytes());
        }
    }
}

pub fn info(msg: &str) {
    write(6, msg);
}

pub fn error(msg: &str) {
    write(3, msg);
}
