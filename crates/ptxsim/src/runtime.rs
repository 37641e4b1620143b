//! `SimRuntime`: a `GpuRuntime` whose device memory is simulated and whose kernels run in the PTX interpreter;
//! its library GEMM is a plain CPU loop standing in for cuBLAS.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use rankfold_kernels::{
    DevicePtr, Error as KError, GemmConfig, GpuRuntime, KernelArg, Launch, LaunchConfig,
    MemoryInfo, PtxModule,
};

use crate::counters::Counters;
use crate::error::{Result, SimError};
use crate::exec::{run_grid, Ctx};
use crate::ir::Module;
use crate::memory::DeviceMemory;
use crate::parse::parse;
use crate::program::{link, Layout, Program};

/// Device memory reported when no cap is set (an H200's 141 GB).
const DEFAULT_MEMORY: usize = 141 * 1000 * 1000 * 1000;

/// A module parsed and placed in this runtime's memory, with its linked kernels.
#[derive(Debug)]
struct Loaded {
    source: String,
    module: Arc<Module>,
    layout: Layout,
    programs: HashMap<String, Arc<Program>>,
}

#[derive(Debug)]
struct State {
    mem: DeviceMemory,
    /// Modules of `PtxModule`, by index.
    modules: Vec<Option<Loaded>>,
    /// Modules loaded through `launch_ptx`, by source name.
    named: HashMap<String, Loaded>,
    last: Counters,
    total: Counters,
}

/// The simulated GPU.
#[derive(Debug)]
pub struct SimRuntime {
    state: Mutex<State>,
}

impl Default for SimRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl SimRuntime {
    /// A runtime with (practically) unlimited device memory.
    pub fn new() -> Self {
        Self::with_memory_cap(DEFAULT_MEMORY)
    }

    /// A runtime whose allocations fail with `OutOfMemory` beyond `bytes` in total.
    pub fn with_memory_cap(bytes: usize) -> Self {
        Self {
            state: Mutex::new(State {
                mem: DeviceMemory::new(bytes),
                modules: PtxModule::ALL.iter().map(|_| None).collect(),
                named: HashMap::new(),
                last: Counters::default(),
                total: Counters::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic inside a launch leaves the state usable (memory is plain bytes), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counters of the most recent launch.
    pub fn last_counters(&self) -> Counters {
        self.lock().last.clone()
    }

    /// The counters of every launch since the runtime was made (or since `reset_counters`).
    pub fn total_counters(&self) -> Counters {
        self.lock().total.clone()
    }

    /// Zeroes the cumulative counters.
    pub fn reset_counters(&self) {
        self.lock().total = Counters::default();
    }

    /// Runs `entry` of a PTX text that is not one of the crate's modules (test kernels, planted bugs). The
    /// module is parsed once per `source_name` (and again when the text under that name changes).
    pub fn launch_ptx(
        &self,
        source_name: &str,
        ptx: &str,
        entry: &str,
        config: LaunchConfig,
        args: &[KernelArg],
    ) -> rankfold_kernels::Result<()> {
        let mut st = self.lock();
        let st = &mut *st;
        let stale = st.named.get(source_name).is_none_or(|l| l.source != ptx);
        if stale {
            let loaded = load(&mut st.mem, ptx, Arc::new(parse(ptx)?))?;
            st.named.insert(source_name.to_string(), loaded);
        }
        let loaded = st.named.get_mut(source_name).expect("inserted above");
        let prog = program(loaded, entry, source_name)?;
        run(st, &prog, config, args)
    }
}

/// The parsed form of a shipped module, parsed once per process (modules are immutable; only their variables'
/// placement is per runtime).
fn shipped(m: PtxModule) -> Result<Arc<Module>> {
    static CACHE: OnceLock<Mutex<HashMap<usize, Arc<Module>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(p) = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&m.index())
    {
        return Ok(p.clone());
    }
    let parsed = Arc::new(parse(m.ptx())?);
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(m.index(), parsed.clone());
    Ok(parsed)
}

fn load(mem: &mut DeviceMemory, ptx: &str, module: Arc<Module>) -> Result<Loaded> {
    let layout = Layout::new(&module, |size, init| {
        let addr = mem.alloc(size).ok_or_else(|| SimError::Launch {
            kernel: "(module load)".into(),
            msg: format!("no device memory for a {size}-byte module variable"),
        })?;
        if let Some(b) = mem.slice_mut(addr, init.len()) {
            b.copy_from_slice(init);
        }
        Ok(addr)
    })?;
    Ok(Loaded {
        source: ptx.to_string(),
        module,
        layout,
        programs: HashMap::new(),
    })
}

fn program(loaded: &mut Loaded, entry: &str, source: &str) -> Result<Arc<Program>> {
    if let Some(p) = loaded.programs.get(entry) {
        return Ok(p.clone());
    }
    let p = Arc::new(link(&loaded.module, &loaded.layout, entry, source)?);
    loaded.programs.insert(entry.to_string(), p.clone());
    Ok(p)
}

/// Builds the parameter buffer, checks the configuration and runs the grid.
fn run(
    st: &mut State,
    prog: &Program,
    cfg: LaunchConfig,
    args: &[KernelArg],
) -> rankfold_kernels::Result<()> {
    let kernel = &prog.kernel;
    if args.len() != prog.params.len() {
        let msg = format!(
            "{} arguments given, the kernel declares {} parameters",
            args.len(),
            prog.params.len()
        );
        return Err(SimError::Arguments {
            kernel: kernel.clone(),
            msg,
        }
        .into());
    }
    let mut params = vec![0u8; prog.param_bytes];
    for (i, (a, p)) in args.iter().zip(&prog.params).enumerate() {
        if a.size() != p.size {
            let msg = format!(
                "argument {i} ({}) is {} bytes, parameter `{}` is {} bytes",
                kind(a),
                a.size(),
                p.name,
                p.size
            );
            return Err(SimError::Arguments {
                kernel: kernel.clone(),
                msg,
            }
            .into());
        }
        params[p.offset..p.offset + p.size].copy_from_slice(&a.to_bytes());
    }
    let (g, b) = (cfg.grid, cfg.block);
    let threads = b.count();
    let invalid = |msg: String| -> rankfold_kernels::Error {
        SimError::Launch {
            kernel: kernel.clone(),
            msg,
        }
        .into()
    };
    if g.count() == 0 || threads == 0 {
        return Err(invalid(format!("empty grid {g:?} or block {b:?}")));
    }
    if g.x > i32::MAX as u32 || g.y > 65535 || g.z > 65535 {
        return Err(invalid(format!(
            "grid {g:?} exceeds x ≤ 2^31 − 1, y ≤ 65535, z ≤ 65535"
        )));
    }
    match prog.max_threads {
        Some((n, false)) if threads > n => {
            return Err(invalid(format!(
                "block {b:?} has {threads} threads, the kernel's .maxntid allows {n}"
            )));
        }
        Some((n, true)) if threads != n => {
            return Err(invalid(format!(
                "block {b:?} has {threads} threads, the kernel's .reqntid requires {n}"
            )));
        }
        _ => {}
    }
    if threads > 1024 || b.z > 64 {
        return Err(invalid(format!(
            "block {b:?} has more than 1024 threads or z > 64"
        )));
    }
    let shared = prog.dyn_shared_offset + cfg.shared_bytes as usize;
    if shared > 227 * 1024 {
        return Err(invalid(format!(
            "{shared} bytes of shared memory exceed the 227 KiB per block"
        )));
    }
    let mut ctx = Ctx {
        prog,
        mem: &mut st.mem,
        params,
        counters: Counters::default(),
    };
    ctx.counters.launches = 1;
    let r = run_grid(&mut ctx, [g.x, g.y, g.z], [b.x, b.y, b.z], cfg.shared_bytes);
    let counters = ctx.counters;
    st.total += &counters;
    st.last = counters;
    r.map_err(Into::into)
}

fn kind(a: &KernelArg) -> &'static str {
    match a {
        KernelArg::Ptr(_) => "pointer",
        KernelArg::I32(_) => "i32",
        KernelArg::U32(_) => "u32",
        KernelArg::I64(_) => "i64",
        KernelArg::U64(_) => "u64",
        KernelArg::F32(_) => "f32",
        KernelArg::F64(_) => "f64",
    }
}

fn bad_ptr(op: &'static str, ptr: u64, bytes: usize) -> KError {
    KError::InvalidPointer { op, ptr, bytes }
}

impl GpuRuntime for SimRuntime {
    fn name(&self) -> String {
        "ptxsim".to_string()
    }

    fn alloc(&self, bytes: usize) -> rankfold_kernels::Result<DevicePtr> {
        let mut st = self.lock();
        let (cap, used) = (st.mem.cap, st.mem.used);
        st.mem
            .alloc(bytes)
            .map(DevicePtr)
            .ok_or(KError::OutOfMemory {
                requested: bytes,
                free: cap.saturating_sub(used),
                total: cap,
            })
    }

    unsafe fn free(&self, ptr: DevicePtr) -> rankfold_kernels::Result<()> {
        if self.lock().mem.free(ptr.0) {
            Ok(())
        } else {
            Err(bad_ptr("free", ptr.0, 0))
        }
    }

    unsafe fn copy_h2d(&self, dst: DevicePtr, src: &[u8]) -> rankfold_kernels::Result<()> {
        let mut st = self.lock();
        let d = st
            .mem
            .slice_mut(dst.0, src.len())
            .ok_or_else(|| bad_ptr("copy_h2d", dst.0, src.len()))?;
        d.copy_from_slice(src);
        Ok(())
    }

    unsafe fn copy_d2h(&self, src: DevicePtr, dst: &mut [u8]) -> rankfold_kernels::Result<()> {
        let st = self.lock();
        let s = st
            .mem
            .slice(src.0, dst.len())
            .ok_or_else(|| bad_ptr("copy_d2h", src.0, dst.len()))?;
        dst.copy_from_slice(s);
        Ok(())
    }

    unsafe fn copy_d2d(
        &self,
        dst: DevicePtr,
        src: DevicePtr,
        bytes: usize,
    ) -> rankfold_kernels::Result<()> {
        let mut st = self.lock();
        let tmp = st
            .mem
            .slice(src.0, bytes)
            .ok_or_else(|| bad_ptr("copy_d2d", src.0, bytes))?
            .to_vec();
        let d = st
            .mem
            .slice_mut(dst.0, bytes)
            .ok_or_else(|| bad_ptr("copy_d2d", dst.0, bytes))?;
        d.copy_from_slice(&tmp);
        Ok(())
    }

    unsafe fn memset(
        &self,
        dst: DevicePtr,
        value: u8,
        bytes: usize,
    ) -> rankfold_kernels::Result<()> {
        let mut st = self.lock();
        let d = st
            .mem
            .slice_mut(dst.0, bytes)
            .ok_or_else(|| bad_ptr("memset", dst.0, bytes))?;
        d.fill(value);
        Ok(())
    }

    unsafe fn launch(&self, launch: &Launch) -> rankfold_kernels::Result<()> {
        let module = launch.kernel.module();
        let mut st = self.lock();
        let st = &mut *st;
        if st.modules[module.index()].is_none() {
            let loaded = load(&mut st.mem, module.ptx(), shipped(module)?)?;
            st.modules[module.index()] = Some(loaded);
        }
        let loaded = st.modules[module.index()].as_mut().expect("loaded above");
        let prog = program(loaded, launch.kernel.name(), module.stem())?;
        run(st, &prog, launch.config, &launch.args)
    }

    fn synchronize(&self) -> rankfold_kernels::Result<()> {
        Ok(())
    }

    unsafe fn gemm(&self, cfg: &GemmConfig) -> rankfold_kernels::Result<()> {
        let mut st = self.lock();
        crate::gemm::gemm(&mut st.mem, cfg)
    }

    fn memory_info(&self) -> rankfold_kernels::Result<MemoryInfo> {
        let st = self.lock();
        Ok(MemoryInfo {
            free: st.mem.cap.saturating_sub(st.mem.used),
            total: st.mem.cap,
        })
    }
}
