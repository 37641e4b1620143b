//! Memory accounting: live and peak bytes of tensor storage per device, process-wide and per scope.
//!
//! Every storage buffer charges its size when it is allocated and refunds it when the last tensor holding it
//! is dropped. Besides the process-wide counters, a [`MemoryScope`] counts only the buffers allocated on the
//! thread that opened it while it is open, so a test can measure one training step while other tests run in
//! parallel threads of the same process.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::Device;

/// Live and peak byte counters.
#[derive(Debug, Default)]
pub struct Counter {
    live: AtomicUsize,
    peak: AtomicUsize,
}

impl Counter {
    fn charge(&self, bytes: usize) {
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(live, Ordering::Relaxed);
    }
    fn refund(&self, bytes: usize) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }
    /// Bytes held now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
    /// The most bytes held at once since creation or the last [`Counter::reset_peak`].
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
    /// Starts a new peak from the current live bytes.
    pub fn reset_peak(&self) {
        self.peak.store(self.live(), Ordering::Relaxed);
    }
}

/// A snapshot of a device's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStats {
    pub live_bytes: usize,
    pub peak_bytes: usize,
}

static CPU: Counter = Counter { live: AtomicUsize::new(0), peak: AtomicUsize::new(0) };
static GPU: Counter = Counter { live: AtomicUsize::new(0), peak: AtomicUsize::new(0) };

fn global(device: Device) -> &'static Counter {
    match device {
        Device::Cpu => &CPU,
        Device::Cuda(_) | Device::Sim => &GPU,
    }
}

/// Process-wide live and peak storage bytes on `device`.
pub fn stats(device: Device) -> MemoryStats {
    let c = global(device);
    MemoryStats { live_bytes: c.live(), peak_bytes: c.peak() }
}

/// Restarts the process-wide peak of `device` from its live bytes.
pub fn reset_peak(device: Device) {
    global(device).reset_peak()
}

thread_local! {
    static SCOPES: RefCell<Vec<(Device, Arc<Counter>)>> = const { RefCell::new(Vec::new()) };
}

/// Counts the storage allocated on this thread while it is alive (nested scopes all count).
#[derive(Debug)]
pub struct MemoryScope {
    device: Device,
    counter: Arc<Counter>,
}

impl MemoryScope {
    /// Opens a scope on the current thread for allocations on `device`.
    pub fn new(device: Device) -> Self {
        let counter = Arc::new(Counter::default());
        SCOPES.with(|s| s.borrow_mut().push((device, counter.clone())));
        MemoryScope { device, counter }
    }
    pub fn stats(&self) -> MemoryStats {
        MemoryStats { live_bytes: self.counter.live(), peak_bytes: self.counter.peak() }
    }
    pub fn reset_peak(&self) {
        self.counter.reset_peak()
    }
}

impl Drop for MemoryScope {
    fn drop(&mut self) {
        SCOPES.with(|s| s.borrow_mut().retain(|(_, c)| !Arc::ptr_eq(c, &self.counter)));
        let _ = self.device;
    }
}

/// The charge a storage buffer carries; refunds its bytes when dropped.
#[derive(Debug)]
pub(crate) struct MemoryCharge {
    device: Device,
    bytes: usize,
    scopes: Vec<Arc<Counter>>,
}

impl MemoryCharge {
    pub(crate) fn new(device: Device, bytes: usize) -> Self {
        global(device).charge(bytes);
        let scopes = SCOPES.with(|s| {
            s.borrow().iter().filter(|(d, _)| *d == device).map(|(_, c)| c.clone()).collect::<Vec<_>>()
        });
        for c in &scopes {
            c.charge(bytes);
        }
        MemoryCharge { device, bytes, scopes }
    }
}

impl Drop for MemoryCharge {
    fn drop(&mut self) {
        global(self.device).refund(self.bytes);
        for c in &self.scopes {
            c.refund(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_counts_live_and_peak() {
        let scope = MemoryScope::new(Device::Cpu);
        let a = MemoryCharge::new(Device::Cpu, 100);
        let b = MemoryCharge::new(Device::Cpu, 50);
        drop(a);
        assert_eq!(scope.stats(), MemoryStats { live_bytes: 50, peak_bytes: 150 });
        scope.reset_peak();
        drop(b);
        assert_eq!(scope.stats(), MemoryStats { live_bytes: 0, peak_bytes: 50 });
    }
}
