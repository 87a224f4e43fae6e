//! Tests of the file formats against temporary directories (`formats`, `stats_files`) and of the
//! real cgroup hierarchies of the host (`host`, skipped when not root).

mod formats;
mod host;
mod stats_files;
mod unset;

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

/// A directory with the given (empty, or `name=content`) interface files.
pub(crate) fn fake(dir: &Path, files: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for f in files {
        let (name, content) = f.split_once('=').unwrap_or((f, ""));
        std::fs::write(dir.join(name), content).unwrap();
    }
    dir.to_path_buf()
}

pub(crate) fn content(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap()
}

pub(crate) fn res(json: serde_json::Value) -> LinuxResources {
    serde_json::from_value(json).unwrap()
}
