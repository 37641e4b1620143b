//! The error type of rankfold-ptxsim: parse errors naming the PTX line, and run-time checks naming the kernel,
//! block, thread, PTX line and CUDA source line.

use std::fmt;

/// Where in a launch something went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub kernel: String,
    /// The block index (`%ctaid`).
    pub block: [u32; 3],
    /// The thread index in its block (`%tid`).
    pub thread: [u32; 3],
    /// The line in the PTX text.
    pub ptx_line: u32,
    /// The CUDA source file and line from the `.loc` in force, when the PTX has line info.
    pub source: Option<(String, u32)>,
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [bx, by, bz] = self.block;
        let [tx, ty, tz] = self.thread;
        write!(
            f,
            "kernel {}, block ({bx},{by},{bz}), thread ({tx},{ty},{tz}), PTX line {}",
            self.kernel, self.ptx_line
        )?;
        if let Some((file, line)) = &self.source {
            let short = file.rsplit('/').next().unwrap_or(file);
            write!(f, " ({short}:{line})")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong parsing or running PTX.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The PTX text could not be parsed or uses something the simulator does not support.
    #[error("PTX line {line}: {msg}")]
    Parse { line: u32, msg: String },
    /// The module has no `.entry` of that name.
    #[error("no kernel `{name}` in PTX `{module}`")]
    UnknownKernel { module: String, name: String },
    /// The launch arguments do not match the kernel's parameter list.
    #[error("kernel {kernel}: {msg}")]
    Arguments { kernel: String, msg: String },
    /// The launch configuration is invalid (empty grid, too many threads, …).
    #[error("kernel {kernel}: invalid launch: {msg}")]
    Launch { kernel: String, msg: String },
    /// A load, store or atomic touched memory outside every live allocation or window.
    #[error("out-of-bounds {space} {access} of {size} bytes at {addr:#x}: {site}")]
    OutOfBounds {
        site: Box<Site>,
        space: &'static str,
        access: &'static str,
        addr: u64,
        size: usize,
    },
    /// An access whose address is not a multiple of its size.
    #[error("misaligned {space} {access} of {size} bytes at {addr:#x}: {site}")]
    Misaligned {
        site: Box<Site>,
        space: &'static str,
        access: &'static str,
        addr: u64,
        size: usize,
    },
    /// Two threads touched the same shared byte between two barriers and at least one wrote it.
    #[error(
        "shared-memory race at shared offset {offset:#x}: this {access} conflicts with a {other_access} by {} since \
         the last barrier: {site}", other(other_thread)
    )]
    SharedRace {
        site: Box<Site>,
        offset: u64,
        access: &'static str,
        other_access: &'static str,
        /// The other thread, or `[u32::MAX; 3]` when several threads read the byte.
        other_thread: [u32; 3],
    },
    /// An access to shared bytes that a thread's cp.async wrote before that thread waited for the copy.
    #[error(
        "shared offset {offset:#x} accessed before the cp.async of thread ({},{},{}) that writes it was waited for \
         (cp.async.wait_group / wait_all): {site}", other_thread[0], other_thread[1], other_thread[2]
    )]
    AsyncCopyPending {
        site: Box<Site>,
        offset: u64,
        other_thread: [u32; 3],
    },
    /// A read of shared memory that no thread of the block has written since the launch.
    #[error("read of uninitialized shared memory at shared offset {offset:#x}: {site}")]
    UninitShared { site: Box<Site>, offset: u64 },
    /// The kernel executed `trap`.
    #[error("trap: {site}")]
    Trap { site: Box<Site> },
    /// An instruction could not execute (bad operand for this simulator, call depth, …).
    #[error("{msg}: {site}")]
    Exec { site: Box<Site>, msg: String },
}

impl SimError {
    /// The simulator error inside a `rankfold_kernels::Error` returned by `SimRuntime`, if it is one.
    pub fn try_from_kernel(e: rankfold_kernels::Error) -> Option<SimError> {
        match e {
            rankfold_kernels::Error::Backend(b) => b.downcast::<SimError>().ok().map(|b| *b),
            _ => None,
        }
    }
}

/// Names the other party of a race.
fn other(t: &[u32; 3]) -> String {
    if t[0] == u32::MAX {
        "several threads".to_string()
    } else {
        format!("thread ({},{},{})", t[0], t[1], t[2])
    }
}

/// The result type of rankfold-ptxsim.
pub type Result<T> = std::result::Result<T, SimError>;

impl From<SimError> for rankfold_kernels::Error {
    fn from(e: SimError) -> Self {
        rankfold_kernels::Error::Backend(Box::new(e))
    }
}
