//! Indexing and layout-changing CPU kernels: index_select / index_add, gather / scatter_add, concat, and RoPE.

use super::{float_dispatch, float_into_data, CpuData, CpuStorage};
use crate::{Error, Float, Layout, Result};

/// Splits a contiguous shape around `dim` into (outer, size of dim, inner).
pub(crate) fn split3(dims: &[usize], dim: usize) -> (usize, usize, usize) {
    (dims[..dim].iter().product(), dims[dim], dims[dim + 1..].iter().product())
}

macro_rules! map_same_dtype {
    ($src:expr, $v:ident => $body:expr) => {
        match $src {
            CpuData::F32($v) => CpuData::F32($body),
            CpuData::F64($v) => CpuData::F64($body),
            CpuData::F16($v) => CpuData::F16($body),
            CpuData::BF16($v) => CpuData::BF16($body),
            CpuData::U8($v) => CpuData::U8($body),
            CpuData::U32($v) => CpuData::U32($body),
            CpuData::I64($v) => CpuData::I64($body),
        }
    };
}

fn check_ids(ids: &[i64], size: usize, op: &'static str) -> Result<()> {
    match ids.iter().find(|&&i| i < 0 || i as usize >= size) {
        Some(&bad) => Err(Error::IndexOutOfRange { op, index: bad, size }),
        None => Ok(()),
    }
}

impl CpuStorage {
    /// `out[o, j, i] = x[o, ids[j], i]` over the contiguous view split at `dim`.
    pub(crate) fn index_select(&self, layout: &Layout, dim: usize, ids: &[i64]) -> Result<CpuStorage> {
        let (outer, size, inner) = split3(layout.dims(), dim);
        check_ids(ids, size, "index_select")?;
        // A contiguous source (an embedding table) is read in place: copying it first would cost a pass over
        // the whole table per call, which dominated token-by-token decoding.
        let copied;
        let (data, base) = match layout.contiguous_range() {
            Some(r) => (self.data(), r.start),
            None => {
                copied = self.copy_contiguous(layout);
                (copied.data(), 0)
            }
        };
        fn sel<T: Copy>(v: &[T], base: usize, outer: usize, size: usize, inner: usize, ids: &[i64]) -> Vec<T> {
            let mut out = Vec::with_capacity(outer * ids.len() * inner);
            for o in 0..outer {
                for &j in ids {
                    let s = base + (o * size + j as usize) * inner;
                    out.extend_from_slice(&v[s..s + inner]);
                }
            }
            out
        }
        Ok(CpuStorage::new(map_same_dtype!(data, v => sel(v, base, outer, size, inner, ids))))
    }

    /// The adjoint of `index_select`: a zero tensor of `size` along `dim` with `src` rows added at `ids`.
    pub(crate) fn index_add(&self, layout: &Layout, dim: usize, ids: &[i64], size: usize) -> Result<CpuStorage> {
        fn go<T: Float>(s: &CpuStorage, l: &Layout, dim: usize, ids: &[i64], size: usize) -> Result<CpuStorage> {
            let src = s.float_slice::<T>(l);
            let (outer, n, inner) = split3(l.dims(), dim);
            check_ids(ids, size, "index_add")?;
            let mut out = vec![T::ZERO; outer * size * inner];
            for o in 0..outer {
                for (j, &id) in ids.iter().enumerate().take(n) {
                    let (d, s) = ((o * size + id as usize) * inner, (o * n + j) * inner);
                    out[d..d + inner].iter_mut().zip(&src[s..s + inner]).for_each(|(a, &b)| *a += b);
                }
            }
            Ok(CpuStorage::new(float_into_data(out, s.dtype())))
        }
        float_dispatch!(self.dtype(), "index_add", go(self, layout, dim, ids, size))
    }

    /// `out[o, j, i] = x[o, ids[o, j, i], i]` where `ids` has the view's shape except along `dim`.
    pub(crate) fn gather(&self, layout: &Layout, dim: usize, ids: &[i64], ids_dims: &[usize]) -> Result<CpuStorage> {
        let (outer, size, inner) = split3(layout.dims(), dim);
        let n = ids_dims[dim];
        check_ids(ids, size, "gather")?;
        let x = self.copy_contiguous(layout);
        fn gat<T: Copy>(v: &[T], outer: usize, size: usize, inner: usize, n: usize, ids: &[i64]) -> Vec<T> {
            let mut out = Vec::with_capacity(ids.len());
            for o in 0..outer {
                for j in 0..n {
                    for i in 0..inner {
                        out.push(v[(o * size + ids[(o * n + j) * inner + i] as usize) * inner + i]);
                    }
                }
            }
            out
        }
        Ok(CpuStorage::new(map_same_dtype!(x.data(), v => gat(v, outer, size, inner, n, ids))))
    }

    /// The adjoint of `gather`: zeros of `dims` with `src[o, j, i]` added at `[o, ids[o, j, i], i]`.
    pub(crate) fn scatter_add(&self, layout: &Layout, dim: usize, ids: &[i64], dims: &[usize]) -> Result<CpuStorage> {
        fn go<T: Float>(s: &CpuStorage, l: &Layout, dim: usize, ids: &[i64], dims: &[usize]) -> Result<CpuStorage> {
            let src = s.float_slice::<T>(l);
            let (outer, size, inner) = split3(dims, dim);
            let n = l.dims()[dim];
            check_ids(ids, size, "scatter_add")?;
            let mut out = vec![T::ZERO; outer * size * inner];
            for o in 0..outer {
                for j in 0..n {
                    for i in 0..inner {
                        let k = (o * n + j) * inner + i;
                        out[(o * size + ids[k] as usize) * inner + i] += src[k];
                    }
                }
            }
            Ok(CpuStorage::new(float_into_data(out, s.dtype())))
        }
        float_dispatch!(self.dtype(), "scatter_add", go(self, layout, dim, ids, dims))
    }
}

/// Concatenates views of one dtype along `dim` (all other dims equal); contiguous result.
pub(crate) fn concat(parts: &[(&CpuStorage, &Layout)], dim: usize) -> Result<CpuStorage> {
    let first = parts[0].0.dtype();
    if let Some(p) = parts.iter().find(|p| p.0.dtype() != first) {
        return Err(Error::DTypeMismatch { op: "concat", lhs: first, rhs: p.0.dtype() });
    }
    let outer: usize = parts[0].1.dims()[..dim].iter().product();
    let conts: Vec<CpuStorage> = parts.iter().map(|(s, l)| s.copy_contiguous(l)).collect();
    let blocks: Vec<usize> = parts.iter().map(|(_, l)| l.dims()[dim..].iter().product()).collect();
    fn cat<T: Copy>(bufs: &[&[T]], blocks: &[usize], outer: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(blocks.iter().sum::<usize>() * outer);
        for o in 0..outer {
            for (b, &n) in bufs.iter().zip(blocks) {
                out.extend_from_slice(&b[o * n..(o + 1) * n]);
            }
        }
        out
    }
    macro_rules! arm {
        ($var:ident) => {{
            let bufs: Vec<&[_]> = conts
                .iter()
                .map(|c| match c.data() {
                    CpuData::$var(v) => v.as_slice(),
                    _ => unreachable!("dtypes were checked equal above"),
                })
                .collect();
            CpuData::$var(cat(&bufs, &blocks, outer))
        }};
    }
    let data = match first {
        crate::DType::F32 => arm!(F32),
        crate::DType::F64 => arm!(F64),
        crate::DType::F16 => arm!(F16),
        crate::DType::BF16 => arm!(BF16),
        crate::DType::U8 => arm!(U8),
        crate::DType::U32 => arm!(U32),
        crate::DType::I64 => arm!(I64),
    };
    Ok(CpuStorage::new(data))
}

/// Rotary position embedding of `x` [.., t, d] with `cos`/`sin` [t, d/2]. `interleaved` rotates pairs
/// (x[2i], x[2i+1]); otherwise the halves (x[i], x[i + d/2]) (the "rotate half" form of Llama in transformers).
/// `inverse` rotates by −θ, which is the backward pass.
pub(crate) fn rope(
    x: (&CpuStorage, &Layout),
    cos: (&CpuStorage, &Layout),
    sin: (&CpuStorage, &Layout),
    interleaved: bool,
    inverse: bool,
) -> Result<CpuStorage> {
    fn go<T: Float>(
        x: (&CpuStorage, &Layout),
        cos: (&CpuStorage, &Layout),
        sin: (&CpuStorage, &Layout),
        interleaved: bool,
        inverse: bool,
    ) -> Result<CpuStorage> {
        let v = x.0.float_slice::<T>(x.1);
        let (c, s) = (cos.0.float_slice::<T>(cos.1), sin.0.float_slice::<T>(sin.1));
        let dims = x.1.dims();
        let (t, d) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let h = d / 2;
        let mut out = vec![T::ZERO; v.len()];
        for (r, (o, xr)) in out.chunks_mut(d).zip(v.chunks(d)).enumerate() {
            let p = r % t;
            for i in 0..h {
                let (cv, mut sv) = (c[p * h + i], s[p * h + i]);
                if inverse {
                    sv = -sv;
                }
                let (a, b) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + h) };
                o[a] = xr[a] * cv - xr[b] * sv;
                o[b] = xr[b] * cv + xr[a] * sv;
            }
        }
        Ok(CpuStorage::new(float_into_data(out, x.0.dtype())))
    }
    float_dispatch!(x.0.dtype(), "rope", go(x, cos, sin, interleaved, inverse))
}
