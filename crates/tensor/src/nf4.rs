//! `Nf4Tensor`: a weight quantized to bitsandbytes NF4 (optionally with double-quantized block scales), its
//! safetensors layout exactly as bitsandbytes' `Linear4bit` writes it (docs/reference.md, "NF4"), and the
//! dequantize-fused matmul op `x.nf4_linear(&w)` (`y = x·Ŵᵀ`, with a backward for x) of the CPU backend.
//!
//! Keys for a weight named `W` (e.g. `model.layers.0.mlp.up_proj.weight`): `W` (u8 `[(n+1)/2, 1]`),
//! `W.absmax` (u8 codes when double-quantized, else f32), `W.quant_map` (f32 `[16]`), and when
//! double-quantized `W.nested_absmax` (f32) and `W.nested_quant_map` (f32 `[256]`), plus
//! `W.quant_state.bitsandbytes__nf4`: the u8 bytes of a JSON object with `quant_type`, `blocksize`, `dtype`,
//! `shape` and, when double-quantized, `nested_blocksize`, `nested_dtype`, `nested_offset`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rankfold_kernels::nf4::{self, fast, DoubleQuant, Nf4Ref, NESTED_BLOCKSIZE, NF4_CODEBOOK};

use crate::backprop::{edges, BackwardOp};
use crate::cpu::{float_into_data, nf4_matmul, CpuStorage};
use crate::safetensors::MmapedSafetensors;
use crate::{DType, Device, Error, Result, Shape, Storage, Tensor};

/// The suffix of the quant-state key of an NF4 weight.
pub const QUANT_STATE_SUFFIX: &str = ".quant_state.bitsandbytes__nf4";

/// The block scales of an NF4 tensor: plain f32, or double-quantized.
#[derive(Debug, Clone, PartialEq)]
pub enum Nf4Scales {
    /// One f32 absmax per block.
    Plain(Vec<f32>),
    /// 8-bit codes, nested f32 scales and the mean offset (bitsandbytes' `compress_statistics`).
    Double(DoubleQuant),
}

/// A tensor stored as NF4: packed 4-bit codes, block scales, and the shape and dtype it stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Tensor {
    shape: Shape,
    dtype: DType,
    blocksize: usize,
    packed: Vec<u8>,
    scales: Nf4Scales,
}

fn nf4_err(op: &'static str, e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument { op, msg: e.to_string() }
}

fn torch_dtype_name(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => return None,
    })
}

fn dtype_from_torch(s: &str) -> Option<DType> {
    Some(match s.trim_start_matches("torch.") {
        "float32" | "float" => DType::F32,
        "float16" | "half" => DType::F16,
        "bfloat16" => DType::BF16,
        _ => return None,
    })
}

impl Nf4Tensor {
    /// Quantizes a contiguous-or-not f32/f16/bf16 CPU tensor in blocks of `blocksize` (bitsandbytes' CPU path,
    /// bit for bit), with double-quantized scales when `double_quant` (the offset summed in torch's one-thread
    /// order, `nf4::DEFAULT_TORCH_THREADS`).
    pub fn quantize(t: &Tensor, blocksize: usize, double_quant: bool) -> Result<Nf4Tensor> {
        Self::quantize_with(t, blocksize, double_quant, nf4::DEFAULT_TORCH_THREADS)
    }

    /// [`Nf4Tensor::quantize`], with the double-quantization offset summed as torch does with `torch_threads`
    /// intra-op threads (`nf4::torch_mean`; it matters from 32 768 blocks up).
    pub fn quantize_with(t: &Tensor, blocksize: usize, double_quant: bool, torch_threads: usize) -> Result<Nf4Tensor> {
        const OP: &str = "nf4_quantize";
        let q = match t.dtype() {
            DType::F32 => fast::quantize(&t.to_vec::<f32>()?, blocksize),
            DType::F16 => fast::quantize(&t.to_vec::<half::f16>()?, blocksize),
            DType::BF16 => fast::quantize(&t.to_vec::<half::bf16>()?, blocksize),
            dtype => return Err(Error::UnsupportedDType { op: OP, dtype }),
        }
        .map_err(|e| nf4_err(OP, e))?;
        let scales = if double_quant {
            Nf4Scales::Double(nf4::double_quantize_threads(&q.absmax, torch_threads))
        } else {
            Nf4Scales::Plain(q.absmax)
        };
        Self::from_parts(t.shape().clone(), t.dtype(), blocksize, q.packed, scales)
    }

    /// Assembles an NF4 tensor from its parts, checking that they fit together.
    pub fn from_parts(
        shape: Shape,
        dtype: DType,
        blocksize: usize,
        packed: Vec<u8>,
        scales: Nf4Scales,
    ) -> Result<Nf4Tensor> {
        const OP: &str = "Nf4Tensor::from_parts";
        if torch_dtype_name(dtype).is_none() {
            return Err(Error::UnsupportedDType { op: OP, dtype });
        }
        let n = shape.elem_count();
        let nblocks = n.div_ceil(blocksize.max(1));
        let stored = match &scales {
            Nf4Scales::Plain(a) => a.len(),
            Nf4Scales::Double(dq) => {
                // Checks the nested scales against the codes.
                nf4::double_dequantize_range(dq, 0, &mut []).map_err(|e| nf4_err(OP, e))?;
                dq.codes.len()
            }
        };
        if stored != nblocks {
            return Err(nf4_err(
                OP,
                format!("{n} elements in blocks of {blocksize} need {nblocks} scales, got {stored}"),
            ));
        }
        let t = Nf4Tensor {
            shape,
            dtype,
            blocksize,
            packed,
            scales,
        };
        t.with_view(|v| v.validate(OP)).map_err(|e| nf4_err(OP, e))?;
        Ok(t)
    }

    /// The shape of the tensor this stands for.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    /// The dtype it was quantized from and dequantizes to by default.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Elements per block.
    pub fn blocksize(&self) -> usize {
        self.blocksize
    }
    /// The packed codes, first element in the high nibble.
    pub fn packed(&self) -> &[u8] {
        &self.packed
    }
    /// The stored block scales.
    pub fn scales(&self) -> &Nf4Scales {
        &self.scales
    }
    /// The f32 block scales that dequantization uses (reconstructed when double-quantized).
    pub fn absmax(&self) -> Cow<'_, [f32]> {
        match &self.scales {
            Nf4Scales::Plain(a) => Cow::Borrowed(a),
            Nf4Scales::Double(dq) => {
                let mut a = vec![0f32; dq.codes.len()];
                nf4::double_dequantize_range(dq, 0, &mut a).expect("from_parts checked the nested scales");
                Cow::Owned(a)
            }
        }
    }

    /// Runs `f` on a borrowed view of the whole tensor for the `rankfold_kernels::nf4` functions (double-quantized
    /// scales are reconstructed for the call and dropped after it).
    pub fn with_view<R>(&self, f: impl FnOnce(Nf4Ref<'_>) -> R) -> R {
        let absmax = self.absmax();
        f(Nf4Ref {
            packed: &self.packed,
            absmax: &absmax,
            len: self.shape.elem_count(),
            blocksize: self.blocksize,
        })
    }

    /// A view of the whole blocks covering elements `start..end`, with their scales reconstructed into `scratch`,
    /// and the index of `start` inside that view. This is how the fused matmul reads one tile without ever holding
    /// all the f32 scales.
    pub(crate) fn tile_view<'a>(&'a self, start: usize, end: usize, scratch: &'a mut Vec<f32>) -> (Nf4Ref<'a>, usize) {
        let n = self.shape.elem_count();
        let (b0, b1) = (start / self.blocksize, end.min(n).div_ceil(self.blocksize));
        let (e0, e1) = (b0 * self.blocksize, (b1 * self.blocksize).min(n));
        let absmax: &[f32] = match &self.scales {
            Nf4Scales::Plain(a) => &a[b0..b1],
            Nf4Scales::Double(dq) => {
                scratch.resize(b1 - b0, 0.0);
                nf4::double_dequantize_range(dq, b0, scratch).expect("from_parts checked the nested scales");
                scratch
            }
        };
        // The view starts on a block boundary, and blocks hold an even number of elements, so on a byte too.
        let view = Nf4Ref {
            packed: &self.packed[e0 / 2..e1.div_ceil(2)],
            absmax,
            len: e1 - e0,
            blocksize: self.blocksize,
        };
        (view, start - e0)
    }

    /// Bytes this takes in memory and on disk (codes, scales and the two code maps bitsandbytes stores).
    pub fn storage_bytes(&self) -> usize {
        self.packed.len()
            + match &self.scales {
                Nf4Scales::Plain(a) => 4 * a.len(),
                Nf4Scales::Double(dq) => dq.codes.len() + 4 * dq.nested_absmax.len() + 4 + 4 * 256,
            }
            + 4 * 16
    }

    /// Dequantizes to a CPU tensor of `dtype` (f32, f16 or bf16): `codebook[q]·absmax` in f32, then rounded.
    pub fn dequantize(&self, dtype: DType) -> Result<Tensor> {
        const OP: &str = "nf4_dequantize";
        let n = self.shape.elem_count();
        let data = match dtype {
            DType::F32 => {
                let mut v = vec![0f32; n];
                self.with_view(|w| fast::dequantize(w, &mut v))
                    .map_err(|e| nf4_err(OP, e))?;
                float_into_data(v, DType::F32)
            }
            DType::F16 => {
                let mut v = vec![half::f16::ZERO; n];
                self.with_view(|w| fast::dequantize(w, &mut v))
                    .map_err(|e| nf4_err(OP, e))?;
                crate::cpu::CpuData::F16(v)
            }
            DType::BF16 => {
                let mut v = vec![half::bf16::ZERO; n];
                self.with_view(|w| fast::dequantize(w, &mut v))
                    .map_err(|e| nf4_err(OP, e))?;
                crate::cpu::CpuData::BF16(v)
            }
            dtype => return Err(Error::UnsupportedDType { op: OP, dtype }),
        };
        Tensor::from_cpu_data(data, self.shape.clone(), Device::Cpu)
    }

    /// The quant-state JSON, formatted as Python's `json.dumps` would.
    fn quant_state_json(&self) -> String {
        let dims: Vec<String> = self.shape.dims().iter().map(|d| d.to_string()).collect();
        let mut s = format!(
            "{{\"quant_type\": \"nf4\", \"blocksize\": {}, \"dtype\": \"{}\", \"shape\": [{}]",
            self.blocksize,
            torch_dtype_name(self.dtype).expect("from_parts admits only f32/f16/bf16"),
            dims.join(", ")
        );
        if let Nf4Scales::Double(dq) = &self.scales {
            let off = serde_json::to_string(&(dq.offset as f64)).expect("a finite f64 serializes");
            s += &format!(
                ", \"nested_blocksize\": {NESTED_BLOCKSIZE}, \"nested_dtype\": \"float32\", \"nested_offset\": {off}"
            );
        }
        s + "}"
    }

    /// The tensors bitsandbytes stores for this weight under the name `name`, in its key order.
    pub fn to_named_tensors(&self, name: &str) -> Result<Vec<(String, Tensor)>> {
        let cpu = Device::Cpu;
        let mut v = vec![(
            name.to_string(),
            Tensor::from_vec(self.packed.clone(), (self.packed.len(), 1), cpu)?,
        )];
        match &self.scales {
            Nf4Scales::Plain(a) => v.push((format!("{name}.absmax"), Tensor::from_vec(a.clone(), a.len(), cpu)?)),
            Nf4Scales::Double(dq) => v.push((
                format!("{name}.absmax"),
                Tensor::from_vec(dq.codes.clone(), dq.codes.len(), cpu)?,
            )),
        }
        v.push((
            format!("{name}.quant_map"),
            Tensor::from_vec(NF4_CODEBOOK.to_vec(), 16, cpu)?,
        ));
        if let Nf4Scales::Double(dq) = &self.scales {
            let na = dq.nested_absmax.clone();
            v.push((
                format!("{name}.nested_absmax"),
                Tensor::from_vec(na.clone(), na.len(), cpu)?,
            ));
            v.push((
                format!("{name}.nested_quant_map"),
                Tensor::from_vec(nf4::dynamic_map_signed().to_vec(), 256, cpu)?,
            ));
        }
        let json = self.quant_state_json().into_bytes();
        let len = json.len();
        v.push((format!("{name}{QUANT_STATE_SUFFIX}"), Tensor::from_vec(json, len, cpu)?));
        Ok(v)
    }

    /// Reads the NF4 weight named `name` from a safetensors file, checking every companion tensor.
    pub fn from_safetensors(st: &MmapedSafetensors, name: &str) -> Result<Nf4Tensor> {
        let path = st.path().display().to_string();
        let bad = |key: &str, msg: String| Error::SafeTensorsTensor {
            path: path.clone(),
            name: key.to_string(),
            msg,
        };
        let load_as = |key: &str, dtype: DType| -> Result<Tensor> {
            let t = st.load(key, Device::Cpu)?;
            if t.dtype() != dtype {
                return Err(bad(
                    key,
                    format!("dtype {} where bitsandbytes writes {dtype}", t.dtype()),
                ));
            }
            Ok(t)
        };
        let qs_key = format!("{name}{QUANT_STATE_SUFFIX}");
        let json_bytes: Vec<u8> = load_as(&qs_key, DType::U8)?.to_vec()?;
        let qs: serde_json::Value =
            serde_json::from_slice(&json_bytes).map_err(|e| bad(&qs_key, format!("quant state is not JSON: {e}")))?;
        let field = |f: &str| {
            qs.get(f)
                .ok_or_else(|| bad(&qs_key, format!("quant state lacks `{f}`")))
        };
        if field("quant_type")?.as_str() != Some("nf4") {
            return Err(bad(
                &qs_key,
                format!("quant_type {} is not \"nf4\"", field("quant_type")?),
            ));
        }
        let blocksize = field("blocksize")?
            .as_u64()
            .ok_or_else(|| bad(&qs_key, "blocksize is not an integer".into()))? as usize;
        let dtype_s = field("dtype")?.as_str().unwrap_or_default().to_string();
        let dtype = dtype_from_torch(&dtype_s)
            .ok_or_else(|| bad(&qs_key, format!("dtype \"{dtype_s}\" is not float32/float16/bfloat16")))?;
        let dims: Vec<usize> = field("shape")?
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .ok_or_else(|| bad(&qs_key, "shape is not a list of integers".into()))?;
        let shape = Shape::new(dims);
        let packed: Vec<u8> = load_as(name, DType::U8)?.to_vec()?;
        let qmap: Vec<f32> = load_as(&format!("{name}.quant_map"), DType::F32)?.to_vec()?;
        if qmap
            .iter()
            .map(|v| v.to_bits())
            .ne(NF4_CODEBOOK.iter().map(|v| v.to_bits()))
        {
            return Err(bad(&format!("{name}.quant_map"), "is not the NF4 codebook".into()));
        }
        let scales = if let Some(off) = qs.get("nested_offset") {
            let offset = off
                .as_f64()
                .ok_or_else(|| bad(&qs_key, "nested_offset is not a number".into()))? as f32;
            if qs.get("nested_blocksize").and_then(|b| b.as_u64()) != Some(NESTED_BLOCKSIZE as u64) {
                return Err(bad(&qs_key, format!("nested_blocksize must be {NESTED_BLOCKSIZE}")));
            }
            let nmap: Vec<f32> = load_as(&format!("{name}.nested_quant_map"), DType::F32)?.to_vec()?;
            if nmap
                .iter()
                .map(|v| v.to_bits())
                .ne(nf4::DYNAMIC_MAP_SIGNED_BITS.iter().copied())
            {
                return Err(bad(
                    &format!("{name}.nested_quant_map"),
                    "is not bitsandbytes' signed dynamic map".into(),
                ));
            }
            Nf4Scales::Double(DoubleQuant {
                offset,
                codes: load_as(&format!("{name}.absmax"), DType::U8)?.to_vec()?,
                nested_absmax: load_as(&format!("{name}.nested_absmax"), DType::F32)?.to_vec()?,
            })
        } else {
            Nf4Scales::Plain(load_as(&format!("{name}.absmax"), DType::F32)?.to_vec()?)
        };
        Self::from_parts(shape, dtype, blocksize, packed, scales).map_err(|e| bad(name, e.to_string()))
    }

    /// The names of the NF4 weights in a safetensors file (those with a quant-state key).
    pub fn names_in(st: &MmapedSafetensors) -> Vec<String> {
        st.names()
            .into_iter()
            .filter_map(|n| n.strip_suffix(QUANT_STATE_SUFFIX).map(str::to_string))
            .collect()
    }

    /// Is `key` one of the companion tensors bitsandbytes stores beside the NF4 weight `name`?
    pub fn is_companion(name: &str, key: &str) -> bool {
        key.strip_prefix(name).is_some_and(|rest| {
            matches!(
                rest,
                ".absmax" | ".quant_map" | ".nested_absmax" | ".nested_quant_map" | QUANT_STATE_SUFFIX
            )
        })
    }

    /// Loads every NF4 weight of a file.
    pub fn load_all(path: impl AsRef<Path>) -> Result<HashMap<String, Nf4Tensor>> {
        let st = MmapedSafetensors::open(path)?;
        Self::names_in(&st)
            .into_iter()
            .map(|n| Ok((n.clone(), Self::from_safetensors(&st, &n)?)))
            .collect()
    }

    /// Writes NF4 weights (and plain tensors) to one safetensors file atomically, in bitsandbytes' layout.
    pub fn save(path: impl AsRef<Path>, nf4: &[(&str, &Nf4Tensor)], plain: &[(&str, &Tensor)]) -> Result<()> {
        let mut owned = Vec::new();
        for (name, t) in nf4 {
            owned.extend(t.to_named_tensors(name)?);
        }
        let mut all: Vec<(&str, &Tensor)> = owned.iter().map(|(n, t)| (n.as_str(), t)).collect();
        all.extend_from_slice(plain);
        crate::safetensors::save(path, &all, None)
    }
}

impl Tensor {
    /// `y = x·Ŵᵀ` for `x [.., k]` and an NF4 weight `Ŵ [n, k]` (a linear layer), computed tile by tile without
    /// dequantizing the whole weight; f32 compute, output in x's dtype. The weight is frozen: the backward pass
    /// gives x its gradient `dy·Ŵ` through the same tiles.
    pub fn nf4_linear(&self, w: &Arc<Nf4Tensor>) -> Result<Tensor> {
        const OP: &str = "nf4_linear";
        let (n, k) = match w.shape().dims() {
            [n, k] => (*n, *k),
            _ => {
                return Err(Error::InvalidShape {
                    op: OP,
                    shape: w.shape().clone(),
                    msg: "the weight must be 2-D".into(),
                })
            }
        };
        let dims = self.dims();
        if dims.last() != Some(&k) {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().clone(),
                rhs: w.shape().clone(),
            });
        }
        let m = self.elem_count() / k.max(1);
        let x = self.to_dtype(DType::F32)?.to_vec::<f32>()?;
        let y = nf4_matmul::forward(&x, m, w, n, k);
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("x has at least one dim") = n;
        let storage = Storage::Cpu(CpuStorage::new(float_into_data(y, DType::F32)));
        let grad = edges(&[self]).map(|e| {
            (
                BackwardOp::Nf4Linear {
                    w: w.clone(),
                    x_shape: self.shape().clone(),
                },
                e,
            )
        });
        let y = Tensor::from_op(storage, Shape::new(out_dims), grad);
        if self.dtype() == DType::F32 {
            Ok(y)
        } else {
            y.to_dtype(self.dtype())
        }
    }
}

/// The gradient of `nf4_linear` for x: `dx = dy·Ŵ`, in dy's dtype, shaped like x.
pub(crate) fn nf4_linear_backward(g: &Tensor, w: &Nf4Tensor, x_shape: &Shape) -> Result<Tensor> {
    let (n, k) = (w.shape().dims()[0], w.shape().dims()[1]);
    let m = g.elem_count() / n.max(1);
    let dy = g.to_dtype(DType::F32)?.to_vec::<f32>()?;
    let dx = nf4_matmul::backward_x(&dy, m, w, n, k);
    let t = Tensor::from_op(
        Storage::Cpu(CpuStorage::new(float_into_data(dx, DType::F32))),
        x_shape.clone(),
        None,
    );
    if g.dtype() == DType::F32 {
        Ok(t)
    } else {
        t.to_dtype(g.dtype())
    }
}
