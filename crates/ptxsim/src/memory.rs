//! Simulated device memory: allocations in a 64-bit address space with unmapped guard gaps, an optional cap,
//! and the fixed windows where generic addresses of shared and local memory live.

use std::collections::BTreeMap;

/// The first device address handed out.
pub(crate) const DEVICE_BASE: u64 = 0x7f00_0000_0000;
/// Generic addresses `SHARED_WINDOW + offset` point at a block's shared memory.
pub(crate) const SHARED_WINDOW: u64 = 0x5000_0000_0000;
/// Generic addresses `LOCAL_WINDOW + offset` point at a thread's local memory.
pub(crate) const LOCAL_WINDOW: u64 = 0x6000_0000_0000;
/// The size of each window.
pub(crate) const WINDOW_SIZE: u64 = 1 << 32;
/// Unmapped bytes left after every allocation, so that running off the end touches nothing.
const GUARD: u64 = 1 << 20;
/// Allocation alignment (cudaMalloc gives at least 256).
const ALIGN: u64 = 256;

/// The device memory of one `SimRuntime`.
#[derive(Debug)]
pub(crate) struct DeviceMemory {
    allocs: BTreeMap<u64, Vec<u8>>,
    next: u64,
    pub(crate) used: usize,
    pub(crate) cap: usize,
}

impl DeviceMemory {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            allocs: BTreeMap::new(),
            next: DEVICE_BASE,
            used: 0,
            cap,
        }
    }

    /// Allocates `bytes` zeroed bytes, or returns `None` when the cap would be exceeded.
    pub(crate) fn alloc(&mut self, bytes: usize) -> Option<u64> {
        if bytes > self.cap.saturating_sub(self.used) {
            return None;
        }
        let addr = self.next;
        self.next = (addr + bytes as u64 + GUARD).div_ceil(ALIGN) * ALIGN;
        self.allocs.insert(addr, vec![0; bytes]);
        self.used += bytes;
        Some(addr)
    }

    /// Frees the allocation starting at `addr`; false when there is none.
    pub(crate) fn free(&mut self, addr: u64) -> bool {
        match self.allocs.remove(&addr) {
            Some(v) => {
                self.used -= v.len();
                true
            }
            None => false,
        }
    }

    /// The allocation holding `addr..addr+len`, and the offset of `addr` in it.
    fn find(&self, addr: u64, len: usize) -> Option<(u64, usize)> {
        let (&start, v) = self.allocs.range(..=addr).next_back()?;
        let off = (addr - start) as usize;
        (off.checked_add(len)? <= v.len()).then_some((start, off))
    }

    /// The bytes `addr..addr+len`, when they lie inside one live allocation.
    pub(crate) fn slice(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let (start, off) = self.find(addr, len)?;
        Some(&self.allocs[&start][off..off + len])
    }

    /// The bytes `addr..addr+len` for writing, when they lie inside one live allocation.
    pub(crate) fn slice_mut(&mut self, addr: u64, len: usize) -> Option<&mut [u8]> {
        let (start, off) = self.find(addr, len)?;
        self.allocs.get_mut(&start).map(|v| &mut v[off..off + len])
    }
}

/// Little-endian load of up to 8 bytes.
#[inline]
pub(crate) fn read_le(b: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    v[..b.len()].copy_from_slice(b);
    u64::from_le_bytes(v)
}

/// Little-endian store of the low `b.len()` bytes of `v`.
#[inline]
pub(crate) fn write_le(b: &mut [u8], v: u64) {
    let n = b.len();
    b.copy_from_slice(&v.to_le_bytes()[..n]);
}
