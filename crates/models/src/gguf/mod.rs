//! GGUF files (llama.cpp's model format, versions 2 and 3): the memory-mapped file, its metadata and tensor
//! infos, and tensors read as f32 (`dequantize`, `read_rows`); `llama` maps a Llama GGUF to Hugging Face names,
//! undoes the Q/K row permutation and loads straight to NF4; `GgufTokenizer` is the tokenizer metadata.
//!
//! Layout (little-endian): magic `GGUF`, u32 version, u64 tensor count, u64 metadata count; the metadata
//! key/value pairs (u64-length UTF-8 key, u32 value type, value; arrays are u32 element type, u64 count,
//! elements); the tensor infos (name, u32 n_dims ≤ 4, u64 dims with `dims[0]` the fastest-varying, u32 ggml type,
//! u64 offset); padding to `general.alignment` (default 32); the data section, where each tensor's offset is
//! relative to its start and a multiple of the alignment.

mod dequant;
pub mod llama;
mod reader;
mod tokenizer;
mod value;

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use rankfold_tensor::{Device, Tensor};

pub use dequant::GgmlType;
pub use tokenizer::GgufTokenizer;
pub use value::{Array, Value, ValueType};

use crate::{Error, Result};
use reader::{Bad, Cursor};

/// The alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's most dimensions per tensor.
pub const MAX_DIMS: usize = 4;

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The GGUF name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// The dimensions as stored: `dims[0]` varies fastest (for a linear weight, the input features).
    pub dims: Vec<u64>,
    /// The element type.
    pub ggml_type: GgmlType,
    /// The offset of the data from the start of the data section.
    pub offset: u64,
    /// The number of elements.
    pub n_elements: usize,
    /// The bytes of data, when the type's block layout is known.
    pub n_bytes: Option<usize>,
}

impl TensorInfo {
    /// The row-major shape rankfold uses: the stored dims reversed (a linear weight becomes `[out, in]`).
    pub fn shape(&self) -> Vec<usize> {
        // The dims were checked to fit usize when the header was read.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// The length of a row (`dims[0]`) and the number of rows (the product of the other dims).
    pub fn rows(&self) -> (usize, usize) {
        let cols = self.dims.first().map_or(1, |&d| d as usize);
        (cols, self.n_elements.checked_div(cols).unwrap_or(0))
    }
}

#[derive(Debug)]
enum Backing {
    Mmap(memmap2::Mmap),
    Empty,
}

/// An open GGUF file.
#[derive(Debug)]
pub struct GgufFile {
    path: String,
    version: u32,
    alignment: u64,
    metadata: Vec<(String, Value)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_offset: usize,
    data: Backing,
}

impl GgufFile {
    /// Memory-maps and parses a GGUF file; every field is checked against the file's size.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let p = path.as_ref();
        let path = p.display().to_string();
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(p).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let data = if len == 0 {
            Backing::Empty
        } else {
            // SAFETY: the map is read-only and private to this value; like every model loader that maps its
            // weights, we rely on the file not being truncated or rewritten by another process while it is open.
            Backing::Mmap(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?)
        };
        Self::parse(path, data)
    }

    fn bytes(&self) -> &[u8] {
        match &self.data {
            Backing::Mmap(m) => m,
            Backing::Empty => &[],
        }
    }

    fn parse(path: String, data: Backing) -> Result<GgufFile> {
        let buf: &[u8] = match &data {
            Backing::Mmap(m) => m,
            Backing::Empty => &[],
        };
        let hdr = |field: &str, e: Bad| Error::GgufHeader {
            path: path.clone(),
            field: field.to_string(),
            msg: e.to_string(),
        };
        let mut c = Cursor::new(buf);
        let magic = c.take(4).map_err(|e| hdr("magic", e))?;
        if magic != b"GGUF" {
            return Err(hdr(
                "magic",
                Bad::Invalid(format!("expected \"GGUF\", found {magic:02x?}")),
            ));
        }
        let version = c.u32().map_err(|e| hdr("version", e))?;
        if !(2..=3).contains(&version) {
            return Err(hdr(
                "version",
                Bad::Invalid(format!("version {version} is not supported (only 2 and 3)")),
            ));
        }
        // Each tensor info takes at least 24 bytes (name length, n_dims, type, offset).
        let n_tensors = c.count(24, "tensor").map_err(|e| hdr("tensor_count", e))?;
        // Each key/value pair takes at least 13 bytes (key length, value type, a one-byte value).
        let n_kv = c
            .count(13, "metadata")
            .map_err(|e| hdr("metadata_kv_count", e))?;
        let mut metadata = Vec::with_capacity(n_kv);
        let mut meta_index = HashMap::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = c
                .string()
                .map_err(|e| hdr(&format!("metadata key #{i}"), e))?;
            let field = format!("metadata `{key}`");
            let ty = c.value_type().map_err(|e| hdr(&field, e))?;
            let v = c.value(ty, 0).map_err(|e| hdr(&field, e))?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(hdr(&field, Bad::Invalid("the key appears twice".into())));
            }
            metadata.push((key, v));
        }
        let alignment = match meta_index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(v) => {
                return Err(hdr(
                    "metadata `general.alignment`",
                    Bad::Invalid(format!(
                        "must be a u32 power of two, found {}",
                        v.describe()
                    )),
                ))
            }
        };
        let mut tensors = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c
                .string()
                .map_err(|e| hdr(&format!("tensor info #{i} name"), e))?;
            let t = |e: Bad| Error::GgufTensor {
                path: path.clone(),
                tensor: name.clone(),
                msg: format!("tensor info: {e}"),
            };
            let n_dims = c.u32().map_err(t)? as usize;
            if n_dims > MAX_DIMS {
                return Err(t(Bad::Invalid(format!(
                    "{n_dims} dimensions (at most {MAX_DIMS})"
                ))));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.u64().map_err(t)?);
            }
            let ggml_type = GgmlType::from_id(c.u32().map_err(t)?);
            let offset = c.u64().map_err(t)?;
            let n_elements = dims
                .iter()
                .try_fold(1usize, |acc, &d| {
                    usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
                })
                .filter(|&n| n <= isize::MAX as usize / 4)
                .ok_or_else(|| {
                    t(Bad::Invalid(format!(
                        "dims {dims:?} overflow the element count"
                    )))
                })?;
            let n_bytes = match ggml_type.block_layout() {
                None => None,
                Some((bs, ts)) => {
                    let cols = dims.first().copied().unwrap_or(1);
                    if cols % bs as u64 != 0 {
                        return Err(t(Bad::Invalid(format!(
                            "row length {cols} is not a multiple of {ggml_type}'s block of {bs}"
                        ))));
                    }
                    Some(n_elements / bs * ts)
                }
            };
            if offset % alignment != 0 {
                return Err(t(Bad::Invalid(format!(
                    "offset {offset} is not a multiple of the alignment {alignment}"
                ))));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(t(Bad::Invalid("the name appears twice".into())));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                n_elements,
                n_bytes,
            });
        }
        let data_offset = c.pos().next_multiple_of(alignment as usize);
        let file_len = buf.len();
        for ti in &tensors {
            if let Some(nb) = ti.n_bytes {
                let end = (data_offset as u64)
                    .checked_add(ti.offset)
                    .and_then(|s| s.checked_add(nb as u64));
                if end.is_none_or(|e| e > file_len as u64) {
                    return Err(Error::GgufTensor {
                        path: path.clone(),
                        tensor: ti.name.clone(),
                        msg: format!(
                            "{nb} bytes of data at offset {} from the data section at {data_offset} run past the end \
                             of the {file_len}-byte file",
                            ti.offset
                        ),
                    });
                }
            }
        }
        Ok(GgufFile {
            path,
            version,
            alignment,
            metadata,
            meta_index,
            tensors,
            tensor_index,
            data_offset,
            data,
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &str {
        &self.path
    }
    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }
    /// The data alignment (`general.alignment`, or 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// The byte offset of the data section (tensor offsets are relative to it).
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }
    /// The metadata pairs in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }
    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }
    /// The tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    /// A tensor info by GGUF name.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    pub(crate) fn tensor_err(&self, tensor: &str, msg: impl Into<String>) -> Error {
        Error::GgufTensor {
            path: self.path.clone(),
            tensor: tensor.to_string(),
            msg: msg.into(),
        }
    }

    pub(crate) fn meta_err(&self, key: &str, msg: impl Into<String>) -> Error {
        Error::GgufMetadata {
            path: self.path.clone(),
            key: key.to_string(),
            msg: msg.into(),
        }
    }

    /// The info of a tensor that must exist.
    pub fn require(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_info(name)
            .ok_or_else(|| self.tensor_err(name, "no tensor of this name in the file"))
    }

    /// The raw stored bytes of a tensor (range-checked when the file was opened).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<&[u8]> {
        let nb = info.n_bytes.ok_or_else(|| {
            self.tensor_err(
                &info.name,
                format!("{} has no known byte size", info.ggml_type),
            )
        })?;
        let start = self.data_offset + info.offset as usize;
        Ok(&self.bytes()[start..start + nb])
    }

    /// Dequantizes rows `first .. first + out.len() / row_len` of a tensor (a row is `dims[0]` elements) into `out`.
    pub fn read_rows(&self, info: &TensorInfo, first: usize, out: &mut [f32]) -> Result<()> {
        let (cols, rows) = info.rows();
        let bytes = self.tensor_bytes(info)?;
        if cols == 0 || out.len() % cols != 0 || first + out.len() / cols > rows {
            return Err(self.tensor_err(
                &info.name,
                format!(
                    "cannot read {} values from row {first} of {rows} rows of {cols}",
                    out.len()
                ),
            ));
        }
        let row_bytes = bytes.len() / rows;
        let n = out.len() / cols;
        dequant::dequantize_into(
            info.ggml_type,
            &bytes[first * row_bytes..(first + n) * row_bytes],
            out,
        )
        .map_err(|m| self.tensor_err(&info.name, m))
    }

    /// The whole tensor as an f32 CPU tensor of shape `info.shape()`, exactly as stored (no permutation undone).
    pub fn dequantize(&self, name: &str) -> Result<Tensor> {
        let info = self.require(name)?;
        let mut out = vec![0f32; info.n_elements];
        if !out.is_empty() {
            self.read_rows(info, 0, &mut out)?;
        }
        Ok(Tensor::from_vec(out, info.shape(), Device::Cpu)?)
    }
}
