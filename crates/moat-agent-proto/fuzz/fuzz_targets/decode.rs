//! Feed arbitrary bytes to the frame decoder as both ends would: it must return frames or errors,
//! never panic, loop forever or allocate more than one frame's maximum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_agent_proto::{Decoder, GuestMessage, HostMessage};

fuzz_target!(|data: &[u8]| {
    let mut host = Decoder::<HostMessage>::new();
    let mut guest = Decoder::<GuestMessage>::new();
    // Split the input in two pushes so partial frames are exercised too.
    let cut = data.first().map(|b| *b as usize % (data.len() + 1)).unwrap_or(0);
    for chunk in [&data[..cut], &data[cut..]] {
        host.push(chunk);
        guest.push(chunk);
        while let Some(r) = host.next_message() {
            let _ = r;
        }
        while let Some(r) = guest.next_message() {
            let _ = r;
        }
    }
});
