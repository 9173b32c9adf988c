//! The kernel's BPF interface, as much of it as steering needs: two maps (a socket array and an
//! array of `u32`), one `SK_REUSEPORT` program assembled here.
//!
//! Contract: plain system calls, no loader library; every failure is an [`std::io::Error`] with
//! the kernel's errno, and a program the verifier refuses comes back with the verifier's log in
//! the error's text. The program ([`steering_program`]) is fixed: it reads nothing but its two
//! maps and the connection's hash.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;

pub const MAP_ARRAY: u32 = 2;
pub const MAP_REUSEPORT_SOCKARRAY: u32 = 20;
const PROG_SK_REUSEPORT: u32 = 21;
/// `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`: the program also picks where the queue of a closed
/// listener goes (kernel 5.14), whatever `net.ipv4.tcp_migrate_req` says.
const ATTACH_SELECT_OR_MIGRATE: u32 = 40;

/// `union bpf_attr`, as bytes: each command fills the fields it uses, the rest stays zero (the
/// kernel refuses non-zero bytes past the fields a command knows).
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32(&mut self, at: usize, v: u32) -> &mut Attr {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, at: usize, v: u64) -> &mut Attr {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn name(&mut self, at: usize, name: &str) -> &mut Attr {
        let n = name.len().min(15);
        self.0[at..at + n].copy_from_slice(&name.as_bytes()[..n]);
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable bpf_attr of the size passed; every pointer stored in
    // it points to memory that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd_of(r: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel returned a new file descriptor, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(r as i32) }
}

/// A new map.
pub fn create_map(
    kind: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, kind)
        .u32(4, key_size)
        .u32(8, value_size)
        .u32(12, max_entries)
        .name(28, name);
    bpf(BPF_MAP_CREATE, &mut a).map(fd_of)
}

fn elem(map: BorrowedFd<'_>, key: &[u8], value: *const u8) -> Attr {
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32)
        .u64(8, key.as_ptr() as u64)
        .u64(16, value as u64);
    a
}

/// Sets `map[key] = value` (`BPF_ANY`).
pub fn update(map: BorrowedFd<'_>, key: u32, value: &[u8]) -> io::Result<()> {
    let key = key.to_ne_bytes();
    let mut a = elem(map, &key, value.as_ptr());
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(drop)
}

/// `map[key]`, into `value` (a socket array gives the socket's cookie, 8 bytes).
pub fn lookup(map: BorrowedFd<'_>, key: u32, value: &mut [u8]) -> io::Result<()> {
    let key = key.to_ne_bytes();
    let mut a = elem(map, &key, value.as_mut_ptr());
    bpf(BPF_MAP_LOOKUP_ELEM, &mut a).map(drop)
}

/// Removes `map[key]`; an empty slot is no error.
pub fn delete(map: BorrowedFd<'_>, key: u32) -> io::Result<()> {
    let key = key.to_ne_bytes();
    let mut a = elem(map, &key, std::ptr::null());
    match bpf(BPF_MAP_DELETE_ELEM, &mut a) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r.map(drop),
    }
}

/// One BPF instruction.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

// The few opcodes the program uses (classes, sizes and modes of linux/bpf_common.h, bpf.h).
const LD_IMM64: u8 = 0x18;
const LDX_W: u8 = 0x61;
const STX_W: u8 = 0x63;
const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const MOV32_X: u8 = 0xbc;
const ADD64_K: u8 = 0x07;
const ADD32_X: u8 = 0x0c;
const ADD32_K: u8 = 0x04;
const MOD32_X: u8 = 0x9c;
const JEQ_K: u8 = 0x15;
const JGE_K: u8 = 0x35;
const JGE_X: u8 = 0x3d;
const JA: u8 = 0x05;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const PSEUDO_MAP_FD: u8 = 1;
const FN_MAP_LOOKUP_ELEM: i32 = 1;
const FN_SK_SELECT_REUSEPORT: i32 = 82;
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R7: u8 = 7;
const R8: u8 = 8;
const R9: u8 = 9;
const FP: u8 = 10;
const SK_PASS: i32 = 1;
/// `offsetof(struct sk_reuseport_md, hash)`.
const MD_HASH: i16 = 32;

fn ld_map(dst: u8, map: BorrowedFd<'_>) -> [Insn; 2] {
    [
        insn(LD_IMM64, dst, PSEUDO_MAP_FD, 0, map.as_raw_fd()),
        insn(0, 0, 0, 0, 0),
    ]
}

/// `bpf_sk_select_reuseport(ctx, socks, fp-8, 0)`, ctx in r6; the result in r0.
fn select_slot_at_fp8(socks: BorrowedFd<'_>) -> Vec<Insn> {
    let mut p = vec![insn(MOV64_X, R1, R6, 0, 0)];
    p.extend(ld_map(R2, socks));
    p.extend([
        insn(MOV64_X, R3, FP, 0, 0),
        insn(ADD64_K, R3, 0, 0, -8),
        insn(MOV64_K, R4, 0, 0, 0),
        insn(CALL, 0, 0, 0, FN_SK_SELECT_REUSEPORT),
    ]);
    p
}

/// How many serving slots the program tries for one connection before it parks it: each try
/// after the first follows a slot whose socket closed since the list was written.
pub const TRIES: i32 = 4;

/// The steering program. `serving` is an array of `u32`: `[0]` the number N of serving
/// slots, `[1..=N]` their slots in `socks`. For each new connection (and each connection
/// migrating from a closed listener) it picks `serving[1 + (hash + t) % N]` for t = 0, 1, ...
/// up to [`TRIES`] until one holds a socket; with N = 0, or no live socket among those tried,
/// it picks `socks[0]` (the parking socket); the kernel's own choice is the last resort.
pub fn steering_program(socks: BorrowedFd<'_>, serving: BorrowedFd<'_>) -> Vec<Insn> {
    // r6 = ctx, r7 = hash, key at fp-4
    let mut p: Vec<Insn> = vec![
        insn(MOV64_X, R6, R1, 0, 0),
        insn(LDX_W, R7, R6, MD_HASH, 0),
        insn(MOV64_K, R1, 0, 0, 0),
        insn(STX_W, FP, R1, -4, 0),
    ];
    p.extend(ld_map(R1, serving));
    p.push(insn(MOV64_X, R2, FP, 0, 0));
    p.push(insn(ADD64_K, R2, 0, 0, -4));
    p.push(insn(CALL, 0, 0, 0, FN_MAP_LOOKUP_ELEM));
    let to_park_1 = p.len();
    p.push(insn(JEQ_K, R0, 0, 0, 0)); // no count: park (patched)
    p.push(insn(LDX_W, R8, R0, 0, 0)); // r8 = N
    let to_park_2 = p.len();
    p.push(insn(JEQ_K, R8, 0, 0, 0)); // N == 0: park (patched)
    p.push(insn(MOV64_K, R9, 0, 0, 0)); // r9 = t
    let top = p.len();
    // key = 1 + (hash + t) % N
    p.push(insn(MOV32_X, R1, R7, 0, 0));
    p.push(insn(ADD32_X, R1, R9, 0, 0));
    p.push(insn(MOD32_X, R1, R8, 0, 0));
    p.push(insn(ADD32_K, R1, 0, 0, 1));
    p.push(insn(STX_W, FP, R1, -4, 0));
    p.extend(ld_map(R1, serving));
    p.push(insn(MOV64_X, R2, FP, 0, 0));
    p.push(insn(ADD64_K, R2, 0, 0, -4));
    p.push(insn(CALL, 0, 0, 0, FN_MAP_LOOKUP_ELEM));
    let to_next = p.len();
    p.push(insn(JEQ_K, R0, 0, 0, 0)); // patched: next try
    p.push(insn(LDX_W, R1, R0, 0, 0));
    p.push(insn(STX_W, FP, R1, -8, 0)); // slot at fp-8
    p.extend(select_slot_at_fp8(socks));
    let to_pass = p.len();
    p.push(insn(JEQ_K, R0, 0, 0, 0)); // selected: pass (patched)
    let next = p.len();
    p.push(insn(ADD64_K, R9, 0, 0, 1));
    p.push(insn(JGE_K, R9, 0, 0, 0)); // t >= TRIES: park (patched below)
    let to_park_3 = p.len() - 1;
    let back = p.len();
    p.push(insn(JGE_X, R9, R8, 0, 0)); // t >= N: park (patched)
    p.push(insn(
        JA,
        0,
        0,
        (top as i64 - (p.len() as i64 + 1)) as i16,
        0,
    ));
    let park = p.len();
    p.push(insn(MOV64_K, R1, 0, 0, 0));
    p.push(insn(STX_W, FP, R1, -8, 0));
    p.extend(select_slot_at_fp8(socks));
    let pass = p.len();
    p.push(insn(MOV64_K, R0, 0, 0, SK_PASS));
    p.push(insn(EXIT, 0, 0, 0, 0));
    let jump = |p: &mut Vec<Insn>, at: usize, to: usize| {
        p[at].off = (to as i64 - (at as i64 + 1)) as i16;
    };
    jump(&mut p, to_park_1, park);
    jump(&mut p, to_park_2, park);
    jump(&mut p, to_next, next);
    jump(&mut p, to_pass, pass);
    p[to_park_3].imm = TRIES;
    jump(&mut p, to_park_3, park);
    jump(&mut p, back, park);
    p
}

/// Loads `insns` as an `SK_REUSEPORT` program that may also steer migrating connections.
pub fn load_steering(insns: &[Insn]) -> io::Result<OwnedFd> {
    let license = c"Dual MIT/GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut a = Attr::new();
    a.u32(0, PROG_SK_REUSEPORT)
        .u32(4, insns.len() as u32)
        .u64(8, insns.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .u32(24, 1)
        .u32(28, log.len() as u32)
        .u64(32, log.as_mut_ptr() as u64)
        .name(48, "kechi_steer")
        .u32(68, ATTACH_SELECT_OR_MIGRATE);
    match bpf(BPF_PROG_LOAD, &mut a) {
        Ok(fd) => Ok(fd_of(fd)),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let last: Vec<&str> = text.lines().rev().take(4).collect();
            Err(io::Error::new(
                e.kind(),
                format!(
                    "{e}{}",
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " (verifier: {})",
                            last.into_iter().rev().collect::<Vec<_>>().join("; ")
                        )
                    }
                ),
            ))
        }
    }
}
