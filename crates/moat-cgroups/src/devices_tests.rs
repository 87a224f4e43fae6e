//! Tests of the device rule folding, the v1 lines and the eBPF program (run by a small
//! interpreter of the instructions the emitter uses).

use super::*;

fn rule(
    allow: bool,
    typ: &str,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut v = serde_json::json!({ "allow": allow, "type": typ, "access": access });
    if let Some(m) = major {
        v["major"] = m.into();
    }
    if let Some(m) = minor {
        v["minor"] = m.into();
    }
    serde_json::from_value(v).unwrap()
}

/// Run `prog` on a device access; returns the program's verdict.
fn run(prog: &[Insn], typ: DevType, access: u8, major: u32, minor: u32) -> u64 {
    let ctx = [(u32::from(access) << 16) | typ as u32, major, minor];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    loop {
        let i = prog[pc];
        let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
        let imm = i.imm as u32;
        let mut jump = false;
        match i.code {
            LDX_W => {
                assert_eq!(src, 1, "loads only from the context");
                r[dst] = u64::from(ctx[i.off as usize / 4]);
            }
            ALU32_AND_K => r[dst] = u64::from(r[dst] as u32 & imm),
            ALU32_RSH_K => r[dst] = u64::from((r[dst] as u32) >> imm),
            ALU32_MOV_K => r[dst] = u64::from(imm),
            ALU32_MOV_X => r[dst] = u64::from(r[src] as u32),
            JNE32_K => jump = r[dst] as u32 != imm,
            JEQ32_K => jump = r[dst] as u32 == imm,
            JNE32_X => jump = r[dst] as u32 != r[src] as u32,
            EXIT => return r[0],
            c => panic!("unexpected opcode {c:#x}"),
        }
        pc += 1;
        if jump {
            pc += i.off as usize;
        }
    }
}

const NULL: (u32, u32) = (1, 3);
const ZERO: (u32, u32) = (1, 5);

#[test]
fn allow_list_program() {
    let rules = [
        rule(false, "a", None, None, "rwm"),
        rule(true, "c", Some(1), Some(5), "rw"),
        rule(true, "c", Some(136), None, "rwm"),
        rule(true, "b", Some(8), Some(0), "r"),
    ];
    let f = DeviceRules::from_spec(&rules).unwrap();
    assert!(!f.default_allow);
    assert_eq!(f.exceptions.len(), 3);
    let p = f.program();
    let rw = ACC_READ | ACC_WRITE;
    assert_eq!(run(&p, DevType::Char, ACC_READ, ZERO.0, ZERO.1), 1);
    assert_eq!(run(&p, DevType::Char, rw, ZERO.0, ZERO.1), 1);
    assert_eq!(
        run(&p, DevType::Char, ACC_MKNOD, ZERO.0, ZERO.1),
        0,
        "m not granted"
    );
    assert_eq!(run(&p, DevType::Char, ACC_READ, NULL.0, NULL.1), 0);
    assert_eq!(
        run(&p, DevType::Block, ACC_READ, ZERO.0, ZERO.1),
        0,
        "type matters"
    );
    assert_eq!(run(&p, DevType::Char, rw, 136, 7), 1, "minor wildcard");
    assert_eq!(run(&p, DevType::Block, ACC_READ, 8, 0), 1);
    assert_eq!(run(&p, DevType::Block, rw, 8, 0), 0, "rw needs both bits");
}

#[test]
fn deny_list_program_and_removal() {
    let rules = [
        rule(true, "a", None, None, "rwm"),
        rule(false, "c", Some(1), Some(3), "w"),
        rule(false, "b", None, None, "m"),
        // Re-allowing m on block devices removes that exception again.
        rule(true, "b", None, None, "m"),
    ];
    let f = DeviceRules::from_spec(&rules).unwrap();
    assert!(f.default_allow);
    assert_eq!(f.exceptions.len(), 1);
    let p = f.program();
    assert_eq!(run(&p, DevType::Char, ACC_READ, NULL.0, NULL.1), 1);
    assert_eq!(run(&p, DevType::Char, ACC_WRITE, NULL.0, NULL.1), 0);
    assert_eq!(
        run(&p, DevType::Char, ACC_READ | ACC_WRITE, NULL.0, NULL.1),
        0,
        "any denied bit"
    );
    assert_eq!(run(&p, DevType::Block, ACC_MKNOD, 8, 0), 1);
}

#[test]
fn empty_list_denies_everything() {
    let f = DeviceRules::from_spec(&[]).unwrap();
    assert_eq!(
        run(&f.program(), DevType::Char, ACC_READ, NULL.0, NULL.1),
        0
    );
    assert_eq!(f.v1_lines(), vec![("devices.deny", "a".to_owned())]);
}

#[test]
fn v1_lines_and_type_expansion() {
    let rules = [
        rule(false, "a", None, None, "rwm"),
        rule(true, "c", Some(1), Some(3), "rwm"),
        rule(true, "a", Some(7), None, "r"),
        rule(true, "u", Some(5), Some(0), "rw"),
        rule(true, "p", None, None, "rwm"),
    ];
    let f = DeviceRules::from_spec(&rules).unwrap();
    let lines: Vec<String> = f
        .v1_lines()
        .into_iter()
        .map(|(f, l)| format!("{f}: {l}"))
        .collect();
    assert_eq!(
        lines,
        [
            "devices.deny: a",
            "devices.allow: c 1:3 rwm",
            "devices.allow: b 7:* r",
            "devices.allow: c 7:* r",
            "devices.allow: c 5:0 rw",
        ]
    );
}

#[test]
fn refusals_name_the_rule() {
    let e = DeviceRules::from_spec(&[rule(false, "p", None, None, "rwm")]).unwrap_err();
    assert!(e.to_string().contains("linux.resources.devices[0]"), "{e}");
    let e = DeviceRules::from_spec(&[rule(true, "c", Some(1), Some(3), "rwx")]).unwrap_err();
    assert!(
        e.to_string().contains("linux.resources.devices[0].access"),
        "{e}"
    );
}

#[test]
fn jump_offsets_stay_inside_the_program() {
    let rules = [
        rule(true, "c", Some(1), Some(5), "rwm"),
        rule(true, "b", None, None, "r"),
    ];
    let p = DeviceRules::from_spec(&rules).unwrap().program();
    for (pc, i) in p.iter().enumerate() {
        if i.code & 0x07 == CLASS_JMP32 {
            assert!(i.off > 0 && pc + 1 + (i.off as usize) < p.len());
        }
    }
    assert_eq!(p.last().unwrap().code, EXIT);
}
