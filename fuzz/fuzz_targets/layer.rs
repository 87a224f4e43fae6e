//! Image layers are hostile input: unpacking any bytes must never panic, and never write outside
//! the unpack root (checked: the sibling sentinel directory stays empty).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let sentinel = dir.path().join("sentinel");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&sentinel).unwrap();
    let opts = moat_image::unpack::UnpackOptions { privileged: false, ..Default::default() };
    let _ = moat_image::unpack::unpack_layer(data, &root, "fuzz", &opts);
    assert_eq!(std::fs::read_dir(&sentinel).unwrap().count(), 0, "the layer wrote outside its root");
});
