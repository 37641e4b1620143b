//! GPU timing shared by the kernel benches, included in each with `#[path = "common/gpu.rs"] mod gpu;`: their
//! criterion settings, the CUDA runtime with its L2 flush buffer, and a criterion bench whose timing loop
//! flushes before each launch and synchronizes before the clock stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion};
use rankfold_kernels::{CudaRuntime, GpuBuffer, GpuRuntime};

/// The kernel benches' criterion settings: a half-second warm-up, two seconds of measurement.
pub(crate) fn criterion() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2))
}

/// Bytes overwritten to evict the H200's 60 MiB L2 between GPU launches.
const FLUSH_BYTES: usize = 256 << 20;

/// CUDA device 0 and the buffer that flushes its L2 cache.
pub(crate) struct Gpu {
    pub(crate) rt: Arc<dyn GpuRuntime>,
    flush: GpuBuffer,
}

impl Gpu {
    /// Device 0, or `None` after a note that `bench`'s GPU rows are skipped when there is no CUDA device.
    pub(crate) fn new(bench: &str) -> Option<Gpu> {
        let Ok(cuda) = CudaRuntime::new(0) else {
            eprintln!("{bench} bench: no CUDA device, GPU rows skipped");
            return None;
        };
        let rt: Arc<dyn GpuRuntime> = Arc::new(cuda);
        let flush = GpuBuffer::zeroed(&rt, FLUSH_BYTES).expect("L2 flush buffer");
        Some(Gpu { rt, flush })
    }

    /// Benchmarks `run` in `group` as `id`, timed by [`Gpu::timed`] (the group's throughput is the caller's).
    pub(crate) fn bench(&self, group: &mut BenchmarkGroup<'_, WallTime>, id: BenchmarkId, run: &dyn Fn()) {
        group.bench_function(id, |b| b.iter_custom(|iters| self.timed(iters, run)));
    }

    /// Runs `run` `iters` times, each after an L2 flush, and returns the time from launch to synchronize.
    fn timed(&self, iters: u64, run: &dyn Fn()) -> Duration {
        let rt = &self.rt;
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            // SAFETY: the range is the flush buffer's own allocation.
            unsafe { rt.memset(self.flush.ptr(), 1, self.flush.len()) }.expect("flush L2");
            rt.synchronize().expect("synchronize");
            let start = Instant::now();
            run();
            rt.synchronize().expect("synchronize");
            total += start.elapsed();
        }
        total
    }
}
