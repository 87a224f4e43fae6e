//! Pull progress for people: one indicatif bar per blob when stderr is a terminal, plain lines
//! (moat-image's `LineProgress`) otherwise, so logs and pipes get readable text, not escape codes.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use moat_image::{Digest, LineProgress, Progress};

/// Bars on a terminal.
pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
    style: ProgressStyle,
}

impl Bars {
    fn new() -> Bars {
        let style = ProgressStyle::with_template(
            "{prefix:.bold} {bar:30.cyan/blue} {bytes:>10}/{total_bytes:<10} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        Bars {
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
            style,
        }
    }

    fn with_bar(&self, d: &Digest, f: impl FnOnce(&ProgressBar)) {
        if let Ok(bars) = self.bars.lock() {
            if let Some(b) = bars.get(d.as_str()) {
                f(b);
            }
        }
    }
}

fn short(d: &Digest) -> String {
    d.hex()[..12].to_owned()
}

impl Progress for Bars {
    fn resolved(&self, reference: &str, manifest: &Digest) {
        let _ = self
            .multi
            .println(format!("{reference}: resolved to {manifest}"));
    }
    fn blob_start(&self, digest: &Digest, size: u64) {
        let b = self.multi.add(ProgressBar::new(size));
        b.set_style(self.style.clone());
        b.set_prefix(short(digest));
        b.set_message("downloading");
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert(digest.as_str().to_owned(), b);
        }
    }
    fn blob_progress(&self, digest: &Digest, done: u64, _size: u64) {
        self.with_bar(digest, |b| b.set_position(done));
    }
    fn blob_done(&self, digest: &Digest, cached: bool) {
        if cached {
            let _ = self
                .multi
                .println(format!("{}: already present", short(digest)));
        }
        self.with_bar(digest, |b| b.finish_with_message("verified"));
    }
    fn retry(&self, digest: &Digest, attempt: u32, error: &str) {
        self.with_bar(digest, |b| {
            b.set_message(format!("attempt {attempt} failed, retrying: {error}"))
        });
    }
    fn unpacked(&self, layer: &Digest, _chain: &Digest, cached: bool) {
        let what = if cached {
            "snapshot present"
        } else {
            "unpacked"
        };
        let _ = self.multi.println(format!("{}: {what}", short(layer)));
    }
}

/// The progress reporter for this process's stderr.
pub fn for_stderr() -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Box::new(Bars::new())
    } else {
        Box::new(LineProgress::default())
    }
}
