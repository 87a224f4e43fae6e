//! The runtime's log: `--log FILE` (append), `--log-format text|json` (json lines with `level`,
//! `msg` and `time`, the shape containerd's go-runc reads back on failure), `--debug`. Errors are
//! also printed as one `error: ...` line on stderr. Debug lines have runc's form
//! (`time="..." level=debug msg="..."`, or a JSON object with `--log-format json`) and go to the
//! log file, or to stderr without `--log`, as runc's do.

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
            match self.file {
                Some(_) => self.write("debug", msg),
                None => eprintln!("{}", self.line("debug", msg)),
            }
        }
    }

    /// A warning: to the log file when there is one (under containerd or Docker the runtime's
    /// stderr is the container's), else one `warning:` line on stderr.
    pub fn warn(&mut self, msg: &str) {
        match self.file {
            Some(_) => self.write("warning", msg),
            None => eprintln!("warning: {msg}"),
        }
    }

    pub fn error(&mut self, msg: &str) {
        self.write("error", msg);
        eprintln!("error: {msg}");
    }

    /// One line in the `--log-format` form.
    fn line(&self, level: &str, msg: &str) -> String {
        let time = moat_container::state::now_rfc3339();
        match self.format {
            LogFormat::Json => {
                serde_json::json!({ "level": level, "msg": msg, "time": time }).to_string()
            }
            LogFormat::Text => format!("time=\"{time}\" level={level} msg={msg:?}"),
        }
    }

    fn write(&mut self, level: &str, msg: &str) {
        let line = self.line(level, msg);
        let Some(f) = self.file.as_mut() else { return };
        let _ = writeln!(f, "{line}");
    }
}
