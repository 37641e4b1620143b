//! Batched matrix multiplication on the CPU through the `gemm` crate (AVX-512 with the `x86-v4` feature),
//! with broadcast batch dimensions and strided (e.g. transposed) operands passed without copies.

use gemm::Parallelism;
use rayon::prelude::*;

use super::{float_dispatch, float_into_data, CpuStorage};
use crate::{Float, Layout, Result, Shape};

/// Below this many multiply-adds a GEMM runs on one thread: spawning costs more than it saves.
const PAR_MIN_MACS: usize = 1 << 18;

/// Shapes of a batched matmul: `lhs` [batch.., m, k] · `rhs` [batch.., k, n] → [batch.., m, n].
#[derive(Debug, Clone)]
pub(crate) struct MatmulDims {
    pub(crate) batch: Shape,
    pub(crate) m: usize,
    pub(crate) n: usize,
    pub(crate) k: usize,
}

/// Element strides of one operand: batch offsets (one per output batch index) and row/column strides.
struct Operand {
    offsets: Vec<usize>,
    rs: isize,
    cs: isize,
}

fn operand(layout: &Layout, batch: &Shape) -> Result<Operand> {
    let rank = layout.shape().rank();
    let (rs, cs) = (layout.strides()[rank - 2] as isize, layout.strides()[rank - 1] as isize);
    let batch_layout = Layout::new(
        Shape::new(layout.dims()[..rank - 2].to_vec()),
        layout.strides()[..rank - 2].to_vec(),
        layout.offset(),
    )
    .broadcast_as(batch, "matmul")?;
    Ok(Operand { offsets: batch_layout.offsets().collect(), rs, cs })
}

/// When every batch of `rhs` is the same matrix and `lhs`'s batch and row dims collapse to one stride, the
/// whole product is one GEMM with `batch·m` rows (the common `[b, t, d] · [d, n]` case).
fn fold_batch(lhs: &Layout, rhs: &Layout, d: &MatmulDims) -> bool {
    let (lr, rr) = (lhs.shape().rank(), rhs.shape().rank());
    if d.batch.elem_count() <= 1 || rhs.strides()[..rr - 2].iter().zip(rhs.dims()).any(|(&s, &n)| s != 0 && n != 1) {
        return false;
    }
    if lr - 2 != d.batch.rank() {
        return false;
    }
    let (dims, strides) = (lhs.dims(), lhs.strides());
    (0..lr - 2).all(|i| dims[i] == 1 || strides[i] == strides[i + 1] * dims[i + 1])
}

/// The operand in compute type `T` with the layout to index it by: the whole buffer and the original
/// (strided) layout when it already is `T`, else a widened contiguous copy.
fn widen<'a, T: Float>(s: &'a CpuStorage, l: &Layout) -> (std::borrow::Cow<'a, [T]>, Layout) {
    if s.dtype() == T::DTYPE {
        (super::elementwise::full_float::<T>(s), l.clone())
    } else {
        (s.float_slice::<T>(l), Layout::contiguous(l.shape().clone()))
    }
}

impl CpuStorage {
    pub(crate) fn matmul(&self, ll: &Layout, rhs: &CpuStorage, rl: &Layout, d: &MatmulDims) -> Result<CpuStorage> {
        fn go<T: Float>(a: &CpuStorage, ll: &Layout, b: &CpuStorage, rl: &Layout, d: &MatmulDims) -> Result<CpuStorage> {
            // Half-precision operands are widened once; f32/f64 are used in place with their own strides.
            let ((xa, al), (xb, bl)) = (widen::<T>(a, ll), widen::<T>(b, rl));
            let nb = d.batch.elem_count();
            let mut out = vec![T::ZERO; nb * d.m * d.n];
            if out.is_empty() {
                return Ok(CpuStorage::new(float_into_data(out, a.dtype())));
            }
            let threads = rayon::current_num_threads();
            let fold = fold_batch(&al, &bl, d);
            let (nb_eff, m_eff) = if fold { (1, nb * d.m) } else { (nb, d.m) };
            let macs = m_eff * d.n * d.k;
            let lhs = operand(&al, &d.batch)?;
            let rhs = operand(&bl, &d.batch)?;
            let run = |bi: usize, dst: &mut [T], par: Parallelism| {
                // SAFETY: `lhs.offsets[bi]` plus row/col strides times indices < m_eff/k stay inside `xa`, because
                // the layouts were validated against their storage when the tensors were made, and folding only
                // happens when the batch rows are exactly one stride apart (`fold_batch`). Likewise for `xb`.
                // `dst` is a distinct [m_eff, n] row-major block of `out`.
                unsafe {
                    gemm::gemm(
                        m_eff,
                        d.n,
                        d.k,
                        dst.as_mut_ptr(),
                        1,
                        d.n as isize,
                        false,
                        xa.as_ptr().add(lhs.offsets[bi]),
                        lhs.cs,
                        lhs.rs,
                        xb.as_ptr().add(rhs.offsets[bi]),
                        rhs.cs,
                        rhs.rs,
                        T::ZERO,
                        T::ONE,
                        false,
                        false,
                        false,
                        par,
                    )
                }
            };
            let chunk = m_eff * d.n;
            if nb_eff == 1 || macs >= PAR_MIN_MACS {
                let par = if macs >= PAR_MIN_MACS && threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
                out.chunks_mut(chunk).enumerate().for_each(|(bi, dst)| run(bi, dst, par));
            } else {
                out.par_chunks_mut(chunk).enumerate().for_each(|(bi, dst)| run(bi, dst, Parallelism::None));
            }
            Ok(CpuStorage::new(float_into_data(out, a.dtype())))
        }
        if self.dtype() != rhs.dtype() {
            return Err(crate::Error::DTypeMismatch { op: "matmul", lhs: self.dtype(), rhs: rhs.dtype() });
        }
        float_dispatch!(self.dtype(), "matmul", go(self, ll, rhs, rl, d))
    }
}
