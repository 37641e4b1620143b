//! A minimal NVRTC binding, loaded at run time with libloading: compile CUDA C++ to PTX or cubin and read the log.
//!
//! Only the handful of entry points `cargo xtask kernels` needs are bound. Signatures follow the NVRTC API
//! reference (nvrtc.h); every call's status is checked and turned into an error that names the call and program.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;

use anyhow::{bail, Context, Result};
use libloading::Library;

type Program = *mut c_void;
type Status = c_int;

type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> Status;
type ErrorStringFn = unsafe extern "C" fn(Status) -> *const c_char;
type CreateFn = unsafe extern "C" fn(
    *mut Program,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> Status;
type CompileFn = unsafe extern "C" fn(Program, c_int, *const *const c_char) -> Status;
type DestroyFn = unsafe extern "C" fn(*mut Program) -> Status;
type SizeFn = unsafe extern "C" fn(Program, *mut usize) -> Status;
type ReadFn = unsafe extern "C" fn(Program, *mut c_char) -> Status;

/// The loaded NVRTC library and the entry points used here.
pub(crate) struct Nvrtc {
    version: VersionFn,
    error_string: ErrorStringFn,
    create: CreateFn,
    compile: CompileFn,
    destroy: DestroyFn,
    log_size: SizeFn,
    log: ReadFn,
    ptx_size: SizeFn,
    ptx: ReadFn,
    cubin_size: SizeFn,
    cubin: ReadFn,
    // The function pointers above point into this library, so it must outlive them: it is dropped last.
    _lib: Library,
}

/// What one compilation produced: PTX text or a cubin, and the compiler log (ptxas's report with `-v`).
#[derive(Debug)]
pub(crate) struct Output {
    pub(crate) code: Vec<u8>,
    pub(crate) log: String,
}

/// Which image to read back after compiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Image {
    Ptx,
    Cubin,
}

impl std::fmt::Debug for Nvrtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nvrtc").finish_non_exhaustive()
    }
}

impl Nvrtc {
    /// Loads `libnvrtc.so.12` from `path`.
    pub(crate) fn load(path: &Path) -> Result<Nvrtc> {
        let name = path
            .to_str()
            .with_context(|| format!("NVRTC path {} is not UTF-8", path.display()))?;
        // SAFETY: loading NVRTC runs only its ELF initializers, which have no preconditions.
        let lib =
            unsafe { Library::new(name) }.with_context(|| format!("loading NVRTC from {name}"))?;
        /// Resolves one symbol as a function pointer of type `T`.
        fn sym<T: Copy>(lib: &Library, name: &str) -> Result<T> {
            // SAFETY: each call site names `T` as the C signature of `name` in nvrtc.h (CUDA 12.4).
            let s = unsafe { lib.get::<T>(name) }
                .with_context(|| format!("NVRTC has no symbol `{name}`"))?;
            Ok(*s)
        }
        Ok(Nvrtc {
            version: sym(&lib, "nvrtcVersion")?,
            error_string: sym(&lib, "nvrtcGetErrorString")?,
            create: sym(&lib, "nvrtcCreateProgram")?,
            compile: sym(&lib, "nvrtcCompileProgram")?,
            destroy: sym(&lib, "nvrtcDestroyProgram")?,
            log_size: sym(&lib, "nvrtcGetProgramLogSize")?,
            log: sym(&lib, "nvrtcGetProgramLog")?,
            ptx_size: sym(&lib, "nvrtcGetPTXSize")?,
            ptx: sym(&lib, "nvrtcGetPTX")?,
            cubin_size: sym(&lib, "nvrtcGetCUBINSize")?,
            cubin: sym(&lib, "nvrtcGetCUBIN")?,
            _lib: lib,
        })
    }

    /// NVRTC's version as (major, minor).
    pub(crate) fn version(&self) -> Result<(i32, i32)> {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: both pointers are valid for one write each.
        let status = unsafe { (self.version)(&mut major, &mut minor) };
        self.check(status, "nvrtcVersion", "-")?;
        Ok((major, minor))
    }

    /// Compiles `source` (named `name` in diagnostics and line info) with `options`, and reads back `image`.
    /// A failed compilation is an error that carries the compiler log.
    pub(crate) fn compile(
        &self,
        name: &str,
        source: &str,
        options: &[String],
        image: Image,
    ) -> Result<Output> {
        let c_source =
            CString::new(source).with_context(|| format!("{name} contains a NUL byte"))?;
        let c_name = CString::new(name)
            .with_context(|| format!("program name {name:?} contains a NUL byte"))?;
        let c_options = options
            .iter()
            .map(|o| CString::new(o.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .context("option with NUL")?;
        let option_ptrs: Vec<*const c_char> = c_options.iter().map(|o| o.as_ptr()).collect();
        let mut program: Program = std::ptr::null_mut();
        // SAFETY: the source and name are NUL-terminated and live through the call; zero headers are passed.
        let status = unsafe {
            (self.create)(
                &mut program,
                c_source.as_ptr(),
                c_name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        self.check(status, "nvrtcCreateProgram", name)?;
        let guard = ProgramGuard {
            nvrtc: self,
            program,
        };
        let count = c_int::try_from(option_ptrs.len()).context("too many options")?;
        // SAFETY: `program` is live and `option_ptrs` holds `count` NUL-terminated strings that outlive the call.
        let compiled = unsafe { (self.compile)(guard.program, count, option_ptrs.as_ptr()) };
        let log =
            String::from_utf8_lossy(&self.read(guard.program, self.log_size, self.log, name)?)
                .trim_end_matches('\0')
                .to_string();
        if compiled != 0 {
            bail!(
                "NVRTC failed to compile {name} ({}) with {}:\n{log}",
                self.describe(compiled),
                options.join(" ")
            );
        }
        let (size, read) = match image {
            Image::Ptx => (self.ptx_size, self.ptx),
            Image::Cubin => (self.cubin_size, self.cubin),
        };
        let mut code = self.read(guard.program, size, read, name)?;
        if image == Image::Ptx {
            // The PTX size includes the terminating NUL.
            while code.last() == Some(&0) {
                code.pop();
            }
        }
        Ok(Output { code, log })
    }

    /// Reads a sized buffer (log, PTX or cubin) from a compiled program.
    fn read(&self, program: Program, size: SizeFn, read: ReadFn, name: &str) -> Result<Vec<u8>> {
        let mut n = 0usize;
        // SAFETY: `program` is live and `n` is valid for one write.
        self.check(unsafe { size(program, &mut n) }, "size query", name)?;
        let mut buf = vec![0u8; n.max(1)];
        // SAFETY: `buf` holds at least the `n` bytes NVRTC said it would write.
        let status = unsafe { read(program, buf.as_mut_ptr().cast()) };
        self.check(status, "read", name)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn check(&self, status: Status, call: &str, name: &str) -> Result<()> {
        if status != 0 {
            bail!("NVRTC {call} failed for {name}: {}", self.describe(status));
        }
        Ok(())
    }

    /// NVRTC's text for a status code.
    fn describe(&self, status: Status) -> String {
        // SAFETY: nvrtcGetErrorString accepts any status and returns a static NUL-terminated string (or null).
        let text = unsafe { (self.error_string)(status) };
        if text.is_null() {
            return format!("status {status}");
        }
        // SAFETY: non-null, static and NUL-terminated, as documented.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    }
}

/// Destroys a program when the compilation is done or has failed.
struct ProgramGuard<'a> {
    nvrtc: &'a Nvrtc,
    program: Program,
}

impl Drop for ProgramGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed exactly once, here.
        let _ = unsafe { (self.nvrtc.destroy)(&mut self.program) };
    }
}
