//! Profile counters of a launch: instructions by class, global traffic and sectors, shared-memory bank conflicts,
//! barriers, divergence, tensor-core work and flops.

use std::fmt;
use std::ops::AddAssign;

use crate::ir::Class;

/// Counters of one launch (or, summed, of many).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Warp-level instructions issued, by class (index: position in `Class::ALL`).
    pub warp_insts: [u64; 14],
    /// Thread-level instructions (active lanes of each issued instruction), by class.
    pub thread_insts: [u64; 14],
    /// Bytes read from and written to global memory (loads, stores, atomics, cp.async sources).
    pub global_read_bytes: u64,
    pub global_write_bytes: u64,
    /// Warp-level global memory requests.
    pub global_requests: u64,
    /// Distinct 32-byte sectors touched per warp-level global request, summed.
    pub global_sectors: u64,
    /// Warp-level shared-memory requests.
    pub shared_requests: u64,
    /// Shared-memory wavefronts beyond the first of each request phase (bank conflicts).
    pub bank_conflicts: u64,
    /// Block-wide barriers completed (once per barrier per block).
    pub barriers: u64,
    /// Branches whose active lanes split between the target and the fall-through.
    pub divergent_branches: u64,
    /// Warp-level `mma.sync` instructions.
    pub mma: u64,
    /// Floating-point operations: 1 per arithmetic op per element, 2 per fma, 2·m·n·k per mma.
    pub flops: u64,
    pub launches: u64,
    pub blocks: u64,
    pub threads: u64,
}

impl Counters {
    /// Warp-level instructions of one class.
    pub fn warp(&self, c: Class) -> u64 {
        self.warp_insts[c as usize]
    }

    /// Thread-level instructions of one class.
    pub fn thread(&self, c: Class) -> u64 {
        self.thread_insts[c as usize]
    }

    /// All thread-level instructions.
    pub fn total_thread_insts(&self) -> u64 {
        self.thread_insts.iter().sum()
    }

    /// All warp-level instructions.
    pub fn total_warp_insts(&self) -> u64 {
        self.warp_insts.iter().sum()
    }
}

impl AddAssign<&Counters> for Counters {
    fn add_assign(&mut self, o: &Counters) {
        for i in 0..14 {
            self.warp_insts[i] += o.warp_insts[i];
            self.thread_insts[i] += o.thread_insts[i];
        }
        self.global_read_bytes += o.global_read_bytes;
        self.global_write_bytes += o.global_write_bytes;
        self.global_requests += o.global_requests;
        self.global_sectors += o.global_sectors;
        self.shared_requests += o.shared_requests;
        self.bank_conflicts += o.bank_conflicts;
        self.barriers += o.barriers;
        self.divergent_branches += o.divergent_branches;
        self.mma += o.mma;
        self.flops += o.flops;
        self.launches += o.launches;
        self.blocks += o.blocks;
        self.threads += o.threads;
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<16} {:>14} {:>16}",
            "class", "warp insts", "thread insts"
        )?;
        for c in Class::ALL {
            let (w, t) = (self.warp(c), self.thread(c));
            if w > 0 {
                writeln!(f, "{:<16} {w:>14} {t:>16}", c.name())?;
            }
        }
        writeln!(
            f,
            "{:<16} {:>14} {:>16}",
            "total",
            self.total_warp_insts(),
            self.total_thread_insts()
        )?;
        let per_req = if self.global_requests > 0 {
            self.global_sectors as f64 / self.global_requests as f64
        } else {
            0.0
        };
        writeln!(
            f,
            "global bytes      read {}  written {}",
            self.global_read_bytes, self.global_write_bytes
        )?;
        writeln!(
            f,
            "global requests   {}  sectors {} ({per_req:.2} per request)",
            self.global_requests, self.global_sectors
        )?;
        writeln!(
            f,
            "shared requests   {}  bank conflicts {}",
            self.shared_requests, self.bank_conflicts
        )?;
        writeln!(
            f,
            "barriers {}  divergent branches {}",
            self.barriers, self.divergent_branches
        )?;
        writeln!(f, "mma {}  flops {}", self.mma, self.flops)?;
        write!(
            f,
            "launches {}  blocks {}  threads {}",
            self.launches, self.blocks, self.threads
        )
    }
}
