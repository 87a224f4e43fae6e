//! The runtime's log: `--log FILE` (append), `--log-format text|json` (json lines with `level`,
//! `msg` and `time`, the shape containerd's go-runc reads back on failure), `--debug`. Errors are
//! also printed as one `error: ...` line on stderr.

use std::io::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub struct Logger {
    file: Option<std::fs::File>,
    format: LogFormat,
    debug: bool,
}

impl Logger {
    pub fn new(path: Option<&std::path::Path>, format: LogFormat, debug: bool) -> Logger {
        let file = path.and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
        Logger {
            file,
            format,
            debug,
        }
    }

    pub fn debug(&mut self, msg: &str) {
        if self.debug {
            self.write("debug", msg);
            if self.file.is_none() {
                eprintln!("debug: {msg}");
            }
        }
    }

    pub fn error(&mut self, msg: &str) {
        self.write("error", msg);
        eprintln!("error: {msg}");
    }

    fn write(&mut self, level: &str, msg: &str) {
        let Some(f) = self.file.as_mut() else { return };
        let time = moat_container::state::now_rfc3339();
        let line = match self.format {
            LogFormat::Json => {
                serde_json::json!({ "level": level, "msg": msg, "time": time }).to_string()
            }
            LogFormat::Text => format!("time=\"{time}\" level={level} msg={msg:?}"),
        };
        let _ = writeln!(f, "{line}");
    }
}
