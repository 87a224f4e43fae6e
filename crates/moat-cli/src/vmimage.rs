//! The root filesystem image of a VM container started from an image: an ext4 file per image
//! (keyed by its top layer's chain ID, so every container of an image shares it), made once from
//! a freshly mounted rootfs and kept under `<store>/vm-images/`. It is exactly
//! [`moat_vm::template::DISK_BYTES`] long (sparse), which is what lets the VM be a clone of a
//! template (`docs/vm-templates.md`); the container writes to an overlay in the guest.
//!
//! What it must never do: hand out a half-written image (each is written under a temporary name
//! and renamed), or build one from a rootfs a container already wrote to.

use std::path::{Path, PathBuf};

/// The image for `img` (building it from `fresh_rootfs`, the just-mounted, untouched overlay of
/// its layers, when missing). `None`, after a one-line notice, when it cannot be built: the VM
/// then boots cold and shares the rootfs instead.
pub fn rootfs_image(
    store: &moat_image::Store,
    img: &moat_image::StoredImage,
    fresh_rootfs: &Path,
) -> Option<PathBuf> {
    let top = img.chain_ids().last()?.to_string();
    let name = top.replace(':', "-");
    let dir = store.root().join("vm-images");
    let path = dir.join(format!("{name}.ext4"));
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == moat_vm::template::DISK_BYTES) {
        return Some(path);
    }
    let tmp = dir.join(format!("{name}.ext4.tmp-{}", std::process::id()));
    let built = std::fs::create_dir_all(&dir)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            moat_vm::assets::build_ext4_image(fresh_rootfs, &tmp).map_err(|e| e.to_string())
        })
        .and_then(|()| {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&tmp)
                .map_err(|e| e.to_string())?;
            if f.metadata().map_err(|e| e.to_string())?.len() > moat_vm::template::DISK_BYTES {
                return Err("the image is larger than a template's disk".into());
            }
            f.set_len(moat_vm::template::DISK_BYTES)
                .map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, &path).map_err(|e| e.to_string())
        });
    match built {
        Ok(()) => Some(path),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            eprintln!(
                "moat: notice: no VM disk image for {top} ({e}); the VM boots without a template"
            );
            None
        }
    }
}
