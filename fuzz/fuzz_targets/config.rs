//! config.json is hostile input: parsing and validating any bytes must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = moat_container::spec::parse_spec(data) {
        let _ = moat_container::spec::validate(&spec);
        let _ = moat_container::namespaces::NsPlan::from_spec(&spec);
    }
});
