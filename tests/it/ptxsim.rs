//! ptxsim against plain Rust: small CUDA kernels (tests/it/ptxsim/kernels.cu, PTX committed beside it) run on
//! `SimRuntime` on random data of awkward sizes; planted bugs (tests/it/planted/) must be reported with kernel,
//! block, thread and line; counters must match hand-computed traffic.

use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use rankfold_kernels::{Dim3, GpuBuffer, GpuRuntime, KernelArg, LaunchConfig};
use rankfold_ptxsim::{Class, SimError, SimRuntime};

// Runtime behaviour beyond single kernels (argument checks, module variables, the GEMM stand-in).
mod runtime;

const KERNELS: &str = include_str!("ptxsim/kernels.ptx");
const OOB: &str = include_str!("planted/oob.ptx");
const RACE: &str = include_str!("planted/race.ptx");

/// SplitMix64: a tiny seeded generator, so each test's data is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn int(&mut self, lo: i32, hi: i32) -> i32 {
        lo + (self.next() % (hi - lo) as u64) as i32
    }

    fn f32(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
}

fn runtime() -> (Arc<SimRuntime>, Arc<dyn GpuRuntime>) {
    let sim = Arc::new(SimRuntime::new());
    let rt: Arc<dyn GpuRuntime> = sim.clone();
    (sim, rt)
}

fn cfg(n: usize, block: u32) -> LaunchConfig {
    LaunchConfig {
        grid: Dim3::x((n as u32).div_ceil(block)),
        block: Dim3::x(block),
        shared_bytes: 0,
    }
}

fn ptr(b: &GpuBuffer) -> KernelArg {
    KernelArg::Ptr(b.ptr())
}

fn run(sim: &SimRuntime, entry: &str, config: LaunchConfig, args: &[KernelArg]) -> Result<()> {
    sim.launch_ptx("tests/it/ptxsim/kernels.ptx", KERNELS, entry, config, args)
        .with_context(|| entry.to_string())
}

#[test]
fn divergence_and_reconvergence() -> Result<()> {
    let (sim, rt) = runtime();
    let mut rng = Rng(1);
    for (n, block) in [(1000usize, 96u32), (77, 50), (33, 33)] {
        let x: Vec<i32> = (0..n).map(|_| rng.int(-1000, 1000)).collect();
        let xb = GpuBuffer::from_slice(&rt, &x)?;
        let ob = GpuBuffer::zeroed(&rt, 4 * n)?;
        run(
            &sim,
            "sim_diverge",
            cfg(n, block),
            &[ptr(&xb), ptr(&ob), KernelArg::I32(n as i32)],
        )?;
        let want: Vec<i32> = x
            .iter()
            .map(|&v| {
                let mut acc = 0i32;
                if v % 3 == 0 {
                    acc = if v & 1 != 0 {
                        v.wrapping_mul(7)
                    } else {
                        v - 11
                    };
                } else if v % 3 == 1 {
                    for k in 0..(v & 15) {
                        acc = acc.wrapping_add(k.wrapping_mul(v));
                    }
                } else {
                    let mut k = v & 31;
                    while k > 0 {
                        acc ^= k << 3;
                        k -= 3;
                    }
                }
                acc
            })
            .collect();
        ensure!(
            ob.to_vec::<i32>()? == want,
            "sim_diverge n={n} block={block}"
        );
        ensure!(
            sim.last_counters().divergent_branches > 0,
            "divergent branches were counted"
        );
    }
    Ok(())
}

#[test]
fn shared_reduction_with_barriers() -> Result<()> {
    let (sim, rt) = runtime();
    let mut rng = Rng(2);
    let (n, block) = (1234usize, 128u32);
    let x: Vec<f32> = (0..n).map(|_| rng.f32(-1.0, 1.0)).collect();
    let xb = GpuBuffer::from_slice(&rt, &x)?;
    let nb = n.div_ceil(block as usize);
    let ob = GpuBuffer::zeroed(&rt, 4 * nb)?;
    run(
        &sim,
        "sim_block_sum",
        cfg(n, block),
        &[ptr(&xb), ptr(&ob), KernelArg::I32(n as i32)],
    )?;
    let got = ob.to_vec::<f32>()?;
    for (b, g) in got.iter().enumerate() {
        // The same tree as the kernel, so the f32 sums agree bit for bit.
        let mut s: Vec<f32> = (0..block as usize)
            .map(|t| x.get(b * block as usize + t).copied().unwrap_or(0.0))
            .collect();
        let mut h = block as usize / 2;
        while h > 0 {
            for t in 0..h {
                s[t] += s[t + h];
            }
            h /= 2;
        }
        ensure!(*g == s[0], "block {b}: got {g}, want {}", s[0]);
    }
    let c = sim.last_counters();
    ensure!(
        c.barriers == nb as u64 * 8,
        "barriers: {} (want {} blocks × 8)",
        c.barriers,
        nb
    );
    Ok(())
}

#[test]
fn warp_shuffles() -> Result<()> {
    let (sim, rt) = runtime();
    let mut rng = Rng(3);
    let (n, block) = (999usize, 160u32);
    let x: Vec<i32> = (0..n).map(|_| rng.int(-5000, 5000)).collect();
    let xb = GpuBuffer::from_slice(&rt, &x)?;
    let sum = GpuBuffer::zeroed(&rt, 4)?;
    run(
        &sim,
        "sim_warp_sum",
        cfg(n, block),
        &[ptr(&xb), ptr(&sum), KernelArg::I32(n as i32)],
    )?;
    ensure!(
        sum.to_vec::<i32>()?[0] == x.iter().sum::<i32>(),
        "warp shuffle sum"
    );

    let ob = GpuBuffer::zeroed(&rt, 4 * n)?;
    run(
        &sim,
        "sim_shfl_mix",
        cfg(n, block),
        &[ptr(&xb), ptr(&ob), KernelArg::I32(n as i32)],
    )?;
    let got = ob.to_vec::<i32>()?;
    let total = n.div_ceil(block as usize) * block as usize;
    let v = |i: usize| if i < n { x[i] } else { -1_000_000 };
    for (i, &g) in got.iter().enumerate() {
        let w = i / 32 * 32;
        let m = (w..w + 32)
            .filter(|&j| j < total)
            .map(v)
            .max()
            .expect("a warp has lanes");
        let lane = i % 32;
        let up = if lane >= 3 { v(i - 3) } else { v(i) };
        ensure!(g == m + v(w + 5) + up, "sim_shfl_mix element {i}");
    }
    Ok(())
}

#[test]
fn votes_and_ballots() -> Result<()> {
    let (sim, rt) = runtime();
    let mut rng = Rng(4);
    let (n, block) = (555usize, 96u32);
    let x: Vec<i32> = (0..n)
        .map(|i| {
            if i % 64 < 32 {
                rng.int(0, 100)
            } else {
                rng.int(51, 100)
            }
        })
        .collect();
    let xb = GpuBuffer::from_slice(&rt, &x)?;
    let ob = GpuBuffer::zeroed(&rt, 4 * n)?;
    run(
        &sim,
        "sim_vote",
        cfg(n, block),
        &[
            ptr(&xb),
            ptr(&ob),
            KernelArg::I32(n as i32),
            KernelArg::I32(50),
        ],
    )?;
    let got = ob.to_vec::<i32>()?;
    for (i, &g) in got.iter().enumerate() {
        let w = i / 32 * 32;
        let p: Vec<bool> = (w..w + 32).map(|j| j < n && x[j] > 50).collect();
        let cnt = p.iter().filter(|&&b| b).count() as i32;
        let want = cnt * 4 + i32::from(cnt > 0) * 2 + i32::from(cnt == 32);
        ensure!(g == want, "sim_vote element {i}: got {}, want {want}", g);
    }
    Ok(())
}

#[test]
fn atomics_histogram() -> Result<()> {
    let (sim, rt) = runtime();
    let mut rng = Rng(5);
    let (n, bins) = (3001usize, 37usize);
    let x: Vec<u32> = (0..n).map(|_| rng.next() as u32).collect();
    let xb = GpuBuffer::from_slice(&rt, &x)?;
    let hb = GpuBuffer::zeroed(&rt, 4 * bins)?;
    let config = LaunchConfig {
        grid: Dim3::x(5),
        block: Dim3::x(70),
        shared_bytes: 4 * bins as u32,
    };
    run(
        &sim,
        "sim_histogram",
        config,
        &[
            ptr(&xb),
            ptr(&hb),
            KernelArg::I32(n as i32),
            KernelArg::I32(bins as i32),
        ],
    )?;
    let mut want = vec![0u32; bins];
    for v in &x {
        want[*v as usize % bins] += 1;
    }
    ensure!(hb.to_vec::<u32>()? == want, "histogram");
    ensure!(
        sim.last_counters().thread(Class::Atomic) > 0,
        "atomics counted"
    );
    Ok(())
}

#[test]
fn device_function_call_and_local_memory() -> Result<()> {
    let (sim, rt) = runtime();
    let mut rng = Rng(6);
    let n = 301usize;
    let x: Vec<f32> = (0..n).map(|_| rng.f32(-2.0, 2.0)).collect();
    let xb = GpuBuffer::from_slice(&rt, &x)?;
    let ob = GpuBuffer::zeroed(&rt, 4 * n)?;
    run(
        &sim,
        "sim_call",
        cfg(n, 64),
        &[ptr(&xb), ptr(&ob), KernelArg::I32(n as i32)],
    )?;
    let got = ob.to_vec::<f32>()?;
    for i in 0..n {
        let mut r = 0f32;
        for j in 0..1 + i % 5 {
            r = r.mul_add(x[i], (j + 1) as f32);
        }
        ensure!(
            (got[i] - r).abs() <= 1e-5 * r.abs().max(1.0),
            "sim_call element {i}: got {}, want {r}",
            got[i]
        );
    }

    let xi: Vec<i32> = (0..n).map(|_| rng.int(0, 1 << 20)).collect();
    let xb = GpuBuffer::from_slice(&rt, &xi)?;
    run(
        &sim,
        "sim_local",
        cfg(n, 64),
        &[ptr(&xb), ptr(&ob), KernelArg::I32(n as i32)],
    )?;
    let got = ob.to_vec::<i32>()?;
    for i in 0..n {
        let j = xi[i] % 16;
        ensure!(got[i] == j * j + i as i32, "sim_local element {i}");
    }
    ensure!(
        sim.last_counters().thread(Class::Local) > 0,
        "local accesses counted"
    );
    Ok(())
}

#[test]
fn integer_64_and_float_math() -> Result<()> {
    let (sim, rt) = runtime();
    let mut rng = Rng(7);
    let n = 257usize;
    let a: Vec<u64> = (0..n).map(|_| rng.next()).collect();
    let b: Vec<u64> = (0..n).map(|i| rng.next() >> (i % 64)).collect();
    let (ab, bb) = (
        GpuBuffer::from_slice(&rt, &a)?,
        GpuBuffer::from_slice(&rt, &b)?,
    );
    let ob = GpuBuffer::zeroed(&rt, 8 * n)?;
    run(
        &sim,
        "sim_math64",
        cfg(n, 128),
        &[ptr(&ab), ptr(&bb), ptr(&ob), KernelArg::I32(n as i32)],
    )?;
    let got = ob.to_vec::<u64>()?;
    for i in 0..n {
        let (x, y) = (a[i], b[i]);
        let hi = ((u128::from(x) * u128::from(y)) >> 64) as u64;
        let want =
            (x.wrapping_mul(y) >> 7) ^ ((x / (y | 1)).wrapping_add(hi).wrapping_add(x % 1_000_003));
        ensure!(got[i] == want, "sim_math64 element {i}");
    }

    let x: Vec<f32> = (0..n).map(|_| rng.f32(-10.0, 10.0)).collect();
    let y: Vec<f32> = (0..n).map(|_| rng.f32(0.0, 5.0)).collect();
    let (xb, yb) = (
        GpuBuffer::from_slice(&rt, &x)?,
        GpuBuffer::from_slice(&rt, &y)?,
    );
    let ob = GpuBuffer::zeroed(&rt, 4 * n)?;
    run(
        &sim,
        "sim_float",
        cfg(n, 100),
        &[ptr(&xb), ptr(&yb), ptr(&ob), KernelArg::I32(n as i32)],
    )?;
    let got = ob.to_vec::<f32>()?;
    for i in 0..n {
        let (p, q) = (x[i], y[i]);
        let want = p.mul_add(q, 1.0)
            + p.abs().sqrt()
            + p / (q + 3.0)
            + ((p * 8.0) as i32) as f32
            + half::f16::from_f32(q).to_f32();
        ensure!(
            (got[i] - want).abs() <= 1e-6 * want.abs().max(1.0),
            "sim_float element {i}: got {}, want {want}",
            got[i]
        );
    }
    Ok(())
}

#[test]
fn counters_copy_strided_and_banks() -> Result<()> {
    let (sim, rt) = runtime();
    let n = 1000usize;
    let x: Vec<f32> = (0..4 * n).map(|i| i as f32).collect();
    let xb = GpuBuffer::from_slice(&rt, &x)?;
    let yb = GpuBuffer::zeroed(&rt, 4 * n)?;
    run(
        &sim,
        "sim_copy",
        cfg(n, 96),
        &[ptr(&xb), ptr(&yb), KernelArg::I32(n as i32)],
    )?;
    let c = sim.last_counters();
    ensure!(
        c.global_read_bytes == 4 * n as u64 && c.global_write_bytes == 4 * n as u64,
        "copy bytes:\n{c}"
    );
    ensure!(
        c.global_sectors == (4 * n as u64).div_ceil(32) * 2,
        "copy sectors:\n{c}"
    );

    let stride = 3usize;
    run(
        &sim,
        "sim_strided",
        cfg(n, 96),
        &[
            ptr(&xb),
            ptr(&yb),
            KernelArg::I32(n as i32),
            KernelArg::I32(stride as i32),
        ],
    )?;
    let c = sim.last_counters();
    let mut want = 0u64;
    for w in (0..n).step_by(32) {
        let mut s: Vec<usize> = (w..(w + 32).min(n)).map(|i| i * stride * 4 / 32).collect();
        s.dedup();
        want += s.len() as u64;
    }
    want += (4 * n as u64).div_ceil(32);
    ensure!(
        c.global_sectors == want,
        "strided sectors {} want {want}:\n{c}",
        c.global_sectors
    );
    ensure!(
        yb.to_vec::<f32>()? == (0..n).map(|i| x[i * stride]).collect::<Vec<_>>(),
        "strided values"
    );

    for stride in [1u32, 2, 3, 8, 32] {
        let one = LaunchConfig {
            grid: Dim3::x(1),
            block: Dim3::x(32),
            shared_bytes: 0,
        };
        run(
            &sim,
            "sim_banks",
            one,
            &[ptr(&xb), ptr(&yb), KernelArg::I32(stride as i32)],
        )?;
        let c = sim.last_counters();
        // Reads: lane t reads word (t·stride) mod 1024; the 32 stores of the fill loop are conflict-free.
        let mut per_bank = vec![Vec::new(); 32];
        for t in 0..32u32 {
            let w = (t * stride) % 1024;
            if !per_bank[(w % 32) as usize].contains(&w) {
                per_bank[(w % 32) as usize].push(w);
            }
        }
        let want = per_bank.iter().map(Vec::len).max().unwrap_or(1) as u64 - 1;
        ensure!(
            c.bank_conflicts == want,
            "stride {stride}: {} bank conflicts, want {want}",
            c.bank_conflicts
        );
    }
    Ok(())
}

fn downcast(e: rankfold_kernels::Error) -> Result<SimError> {
    match e {
        rankfold_kernels::Error::Backend(b) => match b.downcast::<SimError>() {
            Ok(s) => Ok(*s),
            Err(b) => bail!("not a SimError: {b}"),
        },
        e => bail!("not a backend error: {e}"),
    }
}

#[test]
fn planted_out_of_bounds() -> Result<()> {
    let (sim, rt) = runtime();
    let (n, block) = (200usize, 64u32);
    let xb = GpuBuffer::from_slice(&rt, &vec![1f32; n])?;
    let yb = GpuBuffer::zeroed(&rt, 4 * n)?;
    let e = sim
        .launch_ptx(
            "planted/oob.ptx",
            OOB,
            "planted_oob",
            cfg(n + 1, block),
            &[ptr(&xb), ptr(&yb), KernelArg::I32(n as i32)],
        )
        .err()
        .context("the out-of-bounds store was not reported")?;
    let msg = e.to_string();
    let SimError::OutOfBounds {
        site, access, addr, ..
    } = downcast(e)?
    else {
        bail!("wrong error: {msg}")
    };
    ensure!(
        access == "store" && addr == yb.ptr().0 + 4 * n as u64,
        "{msg}"
    );
    ensure!(
        site.kernel == "planted_oob" && site.block == [n as u32 / block, 0, 0],
        "{msg}"
    );
    ensure!(site.thread == [n as u32 % block, 0, 0], "{msg}");
    ensure!(
        site.source
            .as_ref()
            .is_some_and(|(f, l)| f.ends_with("oob.cu") && *l == 13),
        "{msg}"
    );
    ensure!(
        msg.contains("planted_oob")
            && msg.contains("block (3,0,0)")
            && msg.contains("thread (8,0,0)"),
        "{msg}"
    );
    ensure!(
        msg.contains("PTX line") && msg.contains("oob.cu:13"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn planted_race() -> Result<()> {
    let (sim, rt) = runtime();
    let n = 150usize;
    let xb = GpuBuffer::from_slice(&rt, &vec![1f32; n])?;
    let yb = GpuBuffer::zeroed(&rt, 4 * n)?;
    let e = sim
        .launch_ptx(
            "planted/race.ptx",
            RACE,
            "planted_race",
            cfg(n, 64),
            &[ptr(&xb), ptr(&yb), KernelArg::I32(n as i32)],
        )
        .err()
        .context("the missing __syncthreads() was not reported")?;
    let msg = e.to_string();
    let SimError::SharedRace {
        site,
        other_thread,
        access,
        other_access,
        ..
    } = downcast(e)?
    else {
        bail!("wrong error: {msg}")
    };
    ensure!(
        site.kernel == "planted_race" && site.block == [0, 0, 0] && site.thread == [0, 0, 0],
        "{msg}"
    );
    ensure!(
        other_thread == [1, 0, 0] && access == "load" && other_access == "store",
        "{msg}"
    );
    ensure!(
        site.source
            .as_ref()
            .is_some_and(|(f, l)| f.ends_with("race.cu") && *l == 16),
        "{msg}"
    );
    ensure!(
        msg.contains("planted_race") && msg.contains("PTX line") && msg.contains("race.cu:16"),
        "{msg}"
    );
    Ok(())
}

const CHECKS: &str = include_str!("planted/checks.ptx");

#[test]
fn planted_checks() -> Result<()> {
    let (sim, rt) = runtime();
    let one = LaunchConfig {
        grid: Dim3::x(1),
        block: Dim3::x(64),
        shared_bytes: 0,
    };
    let xb = GpuBuffer::from_slice(&rt, &[1f32; 80])?;
    let yb = GpuBuffer::zeroed(&rt, 4 * 64)?;
    let launch = |entry: &str, args: &[KernelArg]| -> Result<SimError> {
        let e = sim
            .launch_ptx("planted/checks.ptx", CHECKS, entry, one, args)
            .err()
            .with_context(|| format!("{entry} passed"))?;
        downcast(e)
    };

    let e = launch("planted_uninit", &[ptr(&yb)])?;
    let SimError::UninitShared { site, offset } = &e else {
        bail!("planted_uninit: {e}")
    };
    ensure!(site.thread == [1, 0, 0] && *offset == 4, "{e}");

    let e = launch("planted_misaligned", &[ptr(&xb), ptr(&yb)])?;
    let SimError::Misaligned {
        site, addr, size, ..
    } = &e
    else {
        bail!("planted_misaligned: {e}")
    };
    ensure!(
        site.thread == [0, 0, 0] && *addr == xb.ptr().0 + 2 && *size == 4,
        "{e}"
    );

    let idx: Vec<i32> = (0..64).map(|t| if t == 37 { 64 } else { 63 - t }).collect();
    let ib = GpuBuffer::from_slice(&rt, &idx)?;
    let e = launch("planted_shared_oob", &[ptr(&ib), ptr(&yb)])?;
    let SimError::OutOfBounds { site, space, .. } = &e else {
        bail!("planted_shared_oob: {e}")
    };
    ensure!(site.thread == [37, 0, 0] && *space == "shared", "{e}");

    let e = launch("planted_write_race", &[ptr(&yb)])?;
    let SimError::SharedRace {
        site,
        other_thread,
        access,
        other_access,
        ..
    } = &e
    else {
        bail!("planted_write_race: {e}")
    };
    ensure!(
        site.thread == [32, 0, 0] && *other_thread == [0, 0, 0],
        "{e}"
    );
    ensure!(*access == "store" && *other_access == "store", "{e}");
    Ok(())
}

#[test]
fn divergent_call_reconverges_before_a_shuffle() -> Result<()> {
    let (sim, rt) = runtime();
    let mut rng = Rng(10);
    let (n, block) = (200usize, 64u32);
    let x: Vec<i32> = (0..n).map(|_| rng.int(-1000, 1000)).collect();
    let xb = GpuBuffer::from_slice(&rt, &x)?;
    let ob = GpuBuffer::zeroed(&rt, 4 * n)?;
    run(
        &sim,
        "sim_call_diverge",
        cfg(n, block),
        &[ptr(&xb), ptr(&ob), KernelArg::I32(n as i32)],
    )?;
    let w = |j: usize| if x[j] & 1 != 0 { 2 * x[j] + 1 } else { x[j] };
    let want: Vec<i32> = (0..n).map(|i| w(i) + w(i ^ 1)).collect();
    ensure!(ob.to_vec::<i32>()? == want, "sim_call_diverge");
    Ok(())
}

const CP_ASYNC: &str = include_str!("planted/cp_async.ptx");

#[test]
fn planted_cp_async_without_wait() -> Result<()> {
    let (sim, rt) = runtime();
    let x: Vec<f32> = (0..64).map(|i| i as f32 * 0.5).collect();
    let xb = GpuBuffer::from_slice(&rt, &x)?;
    let yb = GpuBuffer::zeroed(&rt, 4 * 64)?;
    let one = LaunchConfig {
        grid: Dim3::x(1),
        block: Dim3::x(64),
        shared_bytes: 0,
    };
    let args = [ptr(&xb), ptr(&yb)];
    sim.launch_ptx(
        "planted/cp_async.ptx",
        CP_ASYNC,
        "planted_cp_async_ok",
        one,
        &args,
    )
    .context("the kernel that waits must pass")?;
    ensure!(
        yb.to_vec::<f32>()? == (0..64).map(|t| x[(t + 1) % 64]).collect::<Vec<_>>(),
        "planted_cp_async_ok"
    );
    let e = sim
        .launch_ptx(
            "planted/cp_async.ptx",
            CP_ASYNC,
            "planted_cp_async",
            one,
            &args,
        )
        .err()
        .context("the missing cp.async.wait_group was not reported")?;
    let msg = e.to_string();
    let SimError::AsyncCopyPending {
        site, other_thread, ..
    } = downcast(e)?
    else {
        bail!("wrong error: {msg}")
    };
    ensure!(
        site.kernel == "planted_cp_async" && site.thread == [0, 0, 0] && other_thread == [1, 0, 0],
        "{msg}"
    );
    ensure!(msg.contains("cp_async.cu:"), "{msg}");
    Ok(())
}
