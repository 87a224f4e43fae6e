//! Unit tests of the framing, including a deterministic random-bytes property test (the same
//! property the cargo-fuzz target in `fuzz/` checks with coverage guidance).

use super::*;
use crate::messages::*;

fn sample_host() -> Vec<HostMessage> {
    vec![
        HostMessage {
            id: 1,
            request: Request::Ping,
        },
        HostMessage {
            id: 2,
            request: Request::Create {
                container_id: "c1".into(),
                config_json: r#"{"ociVersion":"1.2.0"}"#.into(),
                rootfs: RootfsDisk {
                    serial: "rootfs0".into(),
                    fstype: "ext4".into(),
                    readonly: true,
                    overlay: true,
                },
                stdin: true,
                shared: vec![SharedMount {
                    index: 3,
                    path: "c1/3".into(),
                    readonly: true,
                }],
                files: vec![InlineFile {
                    index: 4,
                    content: b"127.0.0.1 localhost\n".to_vec(),
                    mode: 0o644,
                    readonly: false,
                }],
            },
        },
        HostMessage {
            id: 5,
            request: Request::Stdin {
                container_id: "c1".into(),
                exec_id: None,
                data: b"hello\n".to_vec(),
            },
        },
        HostMessage {
            id: 6,
            request: Request::Exec {
                container_id: "c1".into(),
                exec_id: "e1".into(),
                process_json: r#"{"args":["cat"],"cwd":"/"}"#.into(),
                stdin: true,
            },
        },
        HostMessage {
            id: 7,
            request: Request::Stats {
                container_id: "c1".into(),
            },
        },
        HostMessage {
            id: 3,
            request: Request::Kill {
                container_id: "c1".into(),
                exec_id: Some("e".into()),
                signal: 9,
                all: false,
            },
        },
        HostMessage {
            id: 4,
            request: Request::Shutdown,
        },
        HostMessage {
            id: 8,
            request: Request::Network {
                interfaces: vec![NetInterface {
                    name: "eth0".into(),
                    mac: "02:00:0a:58:57:02".into(),
                    mtu: 1400,
                    addresses: vec![IpNet {
                        address: "10.88.87.2".into(),
                        prefix_len: 24,
                    }],
                }],
                routes: vec![NetRoute {
                    destination: None,
                    gateway: Some("10.88.87.1".into()),
                    device: "eth0".into(),
                }],
            },
        },
        HostMessage {
            id: 9,
            request: Request::Resize {
                container_id: "c1".into(),
                exec_id: Some("e".into()),
                width: 120,
                height: 40,
            },
        },
        HostMessage {
            id: 10,
            request: Request::Attach {
                container_id: "c1".into(),
                exec_id: None,
            },
        },
        HostMessage {
            id: 11,
            request: Request::Pod(crate::PodSettings {
                hostname: Some("web-0".into()),
                sysctls: vec![("net.ipv4.ip_forward".into(), "1".into())],
            }),
        },
    ]
}

fn sample_guest() -> Vec<GuestMessage> {
    vec![
        GuestMessage::Ready {
            version: crate::PROTOCOL_VERSION,
            kernel_release: "6.1.0".into(),
        },
        GuestMessage::Response {
            id: 2,
            result: Err(AgentError {
                code: ErrorCode::NotFound,
                message: "container c1".into(),
            }),
        },
        GuestMessage::Output {
            container_id: "c1".into(),
            exec_id: None,
            stream: Stream::Stderr,
            data: vec![0, 255, 10],
        },
        GuestMessage::Exited {
            container_id: "c1".into(),
            exec_id: None,
            status: ExitStatus::Signal(9),
        },
        GuestMessage::Response {
            id: 7,
            result: Ok(Reply::Stats(ContainerStats {
                memory_usage_bytes: 1 << 20,
                pids_current: 2,
                ..Default::default()
            })),
        },
        GuestMessage::Response {
            id: 8,
            result: Ok(Reply::Processes(vec![GuestProcess {
                pid: 7,
                command: "sleep 600".into(),
            }])),
        },
        GuestMessage::Oom {
            container_id: "c1".into(),
        },
    ]
}

#[test]
fn round_trip_in_one_push_and_byte_by_byte() {
    let mut all = Vec::new();
    for m in sample_host() {
        all.extend(encode(&m).unwrap());
    }
    let mut d = Decoder::<HostMessage>::new();
    d.push(&all);
    let got: Vec<_> = std::iter::from_fn(|| d.next_message())
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, sample_host());
    assert!(d.is_idle());

    let mut all = Vec::new();
    for m in sample_guest() {
        all.extend(encode(&m).unwrap());
    }
    let mut d = Decoder::<GuestMessage>::new();
    let mut got = Vec::new();
    for b in &all {
        d.push(std::slice::from_ref(b));
        while let Some(m) = d.next_message() {
            got.push(m.unwrap());
        }
    }
    assert_eq!(got, sample_guest());
}

#[test]
fn malformed_frame_reports_id_and_stream_continues() {
    let bad = br#"{"id":42,"request":{"launch_missiles":{}}}"#;
    let mut bytes = (bad.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(bad);
    bytes.extend(encode(&sample_host()[0]).unwrap());
    let mut d = Decoder::<HostMessage>::new();
    d.push(&bytes);
    match d.next_message() {
        Some(Err(DecodeError::Malformed { id: Some(42), .. })) => {}
        other => panic!("expected malformed with id 42, got {other:?}"),
    }
    assert_eq!(d.next_message(), Some(Ok(sample_host()[0].clone())));
}

#[test]
fn oversized_frame_is_skipped_without_buffering_it() {
    let len = MAX_FRAME + 10;
    let mut d = Decoder::<HostMessage>::new();
    d.push(&(len as u32).to_le_bytes());
    assert_eq!(d.next_message(), Some(Err(DecodeError::TooLarge { len })));
    // Feed the oversized body in pieces; nothing is kept.
    for _ in 0..(len / 4096 + 1) {
        d.push(&[b'x'; 4096][..4096.min(len)]);
        assert!(d.next_message().is_none() || d.buf.len() < 4096 * 2);
    }
    let mut d = Decoder::<HostMessage>::new();
    d.push(&(len as u32).to_le_bytes());
    d.push(&vec![b'x'; len]);
    d.push(&encode(&sample_host()[0]).unwrap());
    assert!(matches!(
        d.next_message(),
        Some(Err(DecodeError::TooLarge { .. }))
    ));
    assert_eq!(d.next_message(), Some(Ok(sample_host()[0].clone())));
}

#[test]
fn encode_refuses_too_large() {
    let m = GuestMessage::Output {
        container_id: "c".into(),
        exec_id: None,
        stream: Stream::Stdout,
        data: vec![200; MAX_FRAME],
    };
    assert!(matches!(encode(&m), Err(EncodeError::TooLarge { .. })));
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn random_and_mutated_bytes_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut valid = Vec::new();
    for m in sample_host() {
        valid.push(encode(&m).unwrap());
    }
    for m in sample_guest() {
        valid.push(encode(&m).unwrap());
    }
    for round in 0..20_000 {
        let bytes: Vec<u8> = if round % 2 == 0 {
            let n = (rng.next() % 300) as usize;
            (0..n).map(|_| rng.next() as u8).collect()
        } else {
            // Flip a few bytes of a valid frame (header included).
            let mut v = valid[(rng.next() as usize) % valid.len()].clone();
            for _ in 0..(rng.next() % 4 + 1) {
                let i = (rng.next() as usize) % v.len();
                v[i] = rng.next() as u8;
            }
            v
        };
        let mut h = Decoder::<HostMessage>::new();
        let mut g = Decoder::<GuestMessage>::new();
        let cut = (rng.next() as usize) % (bytes.len() + 1);
        for part in [&bytes[..cut], &bytes[cut..]] {
            h.push(part);
            g.push(part);
            let mut steps = 0;
            while h.next_message().is_some() {
                steps += 1;
                assert!(steps < 1000, "decoder does not make progress");
            }
            while g.next_message().is_some() {}
        }
    }
}

#[test]
fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    let body = "[".repeat(100_000);
    let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(body.as_bytes());
    let mut d = Decoder::<HostMessage>::new();
    d.push(&bytes);
    assert!(matches!(
        d.next_message(),
        Some(Err(DecodeError::Malformed { id: None, .. }))
    ));
}

#[test]
fn seed_corpus_holds_valid_frames() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        let mut h = Decoder::<HostMessage>::new();
        let mut g = Decoder::<GuestMessage>::new();
        h.push(&bytes);
        g.push(&bytes);
        let ok_h = matches!(h.next_message(), Some(Ok(_)));
        let ok_g = matches!(g.next_message(), Some(Ok(_)));
        assert!(ok_h || ok_g, "corpus file does not decode");
        n += 1;
    }
    assert!(n >= 4);
}

/// Regenerate the seed corpus: `MOAT_WRITE_CORPUS=1 cargo test -p moat-agent-proto`.
#[test]
fn write_seed_corpus_when_asked() {
    if std::env::var_os("MOAT_WRITE_CORPUS").is_none() {
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, m) in sample_host().iter().enumerate() {
        std::fs::write(dir.join(format!("host-{i}")), encode(m).unwrap()).unwrap();
    }
    for (i, m) in sample_guest().iter().enumerate() {
        std::fs::write(dir.join(format!("guest-{i}")), encode(m).unwrap()).unwrap();
    }
}

/// Every strict prefix of a valid frame is "need more bytes", never a message or a panic; a
/// header that claims the truncated length makes the cut body a malformed-frame error; a body of
/// garbage behind a valid header is an error too, and the stream goes on after each.
#[test]
fn truncated_and_garbage_frames_are_errors() {
    let mut rng = Rng(0x0DDB_1A5E_5BAD_5EED);
    let mut frames: Vec<Vec<u8>> = sample_host().iter().map(|m| encode(m).unwrap()).collect();
    frames.extend(sample_guest().iter().map(|m| encode(m).unwrap()));
    let ping = encode(&sample_host()[0]).unwrap();
    for f in &frames {
        for cut in 0..f.len() {
            let mut h = Decoder::<HostMessage>::new();
            let mut g = Decoder::<GuestMessage>::new();
            h.push(&f[..cut]);
            g.push(&f[..cut]);
            assert!(h.next_message().is_none() && g.next_message().is_none());
        }
        let body = &f[HEADER_LEN..];
        for cut in 0..body.len() {
            let mut bytes = (cut as u32).to_le_bytes().to_vec();
            bytes.extend_from_slice(&body[..cut]);
            bytes.extend_from_slice(&ping);
            let mut h = Decoder::<HostMessage>::new();
            h.push(&bytes);
            assert!(matches!(h.next_message(), Some(Err(_))), "cut {cut}");
            assert_eq!(h.next_message(), Some(Ok(sample_host()[0].clone())));
            let mut g = Decoder::<GuestMessage>::new();
            g.push(&bytes[..HEADER_LEN + cut]);
            assert!(matches!(g.next_message(), Some(Err(_))), "cut {cut}");
        }
    }
    for _ in 0..5_000 {
        let n = (rng.next() % 200) as usize + 1;
        // A first byte that cannot start JSON: the body is garbage for sure.
        let mut body: Vec<u8> = vec![0xff];
        body.extend((1..n).map(|_| rng.next() as u8));
        let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&ping);
        let mut h = Decoder::<HostMessage>::new();
        h.push(&bytes);
        assert!(matches!(
            h.next_message(),
            Some(Err(DecodeError::Malformed { id: None, .. }))
        ));
        assert_eq!(h.next_message(), Some(Ok(sample_host()[0].clone())));
        let mut g = Decoder::<GuestMessage>::new();
        g.push(&bytes);
        assert!(matches!(g.next_message(), Some(Err(_))));
    }
}
