//! `CudaRuntime`: the `GpuRuntime` of a real NVIDIA GPU, on cudarc's driver and cuBLAS bindings.
//!
//! The driver library is loaded at run time (cudarc's `dynamic-loading`), so building needs no CUDA and a machine
//! without a driver gets `Error::NoDevice` from `CudaRuntime::new`, never a panic. All work goes to the device's
//! legacy default stream, so copies, memsets, launches and cuBLAS calls run in the order they are issued.
//!
//! Each `PtxModule` is JIT-loaded once, on the first launch of one of its kernels, and each function handle is
//! cached by `KernelId`. Allocations are tracked (pointer → size), so a copy or launch through a pointer that
//! is not inside a live allocation is reported as `Error::InvalidPointer` rather than left to fault the GPU.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::cublas::result as blas;
use cudarc::cublas::sys as blas_sys;
use cudarc::driver::{result, sys, CudaContext, CudaStream, DriverError};

use crate::{
    DevicePtr, Error, GemmConfig, GemmDType, GpuRuntime, KernelId, Launch, MemoryInfo, PtxModule,
    Result,
};

/// Dynamic shared memory a kernel may use without opting in through a function attribute.
const DEFAULT_DYNAMIC_SHARED: u32 = 48 * 1024;

/// A CUDA device driven through the driver API (one primary context, the legacy default stream).
pub struct CudaRuntime {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    kernels: Mutex<Kernels>,
    memory: Mutex<Allocations>,
    cublas: Mutex<Option<CublasHandle>>,
}

/// Loaded modules (indexed by `PtxModule::index`) and the function handles resolved from them.
struct Kernels {
    modules: Vec<Option<sys::CUmodule>>,
    functions: HashMap<KernelId, Function>,
}

/// A resolved kernel: its handle, the byte size of each `.param` as its PTX declares them, and the dynamic
/// shared memory it has been allowed so far.
struct Function {
    handle: sys::CUfunction,
    param_sizes: Option<Vec<usize>>,
    max_dynamic_shared: u32,
}

// SAFETY: CUDA module and function handles are plain identifiers that any host thread may use once the owning
// context is current; every method binds the context before using them, and the mutex serializes access.
unsafe impl Send for Kernels {}

/// Live allocations: start address → length in bytes.
#[derive(Debug, Default)]
struct Allocations {
    live: BTreeMap<u64, usize>,
    live_bytes: usize,
}

impl Allocations {
    /// Whether `ptr..ptr + bytes` lies inside one live allocation (an empty range touches nothing and passes).
    fn check(&self, op: &'static str, ptr: DevicePtr, bytes: usize) -> Result<()> {
        let inside = bytes == 0
            || self
                .live
                .range(..=ptr.0)
                .next_back()
                .is_some_and(|(&start, &len)| {
                    ptr.0
                        .checked_add(bytes as u64)
                        .is_some_and(|end| end <= start + len as u64)
                });
        if inside {
            Ok(())
        } else {
            Err(Error::InvalidPointer {
                op,
                ptr: ptr.0,
                bytes,
            })
        }
    }
}

/// A cuBLAS handle bound to the runtime's stream, destroyed with the runtime.
struct CublasHandle(blas_sys::cublasHandle_t);

// SAFETY: a cuBLAS handle may be used from any thread as long as calls on it do not overlap; the runtime only
// touches it while holding the mutex around it.
unsafe impl Send for CublasHandle {}

impl std::fmt::Debug for CudaRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let live_bytes = self.memory.lock().map(|m| m.live_bytes).unwrap_or(0);
        f.debug_struct("CudaRuntime")
            .field("name", &self.name)
            .field("live_bytes", &live_bytes)
            .finish()
    }
}

impl CudaRuntime {
    /// Opens device `ordinal`, or explains why there is none: no driver library, no device, or too few devices.
    pub fn new(ordinal: usize) -> Result<Self> {
        // SAFETY: `is_culib_present` only tries to open the driver library with dlopen; it calls nothing in it.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::NoDevice(
                "the CUDA driver library (libcuda.so.1) was not found; install the NVIDIA driver, \
                 or run the GPU path on ptxsim (Device::Sim)"
                    .into(),
            ));
        }
        let count = CudaContext::device_count().map_err(|e| {
            Error::NoDevice(format!(
                "the CUDA driver did not initialize ({e}); is a GPU visible?"
            ))
        })?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::NoDevice(format!(
                "device {ordinal} was asked for, the driver sees {count}"
            )));
        }
        let ctx = CudaContext::new(ordinal)?;
        let stream = ctx.default_stream();
        let device = ctx.name().unwrap_or_else(|_| "unknown device".into());
        let (major, minor) = ctx.compute_capability()?;
        Ok(Self {
            name: format!("cuda:{ordinal} ({device}, sm_{major}{minor})"),
            stream,
            kernels: Mutex::new(Kernels {
                modules: vec![None; PtxModule::ALL.len()],
                functions: HashMap::new(),
            }),
            memory: Mutex::new(Allocations::default()),
            cublas: Mutex::new(None),
            ctx,
        })
    }

    /// Bytes currently allocated through this runtime.
    pub fn live_bytes(&self) -> usize {
        lock(&self.memory).live_bytes
    }

    /// Runs `launch` once to warm up, then `reps` times between two CUDA events; the mean time of one launch
    /// in milliseconds.
    ///
    /// # Safety
    /// As for `GpuRuntime::launch`: every pointer argument covers what the kernel reads and writes.
    pub unsafe fn time_launch(&self, launch: &Launch, reps: usize) -> Result<f64> {
        let reps = reps.max(1);
        // SAFETY: the caller upholds `launch`'s contract, and repeating a launch reads and writes the same ranges.
        unsafe { self.launch(launch)? };
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.ctx.new_event(flags)?;
        let end = self.ctx.new_event(flags)?;
        start.record(&self.stream)?;
        for _ in 0..reps {
            // SAFETY: as above.
            unsafe { self.launch(launch)? };
        }
        end.record(&self.stream)?;
        let ms = start.elapsed_ms(&end)?;
        Ok(f64::from(ms) / reps as f64)
    }

    /// The function handle of `kernel`, loading its module first if this is its first launch.
    fn function<'a>(&self, kernels: &'a mut Kernels, kernel: KernelId) -> Result<&'a mut Function> {
        if !kernels.functions.contains_key(&kernel) {
            let module = kernel.module();
            let loaded = match kernels.modules[module.index()] {
                Some(m) => m,
                None => {
                    let image = CString::new(module.ptx()).map_err(|_| Error::Arguments {
                        kernel: kernel.name().into(),
                        msg: format!("the PTX of module `{}` contains a NUL byte", module.stem()),
                    })?;
                    // SAFETY: `image` is a NUL-terminated PTX text that outlives the call (the driver copies it),
                    // and the context is current on this thread.
                    let m = unsafe { result::module::load_data(image.as_ptr().cast()) }.map_err(
                        |e| {
                            Error::Backend(
                                format!("the driver could not load ptx/{}.ptx: {e}", module.stem())
                                    .into(),
                            )
                        },
                    )?;
                    kernels.modules[module.index()] = Some(m);
                    m
                }
            };
            let name = CString::new(kernel.name())
                .expect("kernel names are C identifiers without NUL bytes");
            // SAFETY: `loaded` is a live module of the current context.
            let handle = unsafe { result::module::get_function(loaded, name) }.map_err(|e| {
                Error::Backend(
                    format!(
                        "ptx/{}.ptx has no usable entry `{}`: {e}",
                        module.stem(),
                        kernel.name()
                    )
                    .into(),
                )
            })?;
            let param_sizes = entry_param_sizes(module.ptx(), kernel.name());
            kernels.functions.insert(
                kernel,
                Function {
                    handle,
                    param_sizes,
                    max_dynamic_shared: DEFAULT_DYNAMIC_SHARED,
                },
            );
        }
        Ok(kernels
            .functions
            .get_mut(&kernel)
            .expect("the function was inserted just above"))
    }

    /// The cuBLAS handle, created on first use.
    fn cublas(&self) -> Result<MutexGuard<'_, Option<CublasHandle>>> {
        let mut guard = lock(&self.cublas);
        if guard.is_none() {
            // SAFETY: `is_culib_present` only tries to open the cuBLAS library; it calls nothing in it.
            if !unsafe { blas_sys::is_culib_present() } {
                return Err(Error::Backend(
                    "cuBLAS (libcublas.so.12) was not found next to the CUDA driver; install the CUDA 12 \
                     cuBLAS library (e.g. the nvidia-cublas-cu12 wheel) and put it on LD_LIBRARY_PATH"
                        .into(),
                ));
            }
            self.ctx.bind_to_thread()?;
            let handle = blas::create_handle().map_err(Error::Cublas)?;
            // SAFETY: `handle` was just created and the stream belongs to the current context.
            unsafe { blas::set_stream(handle, self.stream.cu_stream() as _) }
                .map_err(Error::Cublas)?;
            *guard = Some(CublasHandle(handle));
        }
        Ok(guard)
    }
}

impl Drop for CudaRuntime {
    fn drop(&mut self) {
        // Errors cannot be returned from drop; the context records them and its own drop releases it.
        let _ = self.ctx.bind_to_thread();
        if let Some(CublasHandle(handle)) = lock(&self.cublas).take() {
            // SAFETY: the handle was created by `cublas()` and is dropped exactly once, here.
            let _ = unsafe { blas::destroy_handle(handle) };
        }
        let _ = self.stream.synchronize();
        let kernels = std::mem::replace(
            &mut *lock(&self.kernels),
            Kernels {
                modules: Vec::new(),
                functions: HashMap::new(),
            },
        );
        for module in kernels.modules.into_iter().flatten() {
            // SAFETY: each module was loaded once by `function` and no launch uses it after the synchronize above.
            let _ = unsafe { result::module::unload(module) };
        }
        for (&ptr, _) in lock(&self.memory).live.iter() {
            // SAFETY: the allocation was made by `alloc` and never freed; all work on it has finished.
            let _ = unsafe { result::free_sync(ptr) };
        }
    }
}

impl GpuRuntime for CudaRuntime {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        self.ctx.bind_to_thread()?;
        let bytes = bytes.max(1);
        // SAFETY: the context is current; the memory is handed out uninitialized, as the trait documents.
        let ptr = match unsafe { result::malloc_sync(bytes) } {
            Ok(p) => p,
            Err(DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY)) => {
                let (free, total) = result::mem_get_info().unwrap_or((0, 0));
                return Err(Error::OutOfMemory {
                    requested: bytes,
                    free,
                    total,
                });
            }
            Err(e) => return Err(e.into()),
        };
        let mut memory = lock(&self.memory);
        memory.live.insert(ptr, bytes);
        memory.live_bytes += bytes;
        Ok(DevicePtr(ptr))
    }

    unsafe fn free(&self, ptr: DevicePtr) -> Result<()> {
        let mut memory = lock(&self.memory);
        let Some(bytes) = memory.live.remove(&ptr.0) else {
            return Err(Error::InvalidPointer {
                op: "free",
                ptr: ptr.0,
                bytes: 0,
            });
        };
        memory.live_bytes -= bytes;
        self.ctx.bind_to_thread()?;
        // SAFETY: `ptr` starts a live allocation of this context (just checked and removed from the table), and
        // the caller promises that no pending launch still uses it (the trait's contract).
        unsafe { result::free_sync(ptr.0) }?;
        Ok(())
    }

    unsafe fn copy_h2d(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        lock(&self.memory).check("copy_h2d", dst, src.len())?;
        self.ctx.bind_to_thread()?;
        // SAFETY: the destination range lies inside a live allocation (checked above); a synchronous copy from
        // pageable memory has finished reading `src` when it returns.
        unsafe { result::memcpy_htod_sync(dst.0, src) }?;
        Ok(())
    }

    unsafe fn copy_d2h(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        lock(&self.memory).check("copy_d2h", src, dst.len())?;
        self.ctx.bind_to_thread()?;
        self.stream.synchronize()?;
        // SAFETY: the source range lies inside a live allocation (checked above) and all earlier work on the
        // stream has finished, so the bytes are final.
        unsafe { result::memcpy_dtoh_sync(dst, src.0) }?;
        Ok(())
    }

    unsafe fn copy_d2d(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()> {
        {
            let memory = lock(&self.memory);
            memory.check("copy_d2d (destination)", dst, bytes)?;
            memory.check("copy_d2d (source)", src, bytes)?;
        }
        self.ctx.bind_to_thread()?;
        // SAFETY: both ranges lie inside live allocations (checked above); the copy is ordered on the stream.
        unsafe { result::memcpy_dtod_async(dst.0, src.0, bytes, self.stream.cu_stream()) }?;
        Ok(())
    }

    unsafe fn memset(&self, dst: DevicePtr, value: u8, bytes: usize) -> Result<()> {
        lock(&self.memory).check("memset", dst, bytes)?;
        self.ctx.bind_to_thread()?;
        // SAFETY: the range lies inside a live allocation (checked above); the memset is ordered on the stream.
        unsafe { result::memset_d8_async(dst.0, value, bytes, self.stream.cu_stream()) }?;
        Ok(())
    }

    unsafe fn launch(&self, launch: &Launch) -> Result<()> {
        let kernel = launch.kernel;
        let arguments = |msg: String| Error::Arguments {
            kernel: kernel.name().into(),
            msg,
        };
        let cfg = launch.config;
        if cfg.grid.count() == 0 || cfg.block.count() == 0 {
            return Err(arguments(format!(
                "empty launch: grid {:?}, block {:?}",
                cfg.grid, cfg.block
            )));
        }
        self.ctx.bind_to_thread()?;
        let mut kernels = lock(&self.kernels);
        let function = self.function(&mut kernels, kernel)?;
        if let Some(sizes) = &function.param_sizes {
            let given: Vec<usize> = launch.args.iter().map(|a| a.size()).collect();
            if &given != sizes {
                return Err(arguments(format!(
                    "the PTX declares parameters of {sizes:?} bytes, the launch passes {given:?}"
                )));
            }
        }
        if cfg.shared_bytes > function.max_dynamic_shared {
            function.handle_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                cfg.shared_bytes,
            )?;
            function.max_dynamic_shared = cfg.shared_bytes;
        }
        // Each argument sits in its own 8-byte slot (every kernel argument is at most 8 bytes); the driver copies
        // as many bytes from each slot as the kernel's parameter declares.
        let mut slots: Vec<u64> = launch
            .args
            .iter()
            .map(|arg| {
                let mut bytes = [0u8; 8];
                let b = arg.to_bytes();
                bytes[..b.len()].copy_from_slice(&b);
                u64::from_le_bytes(bytes)
            })
            .collect();
        let mut params: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|s| (s as *mut u64).cast::<c_void>())
            .collect();
        // SAFETY: the function handle is live, `params` holds one pointer per declared parameter (sizes checked
        // above against the PTX), and the slots outlive the call (the driver copies them before returning). The
        // caller guarantees that the pointer arguments cover what the kernel touches.
        unsafe {
            result::launch_kernel(
                function.handle,
                (cfg.grid.x, cfg.grid.y, cfg.grid.z),
                (cfg.block.x, cfg.block.y, cfg.block.z),
                cfg.shared_bytes,
                self.stream.cu_stream(),
                &mut params,
            )
        }?;
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize()?;
        Ok(())
    }

    unsafe fn gemm(&self, cfg: &GemmConfig) -> Result<()> {
        let plan = GemmPlan::new(cfg)?;
        {
            let memory = lock(&self.memory);
            memory.check("gemm (a)", cfg.a, plan.a_bytes)?;
            memory.check("gemm (b)", cfg.b, plan.b_bytes)?;
            memory.check("gemm (c)", cfg.c, plan.c_bytes)?;
        }
        if cfg.m == 0 || cfg.n == 0 {
            return Ok(());
        }
        let guard = self.cublas()?;
        let handle = guard.as_ref().expect("cublas() leaves a handle in place").0;
        self.ctx.bind_to_thread()?;
        let (alpha, beta) = (cfg.alpha, cfg.beta);
        // cuBLAS is column-major: a row-major matrix with row stride `ld` is its transpose, column-major with
        // leading dimension `ld`. So the row-major C = op(A)·op(B) is computed as the column-major
        // Cᵀ = op(B)ᵀ·op(A)ᵀ, i.e. with the operands swapped and m and n exchanged.
        let op = |t: bool| {
            if t {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let (m, n, k) = (plan.n, plan.m, plan.k);
        // SAFETY: the three matrices lie inside live allocations (checked above from the shapes and strides),
        // the dimensions fit in i32 (checked by `GemmPlan`), alpha and beta are host f32 values that outlive the
        // call (the default pointer mode reads them before returning), and the handle's stream is ours.
        let status = unsafe {
            match cfg.dtype {
                GemmDType::F32 => blas::sgemm(
                    handle,
                    op(cfg.trans_b),
                    op(cfg.trans_a),
                    m,
                    n,
                    k,
                    &alpha,
                    cfg.b.0 as *const f32,
                    plan.ldb,
                    cfg.a.0 as *const f32,
                    plan.lda,
                    &beta,
                    cfg.c.0 as *mut f32,
                    plan.ldc,
                ),
                GemmDType::Bf16 => blas::gemm_ex(
                    handle,
                    op(cfg.trans_b),
                    op(cfg.trans_a),
                    m,
                    n,
                    k,
                    (&alpha as *const f32).cast(),
                    cfg.b.0 as *const c_void,
                    blas_sys::cudaDataType::CUDA_R_16BF,
                    plan.ldb,
                    cfg.a.0 as *const c_void,
                    blas_sys::cudaDataType::CUDA_R_16BF,
                    plan.lda,
                    (&beta as *const f32).cast(),
                    cfg.c.0 as *mut c_void,
                    blas_sys::cudaDataType::CUDA_R_16BF,
                    plan.ldc,
                    blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                ),
            }
        };
        status.map_err(Error::Cublas)
    }

    fn memory_info(&self) -> Result<MemoryInfo> {
        let (free, total) = self.ctx.mem_get_info()?;
        Ok(MemoryInfo { free, total })
    }
}

impl Function {
    /// Sets a function attribute (used to allow more than 48 KiB of dynamic shared memory).
    fn handle_attribute(&self, attribute: sys::CUfunction_attribute, value: u32) -> Result<()> {
        let value = i32::try_from(value).map_err(|_| Error::Arguments {
            kernel: String::from("(function attribute)"),
            msg: format!("attribute value {value} does not fit in i32"),
        })?;
        // SAFETY: the handle is a live function of the current context.
        unsafe { result::function::set_function_attribute(self.handle, attribute, value) }?;
        Ok(())
    }
}

/// A `GemmConfig` checked for cuBLAS: dimensions as i32 and the byte extent of each matrix as stored.
#[derive(Debug)]
struct GemmPlan {
    m: i32,
    n: i32,
    k: i32,
    lda: i32,
    ldb: i32,
    ldc: i32,
    a_bytes: usize,
    b_bytes: usize,
    c_bytes: usize,
}

impl GemmPlan {
    fn new(cfg: &GemmConfig) -> Result<Self> {
        let shape = |msg: String| Error::Shape { op: "gemm", msg };
        let int = |name: &str, v: usize| {
            i32::try_from(v).map_err(|_| shape(format!("{name} = {v} does not fit in i32")))
        };
        let elem = match cfg.dtype {
            GemmDType::F32 => 4,
            GemmDType::Bf16 => 2,
        };
        // Rows and columns of each matrix as stored (row-major).
        let (a_rows, a_cols) = if cfg.trans_a {
            (cfg.k, cfg.m)
        } else {
            (cfg.m, cfg.k)
        };
        let (b_rows, b_cols) = if cfg.trans_b {
            (cfg.n, cfg.k)
        } else {
            (cfg.k, cfg.n)
        };
        let extent = |name: &str, rows: usize, cols: usize, ld: usize| -> Result<usize> {
            if ld < cols.max(1) {
                return Err(shape(format!(
                    "{name}: row stride {ld} is less than its {cols} columns"
                )));
            }
            let elems = if rows == 0 || cols == 0 {
                0
            } else {
                (rows - 1) * ld + cols
            };
            Ok(elems * elem)
        };
        Ok(Self {
            m: int("m", cfg.m)?,
            n: int("n", cfg.n)?,
            k: int("k", cfg.k)?,
            lda: int("lda", cfg.lda)?,
            ldb: int("ldb", cfg.ldb)?,
            ldc: int("ldc", cfg.ldc)?,
            a_bytes: extent("a", a_rows, a_cols, cfg.lda)?,
            b_bytes: extent("b", b_rows, b_cols, cfg.ldb)?,
            c_bytes: extent("c", cfg.m, cfg.n, cfg.ldc)?,
        })
    }
}

/// The byte size of each `.param` of `.entry name` in `ptx`, or `None` when the declaration is not found or
/// has a form this reader does not know.
pub(crate) fn entry_param_sizes(ptx: &str, name: &str) -> Option<Vec<usize>> {
    let start = ptx.find(&format!(".entry {name}("))?;
    let rest = &ptx[start..];
    let list = &rest[rest.find('(')? + 1..rest.find(')')?];
    let mut sizes = Vec::new();
    for param in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let words: Vec<&str> = param.split_whitespace().collect();
        if words.first() != Some(&".param") {
            return None;
        }
        let last = *words.last()?;
        let size = if let Some((_, count)) = last.split_once('[') {
            // An aggregate: `.param .align A .b8 name[N]`.
            count.strip_suffix(']')?.parse().ok()?
        } else {
            match words.get(1).copied()? {
                ".u8" | ".s8" | ".b8" => 1,
                ".u16" | ".s16" | ".b16" | ".f16" => 2,
                ".u32" | ".s32" | ".b32" | ".f32" => 4,
                ".u64" | ".s64" | ".b64" | ".f64" => 8,
                _ => return None,
            }
        };
        sizes.push(size);
    }
    Some(sizes)
}

/// Locks a mutex, recovering the data if another thread panicked while holding it (the tables stay consistent:
/// every update is a single insert or remove).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_without_a_driver_is_an_error_not_a_panic() {
        // SAFETY: only probes for the library.
        let present = unsafe { sys::is_culib_present() };
        match CudaRuntime::new(0) {
            Err(Error::NoDevice(msg)) => assert!(!msg.is_empty()),
            Err(other) => panic!("expected Error::NoDevice, got {other}"),
            Ok(rt) => assert!(present, "a runtime opened without a driver library: {rt:?}"),
        }
        if !present {
            let err = CudaRuntime::new(7).expect_err("no driver, so no device 7");
            assert!(err.to_string().contains("libcuda"), "{err}");
        }
    }

    #[test]
    fn param_sizes_of_scalars_pointers_and_aggregates() {
        let ptx = ".visible .entry k_a(\n\t.param .u64 k_a_param_0,\n\t.param .f32 k_a_param_1,\n\
                   \t.param .align 4 .b8 k_a_param_2[12]\n)\n{\n}\n.visible .entry k_b()\n{\n}\n";
        assert_eq!(entry_param_sizes(ptx, "k_a"), Some(vec![8, 4, 12]));
        assert_eq!(entry_param_sizes(ptx, "k_b"), Some(vec![]));
        assert_eq!(entry_param_sizes(ptx, "k_c"), None);
    }

    #[test]
    fn gemm_plan_extents_follow_strides_and_transposes() {
        let cfg = GemmConfig {
            dtype: GemmDType::Bf16,
            m: 3,
            n: 5,
            k: 7,
            a: DevicePtr(0),
            lda: 9,
            trans_a: true,
            b: DevicePtr(0),
            ldb: 7,
            trans_b: true,
            c: DevicePtr(0),
            ldc: 6,
            alpha: 1.0,
            beta: 0.0,
        };
        let plan = GemmPlan::new(&cfg).expect("valid strides");
        // a is stored [k, m] = [7, 3] with row stride 9, b [n, k] = [5, 7] with stride 7, c [3, 5] with stride 6.
        assert_eq!(plan.a_bytes, (6 * 9 + 3) * 2);
        assert_eq!(plan.b_bytes, (4 * 7 + 7) * 2);
        assert_eq!(plan.c_bytes, (2 * 6 + 5) * 2);
        let bad = GemmConfig { lda: 2, ..cfg };
        assert!(matches!(GemmPlan::new(&bad), Err(Error::Shape { .. })));
    }

    #[test]
    fn allocation_table_bounds() {
        let mut a = Allocations::default();
        a.live.insert(1000, 100);
        assert!(a.check("t", DevicePtr(1000), 100).is_ok());
        assert!(a.check("t", DevicePtr(1050), 50).is_ok());
        assert!(a.check("t", DevicePtr(1050), 51).is_err());
        assert!(a.check("t", DevicePtr(999), 1).is_err());
        assert!(a.check("t", DevicePtr(u64::MAX), 2).is_err());
        assert!(
            a.check("t", DevicePtr(0), 0).is_ok(),
            "an empty range touches no memory"
        );
    }
}
