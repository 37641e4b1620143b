//! Unit tests of the parser and executor on hand-written PTX: scoped inline-asm registers, vector moves, carry
//! chains, two-output setp, shuffle segments, integer bit ops and parse errors, each against plain Rust.

use std::sync::Arc;

use rankfold_kernels::{Dim3, GpuBuffer, GpuRuntime, KernelArg, LaunchConfig};

use crate::{parse, SimError, SimRuntime};

/// Wraps `body` in a kernel where thread `i` reads `%r1, %r2, %r3` from `input[3i..3i+3]` and stores `%r10`.
fn kernel(body: &str) -> String {
    format!(
        ".version 8.4\n.target sm_80\n.address_size 64\n\
         .visible .entry t(.param .u64 t_in, .param .u64 t_out, .param .u32 t_n)\n{{\n\
         .reg .pred %p<8>;\n.reg .b32 %r<40>;\n.reg .b64 %rd<20>;\n.reg .b16 %h<8>;\n\
         ld.param.u64 %rd1, [t_in];\nld.param.u64 %rd2, [t_out];\nld.param.u32 %r30, [t_n];\n\
         mov.u32 %r31, %tid.x;\nmov.u32 %r32, %ctaid.x;\nmov.u32 %r33, %ntid.x;\nmad.lo.s32 %r34, %r32, %r33, %r31;\n\
         setp.ge.u32 %p7, %r34, %r30;\n@%p7 bra $L_done;\n\
         mul.wide.u32 %rd3, %r34, 12;\nadd.s64 %rd4, %rd1, %rd3;\n\
         ld.global.u32 %r1, [%rd4];\nld.global.u32 %r2, [%rd4+4];\nld.global.u32 %r3, [%rd4+8];\n\
         {body}\n\
         mul.wide.u32 %rd5, %r34, 4;\nadd.s64 %rd6, %rd2, %rd5;\nst.global.u32 [%rd6], %r10;\n\
         $L_done:\nret;\n}}\n"
    )
}

/// Runs `body` on `n` threads (blocks of 64) with random inputs; returns the inputs and each thread's `%r10`.
fn run(body: &str, n: usize, seed: u64) -> (Vec<[u32; 3]>, Vec<u32>) {
    let mut s = seed;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 32) as u32
    };
    let input: Vec<[u32; 3]> = (0..n).map(|_| [next(), next(), next()]).collect();
    let sim = Arc::new(SimRuntime::new());
    let rt: Arc<dyn GpuRuntime> = sim.clone();
    let flat: Vec<u32> = input.iter().flatten().copied().collect();
    let ib = GpuBuffer::from_slice(&rt, &flat).expect("simulated allocation");
    let ob = GpuBuffer::zeroed(&rt, 4 * n).expect("simulated allocation");
    let cfg = LaunchConfig {
        grid: Dim3::x((n as u32).div_ceil(64)),
        block: Dim3::x(64),
        shared_bytes: 0,
    };
    let args = [
        KernelArg::Ptr(ib.ptr()),
        KernelArg::Ptr(ob.ptr()),
        KernelArg::U32(n as u32),
    ];
    sim.launch_ptx("unit", &kernel(body), "t", cfg, &args)
        .expect("the unit kernel runs");
    (input, ob.to_vec::<u32>().expect("copy back"))
}

fn check(body: &str, n: usize, want: impl Fn(usize, [u32; 3]) -> u32) {
    let (input, got) = run(body, n, n as u64 * 7919 + body.len() as u64);
    for (i, (x, g)) in input.iter().zip(&got).enumerate() {
        assert_eq!(*g, want(i, *x), "thread {i}, inputs {x:?}, body:\n{body}");
    }
}

#[test]
fn inline_asm_scopes_shadow_registers() {
    let body = "{ .reg .b32 t; add.u32 t, %r1, %r2; { .reg .b32 t; mul.lo.u32 t, %r1, 3; mov.u32 %r11, t; }\n\
                sub.u32 %r10, t, %r11; }";
    check(body, 77, |_, [a, b, _]| {
        a.wrapping_add(b).wrapping_sub(a.wrapping_mul(3))
    });
}

#[test]
fn vector_mov_packs_and_unpacks() {
    let body = "mov.b64 %rd7, {%r1, %r2};\nshr.u64 %rd8, %rd7, 16;\ncvt.u32.u64 %r11, %rd8;\n\
                mov.b32 {%h1, %h2}, %r3;\ncvt.u32.u16 %r12, %h2;\nxor.b32 %r10, %r11, %r12;";
    check(body, 70, |_, [a, b, c]| {
        ((((u64::from(b) << 32) | u64::from(a)) >> 16) as u32) ^ (c >> 16)
    });
}

#[test]
fn carry_chains() {
    let body = "add.cc.u32 %r11, %r1, %r2;\naddc.cc.u32 %r12, %r3, 0;\naddc.u32 %r13, 0, 0;\n\
                sub.cc.u32 %r14, %r1, %r2;\nsubc.u32 %r15, 0, 0;\n\
                xor.b32 %r16, %r12, %r13;\nxor.b32 %r10, %r16, %r15;";
    check(body, 65, |_, [a, b, c]| {
        let (_, c1) = a.overflowing_add(b);
        let (s, c2) = c.overflowing_add(u32::from(c1));
        let borrow = u32::from(a < b);
        s ^ u32::from(c2) ^ 0u32.wrapping_sub(borrow)
    });
}

#[test]
fn setp_with_two_outputs_and_a_combining_predicate() {
    let body = "and.b32 %r20, %r3, 1;\nsetp.eq.u32 %p3, %r20, 1;\n\
                setp.lt.and.u32 %p1|%p2, %r1, %r2, !%p3;\n\
                selp.u32 %r11, 1, 0, %p1;\nselp.u32 %r12, 2, 0, %p2;\nor.b32 %r10, %r11, %r12;";
    check(body, 40, |_, [a, b, c]| {
        let q = c & 1 == 0;
        u32::from(a < b && q) | (u32::from(a >= b && q) << 1)
    });
}

#[test]
fn integer_bit_ops_and_signed_arithmetic() {
    let body = "bfind.u32 %r11, %r1;\nbrev.b32 %r12, %r2;\nclz.b32 %r13, %r3;\npopc.b32 %r14, %r1;\n\
                shr.s32 %r15, %r2, 5;\nmul.hi.s32 %r16, %r1, %r2;\ndiv.s32 %r17, %r1, %r3;\nrem.s32 %r18, %r1, %r3;\n\
                max.s32 %r19, %r1, %r2;\nadd.u32 %r20, %r11, %r12;\nadd.u32 %r20, %r20, %r13;\n\
                add.u32 %r20, %r20, %r14;\nxor.b32 %r20, %r20, %r15;\nadd.u32 %r20, %r20, %r16;\n\
                xor.b32 %r20, %r20, %r17;\nadd.u32 %r20, %r20, %r18;\nxor.b32 %r10, %r20, %r19;";
    check(body, 99, |_, [a, b, c]| {
        let (sa, sb) = (a as i32, b as i32);
        let bfind = if a == 0 {
            u32::MAX
        } else {
            31 - a.leading_zeros()
        };
        let hi = ((i64::from(sa) * i64::from(sb)) >> 32) as u32;
        // Division by zero has no PTX-defined result; the simulator returns all ones and keeps the dividend.
        let d = c as i32;
        let (q, r) = if d == 0 {
            (u32::MAX, a)
        } else {
            (sa.wrapping_div(d) as u32, sa.wrapping_rem(d) as u32)
        };
        let mut v = bfind
            .wrapping_add(b.reverse_bits())
            .wrapping_add(c.leading_zeros())
            .wrapping_add(a.count_ones());
        v ^= (sb >> 5) as u32;
        v = v.wrapping_add(hi);
        v ^= q;
        v = v.wrapping_add(r);
        v ^ sa.max(sb) as u32
    });
}

#[test]
fn shuffles_with_segments_and_clamps() {
    // Width-8 segments: down by 3 (c = 0x181f), up by 3 (c = 0x1800), idx b mod 8 (c = 0x181f), bfly 5.
    let body = "shfl.sync.down.b32 %r11|%p1, %r1, 3, 0x181f, -1;\nshfl.sync.up.b32 %r12|%p2, %r1, 3, 0x1800, -1;\n\
                and.b32 %r20, %r2, 7;\nshfl.sync.idx.b32 %r13, %r1, %r20, 0x181f, -1;\n\
                shfl.sync.bfly.b32 %r14, %r1, 5, 0x1f, -1;\nselp.u32 %r21, 1, 0, %p1;\nselp.u32 %r22, 2, 0, %p2;\n\
                add.u32 %r10, %r11, %r12;\nxor.b32 %r10, %r10, %r13;\nadd.u32 %r10, %r10, %r14;\n\
                add.u32 %r10, %r10, %r21;\nadd.u32 %r10, %r10, %r22;";
    let n = 96;
    let (input, got) = run(body, n, 5);
    for i in 0..n {
        let lane = i % 32;
        let warp = i - lane;
        let seg = lane / 8 * 8;
        let x = |l: usize| input[warp + l][0];
        let down_ok = lane % 8 + 3 < 8;
        let up_ok = lane % 8 >= 3;
        let down = if down_ok { x(lane + 3) } else { x(lane) };
        let up = if up_ok { x(lane - 3) } else { x(lane) };
        let idx = x(seg + (input[i][1] & 7) as usize);
        let bfly = x(lane ^ 5);
        let want = (down.wrapping_add(up) ^ idx)
            .wrapping_add(bfly)
            .wrapping_add(u32::from(down_ok) + 2 * u32::from(up_ok));
        assert_eq!(got[i], want, "thread {i}");
    }
}

#[test]
fn parse_errors_name_the_line() {
    let src = kernel("add.u32 %r10, %r1, %nosuch;");
    let line = src
        .lines()
        .position(|l| l.contains("%nosuch"))
        .expect("the line is there") as u32
        + 1;
    match parse(&src) {
        Err(SimError::Parse { line: l, msg }) => {
            assert_eq!(l, line, "{msg}");
            assert!(msg.contains("%nosuch"), "{msg}");
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    match parse(&kernel("frobnicate.u32 %r10, %r1;")) {
        Err(SimError::Parse { msg, .. }) => assert!(msg.contains("frobnicate"), "{msg}"),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn bank_conflicts_count_extra_wavefronts() {
    use crate::exec::bank_conflicts;
    let mut off = [0u64; 32];
    // Every lane reads the same word: one broadcast wavefront.
    assert_eq!(bank_conflicts(&off, u32::MAX, 4), 0);
    // Lane i reads word 2i: 16 banks hold two words each.
    for (i, o) in off.iter_mut().enumerate() {
        *o = 8 * i as u64;
    }
    assert_eq!(bank_conflicts(&off, u32::MAX, 4), 1);
    // 16-byte accesses of consecutive vectors: each quarter-warp phase covers all 32 banks once.
    for (i, o) in off.iter_mut().enumerate() {
        *o = 16 * i as u64;
    }
    assert_eq!(bank_conflicts(&off, u32::MAX, 16), 0);
    // Two active lanes, same bank, different words.
    off[0] = 0;
    off[1] = 128;
    assert_eq!(bank_conflicts(&off, 0b11, 4), 1);
}

#[test]
fn redux_and_dp4a() {
    let body = "redux.sync.add.u32 %r11, %r1, -1;\nredux.sync.max.s32 %r12, %r2, -1;\n\
                dp4a.s32.u32 %r13, %r1, %r2, %r3;\nxor.b32 %r14, %r11, %r12;\nadd.u32 %r10, %r14, %r13;";
    let n = 128;
    let (input, got) = run(body, n, 11);
    for i in 0..n {
        let w = i / 32 * 32;
        let sum = (w..w + 32).fold(0u32, |s, j| s.wrapping_add(input[j][0]));
        let max = (w..w + 32)
            .map(|j| input[j][1] as i32)
            .max()
            .expect("32 lanes") as u32;
        let [a, b, c] = input[i];
        let dot: i64 = (0..4)
            .map(|k| i64::from((a >> (8 * k)) as u8 as i8) * i64::from((b >> (8 * k)) as u8))
            .sum();
        let dp = (i64::from(c as i32) + dot) as u32;
        assert_eq!(got[i], (sum ^ max).wrapping_add(dp), "thread {i}");
    }
}

#[test]
fn generic_windows_round_trip() {
    // A shared offset made generic lies in the shared window and converts back; a global pointer is global.
    let body = "and.b32 %r20, %r1, 4095;\ncvt.u64.u32 %rd9, %r20;\ncvta.shared.u64 %rd10, %rd9;\n\
                isspacep.shared %p1, %rd10;\nisspacep.global %p2, %rd10;\ncvta.to.shared.u64 %rd11, %rd10;\n\
                cvt.u32.u64 %r11, %rd11;\nselp.u32 %r12, 10000, 0, %p1;\nselp.u32 %r13, 20000, 0, %p2;\n\
                isspacep.global %p3, %rd1;\nselp.u32 %r14, 40000, 0, %p3;\n\
                add.u32 %r10, %r11, %r12;\nadd.u32 %r10, %r10, %r13;\nadd.u32 %r10, %r10, %r14;";
    check(body, 50, |_, [a, _, _]| (a & 4095) + 10000 + 40000);
}

#[test]
fn malformed_ptx_is_an_error_not_a_panic() {
    // Drop lines of a real module one at a time: parsing must fail cleanly or succeed, never panic; every
    // fifth mutant is also linked (the launch has no arguments, so it stops at the argument check after linking).
    let src = include_str!("../../../tests/it/ptxsim/kernels.ptx");
    let lines: Vec<&str> = src.lines().collect();
    let sim = SimRuntime::new();
    let cfg = LaunchConfig {
        grid: Dim3::x(1),
        block: Dim3::x(1),
        shared_bytes: 0,
    };
    for skip in (0..lines.len()).step_by(3) {
        let text: String = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        if let Ok(m) = parse(&text) {
            if skip % 15 == 0 {
                for entry in m.entry_names() {
                    assert!(sim.launch_ptx("mutant", &text, &entry, cfg, &[]).is_err());
                }
            }
        }
    }
}

#[test]
#[ignore = "timing probe"]
fn parse_speed_probe() {
    for m in rankfold_kernels::PtxModule::ALL {
        let t = std::time::Instant::now();
        let module = parse(m.ptx()).expect("shipped PTX parses");
        eprintln!(
            "{}: {} entries in {:?}",
            m.stem(),
            module.entry_names().len(),
            t.elapsed()
        );
    }
}

#[test]
fn trap_names_the_thread() {
    let sim = Arc::new(SimRuntime::new());
    let rt: Arc<dyn GpuRuntime> = sim.clone();
    let n = 100usize;
    let ib = GpuBuffer::zeroed(&rt, 12 * n).expect("simulated allocation");
    let ob = GpuBuffer::zeroed(&rt, 4 * n).expect("simulated allocation");
    let src = kernel("setp.eq.u32 %p1, %r34, 70;\n@%p1 trap;\nmov.u32 %r10, %r1;");
    let cfg = LaunchConfig {
        grid: Dim3::x(2),
        block: Dim3::x(64),
        shared_bytes: 0,
    };
    let args = [
        KernelArg::Ptr(ib.ptr()),
        KernelArg::Ptr(ob.ptr()),
        KernelArg::U32(n as u32),
    ];
    let e = sim
        .launch_ptx("trap", &src, "t", cfg, &args)
        .expect_err("thread 70 traps");
    let rankfold_kernels::Error::Backend(b) = e else {
        panic!("not a backend error: {e}")
    };
    match b.downcast::<SimError>().map(|b| *b) {
        Ok(SimError::Trap { site }) => {
            assert_eq!((site.block, site.thread), ([1, 0, 0], [6, 0, 0]))
        }
        other => panic!("expected a trap, got {other:?}"),
    }
}

/// A one-block kernel of 64 threads: thread t computes its cp.async size operand with `setup` (into `operand`),
/// copies input bytes [16t, 16t + 16) into shared memory with it, waits, and writes its 16 shared bytes out.
fn cp_async_kernel(setup: &str, operand: &str) -> String {
    format!(
        ".version 8.4\n.target sm_80\n.address_size 64\n.shared .align 16 .b8 sm[1024];\n\
         .visible .entry cp(.param .u64 cp_in, .param .u64 cp_out)\n{{\n.reg .pred %p<2>;\n\
         .reg .b32 %r<20>;\n.reg .b64 %rd<20>;\n\
         ld.param.u64 %rd1, [cp_in];\nld.param.u64 %rd2, [cp_out];\nmov.u32 %r1, %tid.x;\n{setup}\n\
         shl.b32 %r4, %r1, 4;\nmov.u32 %r5, sm;\nadd.u32 %r6, %r5, %r4;\n\
         cvt.u64.u32 %rd3, %r4;\nadd.s64 %rd4, %rd1, %rd3;\n\
         cp.async.ca.shared.global [%r6], [%rd4], 16, {operand};\ncp.async.commit_group;\ncp.async.wait_all;\n\
         bar.sync 0;\nld.shared.v4.u32 {{%r10, %r11, %r12, %r13}}, [%r6];\nadd.s64 %rd5, %rd2, %rd3;\n\
         st.global.v4.u32 [%rd5], {{%r10, %r11, %r12, %r13}};\nret;\n}}\n"
    )
}

/// Runs a `cp_async_kernel` on 1024 input bytes and returns the simulator and the 1024 bytes it wrote.
fn run_cp_async(src: &str, input: &[u8]) -> (Arc<SimRuntime>, Vec<u8>) {
    let sim = Arc::new(SimRuntime::new());
    let rt: Arc<dyn GpuRuntime> = sim.clone();
    let ib = GpuBuffer::from_slice(&rt, input).expect("simulated allocation");
    let ob = GpuBuffer::zeroed(&rt, input.len()).expect("simulated allocation");
    let cfg = LaunchConfig { grid: Dim3::x(1), block: Dim3::x(64), shared_bytes: 0 };
    let args = [KernelArg::Ptr(ib.ptr()), KernelArg::Ptr(ob.ptr())];
    sim.launch_ptx("cp", src, "cp", cfg, &args).expect("the cp.async kernel runs");
    let got = ob.to_vec::<u8>().expect("copy back");
    (sim, got)
}

#[test]
fn cp_async_zero_fills_and_counts_only_src_size() {
    // Thread t copies 16 bytes into shared memory with src-size (5t mod 17), then reads its 16 bytes back.
    let src = cp_async_kernel("mul.lo.u32 %r2, %r1, 5;\nrem.u32 %r3, %r2, 17;", "%r3");
    let input: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
    let (sim, got) = run_cp_async(&src, &input);
    let mut read = 0u64;
    for t in 0..64usize {
        let n = t * 5 % 17;
        read += n as u64;
        for b in 0..16 {
            let want = if b < n { input[16 * t + b] } else { 0 };
            assert_eq!(got[16 * t + b], want, "thread {t} byte {b}");
        }
    }
    assert_eq!(sim.last_counters().global_read_bytes, read);
}

#[test]
fn collectives_check_their_member_mask() {
    let sim = Arc::new(SimRuntime::new());
    let rt: Arc<dyn GpuRuntime> = sim.clone();
    let ib = GpuBuffer::zeroed(&rt, 12 * 32).expect("simulated allocation");
    let ob = GpuBuffer::zeroed(&rt, 4 * 32).expect("simulated allocation");
    let cfg = LaunchConfig {
        grid: Dim3::x(1),
        block: Dim3::x(32),
        shared_bytes: 0,
    };
    let args = [
        KernelArg::Ptr(ib.ptr()),
        KernelArg::Ptr(ob.ptr()),
        KernelArg::U32(32),
    ];
    // Lanes 0..16 branch around a full-mask shuffle that lanes 16..32 execute; then a half mask that is right.
    let bad = "mov.u32 %r10, 0;\nsetp.lt.u32 %p1, %r31, 16;\n@%p1 bra $L_skip;\n\
               shfl.sync.bfly.b32 %r10, %r1, 1, 31, -1;\n$L_skip:";
    let good = "mov.u32 %r10, 0;\nsetp.lt.u32 %p1, %r31, 16;\n@%p1 bra $L_skip;\n\
                shfl.sync.bfly.b32 %r10, %r1, 1, 31, 0xffff0000;\n$L_skip:";
    let e = sim
        .launch_ptx("bad", &kernel(bad), "t", cfg, &args)
        .expect_err("diverged members");
    assert!(e.to_string().contains("member"), "{e}");
    sim.launch_ptx("good", &kernel(good), "t", cfg, &args)
        .expect("a mask of the executing lanes is fine");
}

#[test]
fn atomics_race_with_plain_accesses_and_need_initialized_shared_memory() {
    let wrap = |body: &str| {
        format!(
            ".version 8.4\n.target sm_80\n.address_size 64\n.shared .align 4 .b8 sm[256];\n\
             .visible .entry a()\n{{\n.reg .pred %p<4>;\n.reg .b32 %r<10>;\n\
             mov.u32 %r1, %tid.x;\nshl.b32 %r2, %r1, 2;\nmov.u32 %r3, sm;\nadd.u32 %r4, %r3, %r2;\n{body}\nret;\n}}\n"
        )
    };
    let sim = SimRuntime::new();
    let cfg = LaunchConfig {
        grid: Dim3::x(1),
        block: Dim3::x(64),
        shared_bytes: 0,
    };
    // Every thread adds to sm[0] without anyone having written it.
    let e = sim
        .launch_ptx(
            "u",
            &wrap("atom.shared.add.u32 %r5, [%r3], 1;"),
            "a",
            cfg,
            &[],
        )
        .expect_err("uninit");
    assert!(matches!(
        crate::SimError::try_from_kernel(e),
        Some(SimError::UninitShared { .. })
    ));
    // Initialized, then thread 0 adds while thread 1 loads in the same interval.
    let body = "st.shared.u32 [%r4], %r1;\nbar.sync 0;\nsetp.eq.u32 %p1, %r1, 0;\n@%p1 atom.shared.add.u32 %r5, [%r3], 1;\n\
                setp.eq.u32 %p2, %r1, 1;\n@%p2 ld.shared.u32 %r6, [%r3];";
    let e = sim
        .launch_ptx("r", &wrap(body), "a", cfg, &[])
        .expect_err("race");
    match crate::SimError::try_from_kernel(e) {
        Some(SimError::SharedRace {
            site, other_access, ..
        }) => {
            assert_eq!((site.thread, other_access), ([1, 0, 0], "atomic"));
        }
        other => panic!("expected a race, got {other:?}"),
    }
    // Atomics of many threads with a barrier before the plain read are fine.
    let body =
        "st.shared.u32 [%r4], %r1;\nbar.sync 0;\natom.shared.add.u32 %r5, [%r3], 1;\nbar.sync 0;\n\
                ld.shared.u32 %r6, [%r3];";
    sim.launch_ptx("ok", &wrap(body), "a", cfg, &[])
        .expect("ordered by barriers");
}

#[test]
fn cp_async_ignore_src_predicate() {
    // Odd threads set ignore-src: their 16 shared bytes are zero-filled; even threads copy.
    let src = cp_async_kernel("and.b32 %r2, %r1, 1;\nsetp.eq.u32 %p1, %r2, 1;", "%p1");
    let input: Vec<u8> = (0..1024u32).map(|i| (i * 13 + 1) as u8).collect();
    let (_, got) = run_cp_async(&src, &input);
    for (i, (g, x)) in got.iter().zip(&input).enumerate() {
        let want = if (i / 16) % 2 == 1 { 0 } else { *x };
        assert_eq!(*g, want, "byte {i}");
    }
}

#[test]
fn launch_limits_and_maxntid() {
    let src = ".version 8.4\n.target sm_80\n.address_size 64\n.visible .entry m()\n.maxntid 32, 2, 1\n{\nret;\n}\n";
    let sim = SimRuntime::new();
    let launch = |grid: Dim3, block: Dim3| {
        sim.launch_ptx(
            "m",
            src,
            "m",
            LaunchConfig {
                grid,
                block,
                shared_bytes: 0,
            },
            &[],
        )
    };
    launch(Dim3::x(3), Dim3::xy(32, 2)).expect("64 threads are allowed");
    let e = launch(Dim3::x(3), Dim3::xy(32, 3)).expect_err(".maxntid exceeded");
    assert!(e.to_string().contains(".maxntid"), "{e}");
    let e = launch(Dim3::xy(1, 70000), Dim3::x(32)).expect_err("grid.y too large");
    assert!(e.to_string().contains("65535"), "{e}");
}

#[test]
fn warp_sync_orders_many_readers_before_a_write() {
    let wrap = |body: &str| {
        format!(
            ".version 8.4\n.target sm_80\n.address_size 64\n.shared .align 4 .b8 sm[256];\n\
             .visible .entry w()\n{{\n.reg .pred %p<4>;\n.reg .b32 %r<10>;\n\
             mov.u32 %r1, %tid.x;\nshl.b32 %r2, %r1, 2;\nmov.u32 %r3, sm;\nadd.u32 %r4, %r3, %r2;\n\
             st.shared.u32 [%r4], %r1;\nbar.sync 0;\nld.shared.u32 %r5, [%r3];\n{body}\n\
             setp.eq.u32 %p1, %r1, 0;\n@%p1 st.shared.u32 [%r3], %r5;\nret;\n}}\n"
        )
    };
    let sim = SimRuntime::new();
    let cfg = LaunchConfig {
        grid: Dim3::x(1),
        block: Dim3::x(32),
        shared_bytes: 0,
    };
    sim.launch_ptx("ok", &wrap("bar.warp.sync -1;"), "w", cfg, &[])
        .expect("readers ordered by __syncwarp");
    let e = sim
        .launch_ptx("bad", &wrap(""), "w", cfg, &[])
        .expect_err("no __syncwarp");
    assert!(matches!(
        SimError::try_from_kernel(e),
        Some(SimError::SharedRace { .. })
    ));
}

/// `if (lane == 0) s = 1; __syncwarp(mask); if (lane == reader) v = s;` in one warp of 32.
fn warp_sync_mask_kernel(mask: &str, reader: u32) -> String {
    format!(
        ".version 8.4\n.target sm_80\n.address_size 64\n.shared .align 4 .b8 sm[4];\n\
         .visible .entry m()\n{{\n.reg .pred %p<4>;\n.reg .b32 %r<10>;\n\
         mov.u32 %r1, %tid.x;\nmov.u32 %r3, sm;\nmov.u32 %r6, 1;\n\
         setp.eq.u32 %p1, %r1, 0;\n@%p1 st.shared.u32 [%r3], %r6;\nbar.warp.sync {mask};\n\
         setp.eq.u32 %p2, %r1, {reader};\n@%p2 ld.shared.u32 %r5, [%r3];\nret;\n}}\n"
    )
}

#[test]
fn warp_sync_orders_only_the_lanes_of_its_mask() {
    let sim = SimRuntime::new();
    let cfg = LaunchConfig {
        grid: Dim3::x(1),
        block: Dim3::x(32),
        shared_bytes: 0,
    };
    for (mask, reader) in [("-1", 16), ("0xffff", 15), ("0x10001", 16)] {
        sim.launch_ptx("ok", &warp_sync_mask_kernel(mask, reader), "m", cfg, &[])
            .unwrap_or_else(|e| panic!("mask {mask}, reader {reader}: {e}"));
    }
    for (mask, reader) in [("0xffff", 16), ("0xfffffffe", 16), ("0", 1)] {
        let e = sim
            .launch_ptx("bad", &warp_sync_mask_kernel(mask, reader), "m", cfg, &[])
            .expect_err("the reader is outside the mask");
        let e = SimError::try_from_kernel(e);
        assert!(
            matches!(e, Some(SimError::SharedRace { .. })),
            "mask {mask}, reader {reader}: {e:?}"
        );
    }
}

#[test]
fn partial_warp_syncs_order_transitively() {
    // Lane 0 writes; lanes 0 and 1 sync; lanes 1 and 16 sync; lane 16 reads (ordered through lane 1).
    let kernel = |second: &str| {
        format!(
            ".version 8.4\n.target sm_80\n.address_size 64\n.shared .align 4 .b8 sm[4];\n\
             .visible .entry m()\n{{\n.reg .pred %p<4>;\n.reg .b32 %r<10>;\n\
             mov.u32 %r1, %tid.x;\nmov.u32 %r3, sm;\nmov.u32 %r6, 1;\n\
             setp.eq.u32 %p1, %r1, 0;\n@%p1 st.shared.u32 [%r3], %r6;\nbar.warp.sync 3;\n\
             bar.warp.sync {second};\n\
             setp.eq.u32 %p2, %r1, 16;\n@%p2 ld.shared.u32 %r5, [%r3];\nret;\n}}\n"
        )
    };
    let sim = SimRuntime::new();
    let cfg = LaunchConfig {
        grid: Dim3::x(1),
        block: Dim3::x(32),
        shared_bytes: 0,
    };
    sim.launch_ptx("ok", &kernel("0x10002"), "m", cfg, &[])
        .expect("ordered through lane 1");
    let e = sim
        .launch_ptx("bad", &kernel("0x10004"), "m", cfg, &[])
        .expect_err("lane 2 never synced with lane 0");
    assert!(matches!(
        SimError::try_from_kernel(e),
        Some(SimError::SharedRace { .. })
    ));
}

/// Threads with `%tid.x < 32` run `first`, the others `second`, then every thread stores its id to shared memory,
/// passes `bar.sync 0` and reads its neighbour's slot; block of 64, kernel `b`.
fn split_barrier_kernel(first: &str, second: &str) -> String {
    format!(
        ".version 8.4\n.target sm_80\n.address_size 64\n.shared .align 4 .b8 sm[256];\n\
         .visible .entry b()\n{{\n.reg .pred %p<4>;\n.reg .b32 %r<10>;\n\
         mov.u32 %r1, %tid.x;\nshl.b32 %r2, %r1, 2;\nmov.u32 %r3, sm;\nadd.u32 %r4, %r3, %r2;\n\
         st.shared.u32 [%r4], %r1;\nsetp.lt.u32 %p1, %r1, 32;\n@!%p1 bra $L_else;\n\
         {first}\nbra.uni $L_join;\n$L_else:\n{second}\n$L_join:\n\
         xor.b32 %r5, %r2, 128;\nadd.u32 %r6, %r3, %r5;\nld.shared.u32 %r7, [%r6];\nbar.sync 0;\n\
         st.shared.u32 [%r4], %r7;\nret;\n}}\n"
    )
}

/// The 1-based line of the first line of `ptx` containing `needle`.
fn line_of(ptx: &str, needle: &str) -> u32 {
    ptx.lines()
        .position(|l| l.contains(needle))
        .expect("marker line") as u32
        + 1
}

#[test]
fn barrier_ids_are_distinct_and_divergent_aligned_barriers_are_errors() {
    let sim = SimRuntime::new();
    let cfg = LaunchConfig {
        grid: Dim3::x(2),
        block: Dim3::x(64),
        shared_bytes: 0,
    };
    // One barrier instruction with an id other than 0 orders the stores before the loads, and so does
    // `barrier.sync` without `.aligned` reached at two instructions.
    for (a, b, join) in [
        ("", "", "bar.sync 1, 64;"),
        ("barrier.sync 2;", "barrier.sync 2;", ""),
    ] {
        let ptx = split_barrier_kernel(a, b).replace("$L_join:\n", &format!("$L_join:\n{join}\n"));
        sim.launch_ptx("ok", &ptx, "b", cfg, &[])
            .unwrap_or_else(|e| panic!("{a:?} / {b:?} / {join:?}: {e}"));
    }
    // Without the barrier the load is not ordered after the other warp's store (warps run one at a time here,
    // so it reads a byte not yet written).
    let e = sim
        .launch_ptx("race", &split_barrier_kernel("", ""), "b", cfg, &[])
        .expect_err("no barrier");
    assert!(matches!(
        SimError::try_from_kernel(e),
        Some(SimError::SharedRace { .. } | SimError::UninitShared { .. })
    ));
    // Warps waiting on barrier 1 are not released by the others arriving at barrier 0, and vice versa.
    let ptx = split_barrier_kernel("bar.sync 1;", "bar.sync 0; // second");
    let e = sim
        .launch_ptx("ids", &ptx, "b", cfg, &[])
        .expect_err("different ids");
    match SimError::try_from_kernel(e) {
        Some(SimError::Exec { site, msg }) => {
            assert!(
                msg.contains("deadlock") && msg.contains("barrier 1"),
                "{msg}"
            );
            assert_eq!((site.kernel.as_str(), site.block), ("b", [0, 0, 0]));
            assert_eq!(site.ptx_line, line_of(&ptx, "// second"), "{msg}");
            assert_eq!(site.thread, [32, 0, 0]);
        }
        other => panic!("expected a deadlock error, got {other:?}"),
    }
    // `__syncthreads()` in both arms of an if/else is undefined: named with both lines.
    for (a, b) in [
        ("bar.sync 0; // first", "bar.sync 0; // second"),
        (
            "barrier.sync.aligned 0; // first",
            "barrier.sync 0; // second",
        ),
    ] {
        let ptx = split_barrier_kernel(a, b);
        let e = sim
            .launch_ptx("div", &ptx, "b", cfg, &[])
            .expect_err("divergent");
        match SimError::try_from_kernel(e) {
            Some(SimError::Exec { site, msg }) => {
                assert!(msg.contains("divergent aligned barrier 0"), "{msg}");
                let first = line_of(&ptx, "// first");
                assert!(msg.contains(&format!("line {first})")), "{msg}");
                assert_eq!(site.ptx_line, line_of(&ptx, "// second"), "{msg}");
                assert_eq!((site.kernel.as_str(), site.thread), ("b", [32, 0, 0]));
            }
            other => panic!("expected a divergent-barrier error, got {other:?}"),
        }
    }
}
