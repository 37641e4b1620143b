//! `Device`: where a tensor's storage lives. The CPU is always there; the GPU arms (a CUDA device and the ptxsim
//! simulator, which share one GPU backend) are named now so that callers never change when that backend lands.

/// A compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    /// Host memory, f32 compute.
    Cpu,
    /// An NVIDIA GPU by ordinal.
    Cuda(usize),
    /// The PTX simulator: the GPU code path executed on the CPU.
    Sim,
}

impl Device {
    pub fn is_cpu(self) -> bool {
        matches!(self, Device::Cpu)
    }
}
