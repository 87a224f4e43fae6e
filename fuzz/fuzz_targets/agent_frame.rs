//! Agent protocol frames are hostile input on both sides of the VM boundary: the agent decodes
//! the host's requests, the host decodes the guest's messages. Any bytes, pushed in two pieces,
//! must give messages or errors, never a panic or a stall; every message decoded re-encodes to a
//! frame that decodes to the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use moat_agent_proto::{encode, Decoder, GuestMessage, HostMessage};

fn check<T>(data: &[u8], cut: usize)
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let mut d = Decoder::<T>::new();
    for chunk in [&data[..cut], &data[cut..]] {
        d.push(chunk);
        let mut steps = 0;
        while let Some(r) = d.next_message() {
            steps += 1;
            assert!(
                steps <= data.len() + 1,
                "the decoder does not make progress"
            );
            if let Ok(m) = r {
                let frame = encode(&m).expect("a decoded message re-encodes");
                let mut again = Decoder::<T>::new();
                again.push(&frame);
                assert_eq!(again.next_message().map(|r| r.ok()), Some(Some(m)));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let cut = data
        .first()
        .map(|b| *b as usize % (data.len() + 1))
        .unwrap_or(0);
    check::<HostMessage>(data, cut);
    check::<GuestMessage>(data, cut);
});
