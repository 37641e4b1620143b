//! Typed kernel names: one `PtxModule` per `kernels/*.cu`, one `KernelId` per `.entry` in its PTX.
//!
//! Names are never assembled at run time; a test checks that the ids and the PTX entries agree both ways. The
//! table at the bottom of this file is the one place that lists them: `kernel_table!` turns it into the two enums
//! and their `match`-based accessors (only the enum plumbing is generated; every name is written out).

/// Declares `PtxModule` and `KernelId` from a table `Module = "stem" { Variant = "entry", … }`.
macro_rules! kernel_table {
    ($( $module:ident = $stem:literal { $( $id:ident = $name:literal ),* $(,)? } )*) => {
        /// One compiled `kernels/<stem>.cu`, embedded as PTX.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum PtxModule {
            $( $module, )*
        }

        impl PtxModule {
            /// Every module, in a fixed order (the index is a cache slot for loaded modules).
            pub const ALL: &'static [PtxModule] = &[ $( PtxModule::$module, )* ];

            /// The file stem: `kernels/<stem>.cu`, `ptx/<stem>.ptx`.
            pub const fn stem(self) -> &'static str {
                match self {
                    $( PtxModule::$module => $stem, )*
                }
            }

            /// The PTX text (compute_80, PTX ISA 8.4) as committed.
            pub const fn ptx(self) -> &'static str {
                match self {
                    $( PtxModule::$module => include_str!(concat!("../ptx/", $stem, ".ptx")), )*
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
            $( $( $id, )* )*
        }

        impl KernelId {
            /// Every kernel, in a fixed order.
            pub const ALL: &'static [KernelId] = &[ $( $( KernelId::$id, )* )* ];

            /// The `.entry` name in the PTX (the `extern "C"` name in the `.cu`).
            pub const fn name(self) -> &'static str {
                match self {
                    $( $( KernelId::$id => $name, )* )*
                }
            }

            /// The module that holds it.
            pub const fn module(self) -> PtxModule {
                match self {
                    $( $( KernelId::$id => PtxModule::$module, )* )*
                }
            }

            /// The position in `ALL`.
            pub const fn index(self) -> usize {
                self as usize
            }
        }
    };
}

kernel_table! {
    Elementwise = "elementwise" {
        ElementwiseAddF32 = "elementwise_add_f32",
        ElementwiseSubF32 = "elementwise_sub_f32",
        ElementwiseMulF32 = "elementwise_mul_f32",
        ElementwiseDivF32 = "elementwise_div_f32",
        ElementwiseMaxF32 = "elementwise_max_f32",
        ElementwiseMinF32 = "elementwise_min_f32",
        ElementwiseAddBf16 = "elementwise_add_bf16",
        ElementwiseSubBf16 = "elementwise_sub_bf16",
        ElementwiseMulBf16 = "elementwise_mul_bf16",
        ElementwiseDivBf16 = "elementwise_div_bf16",
        ElementwiseMaxBf16 = "elementwise_max_bf16",
        ElementwiseMinBf16 = "elementwise_min_bf16",
        ElementwiseNegF32 = "elementwise_neg_f32",
        ElementwiseAbsF32 = "elementwise_abs_f32",
        ElementwiseExpF32 = "elementwise_exp_f32",
        ElementwiseLogF32 = "elementwise_log_f32",
        ElementwiseSqrtF32 = "elementwise_sqrt_f32",
        ElementwiseRsqrtF32 = "elementwise_rsqrt_f32",
        ElementwiseRecipF32 = "elementwise_recip_f32",
        ElementwiseSqrF32 = "elementwise_sqr_f32",
        ElementwiseReluF32 = "elementwise_relu_f32",
        ElementwiseGeluF32 = "elementwise_gelu_f32",
        ElementwiseGeluErfF32 = "elementwise_gelu_erf_f32",
        ElementwiseSiluF32 = "elementwise_silu_f32",
        ElementwiseSigmoidF32 = "elementwise_sigmoid_f32",
        ElementwiseTanhF32 = "elementwise_tanh_f32",
        ElementwiseNegBf16 = "elementwise_neg_bf16",
        ElementwiseAbsBf16 = "elementwise_abs_bf16",
        ElementwiseExpBf16 = "elementwise_exp_bf16",
        ElementwiseLogBf16 = "elementwise_log_bf16",
        ElementwiseSqrtBf16 = "elementwise_sqrt_bf16",
        ElementwiseRsqrtBf16 = "elementwise_rsqrt_bf16",
        ElementwiseRecipBf16 = "elementwise_recip_bf16",
        ElementwiseSqrBf16 = "elementwise_sqr_bf16",
        ElementwiseReluBf16 = "elementwise_relu_bf16",
        ElementwiseGeluBf16 = "elementwise_gelu_bf16",
        ElementwiseGeluErfBf16 = "elementwise_gelu_erf_bf16",
        ElementwiseSiluBf16 = "elementwise_silu_bf16",
        ElementwiseSigmoidBf16 = "elementwise_sigmoid_bf16",
        ElementwiseTanhBf16 = "elementwise_tanh_bf16",
    }
    Softmax = "softmax" {
        SoftmaxForwardF32 = "softmax_forward_f32",
        SoftmaxForwardBf16 = "softmax_forward_bf16",
        SoftmaxBackwardF32 = "softmax_backward_f32",
        SoftmaxBackwardBf16 = "softmax_backward_bf16",
        SoftmaxForwardLongF32 = "softmax_forward_long_f32",
        SoftmaxForwardLongBf16 = "softmax_forward_long_bf16",
        SoftmaxBackwardLongF32 = "softmax_backward_long_f32",
        SoftmaxBackwardLongBf16 = "softmax_backward_long_bf16",
    }
    Gemm = "gemm" {
        GemmNtBf16 = "gemm_nt_bf16",
        GemmNtBf16F32 = "gemm_nt_bf16_f32",
        GemmNnBf16 = "gemm_nn_bf16",
        GemmNnBf16F32 = "gemm_nn_bf16_f32",
    }
    Nf4 = "nf4" {
        Nf4QuantizeF32 = "nf4_quantize_f32",
        Nf4QuantizeF16 = "nf4_quantize_f16",
        Nf4QuantizeBf16 = "nf4_quantize_bf16",
        Nf4DequantizeF32 = "nf4_dequantize_f32",
        Nf4DequantizeF16 = "nf4_dequantize_f16",
        Nf4DequantizeBf16 = "nf4_dequantize_bf16",
        Nf4DoubleQuantizeF32 = "nf4_double_quantize_f32",
        Nf4DoubleDequantizeF32 = "nf4_double_dequantize_f32",
        Nf4GemvM1Bf16 = "nf4_gemv_m1_bf16",
        Nf4GemvM4Bf16 = "nf4_gemv_m4_bf16",
        Nf4GemvM16Bf16 = "nf4_gemv_m16_bf16",
        Nf4GemvDqM1Bf16 = "nf4_gemv_dq_m1_bf16",
        Nf4GemvDqM4Bf16 = "nf4_gemv_dq_m4_bf16",
        Nf4GemvDqM16Bf16 = "nf4_gemv_dq_m16_bf16",
    }
}
