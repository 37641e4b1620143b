//! Typed kernel names: one `PtxModule` per `kernels/*.cu`, one `KernelId` per `.entry` in its PTX.
//!
//! Names are never assembled at run time; a test checks that the ids and the PTX entries agree both ways.

/// One compiled `kernels/<stem>.cu`, embedded as PTX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PtxModule {
    Elementwise,
}

impl PtxModule {
    /// Every module, in a fixed order (the index is a cache slot for loaded modules).
    pub const ALL: &'static [PtxModule] = &[PtxModule::Elementwise];

    /// The file stem: `kernels/<stem>.cu`, `ptx/<stem>.ptx`.
    pub const fn stem(self) -> &'static str {
        match self {
            PtxModule::Elementwise => "elementwise",
        }
    }

    /// The PTX text (compute_80, PTX ISA 8.4) as committed.
    pub const fn ptx(self) -> &'static str {
        match self {
            PtxModule::Elementwise => include_str!("../ptx/elementwise.ptx"),
        }
    }

    /// The position in `ALL`.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// One kernel entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelId {
    ElementwiseCopyF32,
}

impl KernelId {
    /// Every kernel, in a fixed order.
    pub const ALL: &'static [KernelId] = &[KernelId::ElementwiseCopyF32];

    /// The `.entry` name in the PTX (the `extern "C"` name in the `.cu`).
    pub const fn name(self) -> &'static str {
        match self {
            KernelId::ElementwiseCopyF32 => "elementwise_copy_f32",
        }
    }

    /// The module that holds it.
    pub const fn module(self) -> PtxModule {
        match self {
            KernelId::ElementwiseCopyF32 => PtxModule::Elementwise,
        }
    }
}
