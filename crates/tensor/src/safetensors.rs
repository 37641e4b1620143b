//! safetensors I/O for every dtype: memory-mapped reading (tensors are copied out of the map one at a time, so
//! a large file is never read into memory whole) and atomic writing (temp file, fsync, rename).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype as StDtype, TensorView};

use crate::cpu::CpuData;
use crate::{DType, Device, Error, Result, Shape, Tensor};

fn to_st(d: DType) -> StDtype {
    match d {
        DType::F32 => StDtype::F32,
        DType::F64 => StDtype::F64,
        DType::F16 => StDtype::F16,
        DType::BF16 => StDtype::BF16,
        DType::U8 => StDtype::U8,
        DType::U32 => StDtype::U32,
        DType::I64 => StDtype::I64,
    }
}

fn from_st(d: StDtype) -> Option<DType> {
    Some(match d {
        StDtype::F32 => DType::F32,
        StDtype::F64 => DType::F64,
        StDtype::F16 => DType::F16,
        StDtype::BF16 => DType::BF16,
        StDtype::U8 => DType::U8,
        StDtype::U32 => DType::U32,
        StDtype::I64 => DType::I64,
        _ => return None,
    })
}

fn st_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::SafeTensors { path: path.display().to_string(), msg: e.to_string() }
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io { path: path.display().to_string(), source }
}

/// A memory-mapped safetensors file whose tensors are loaded on demand.
#[derive(Debug)]
pub struct MmapedSafetensors {
    path: std::path::PathBuf,
    mmap: memmap2::Mmap,
}

impl MmapedSafetensors {
    /// Maps `path` and validates its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
        // SAFETY: the map is read-only and lives as long as `self`; the file is not modified by this process.
        // Another process truncating the file while mapped would raise SIGBUS, as with any mmap reader.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
        safetensors::SafeTensors::deserialize(&mmap).map_err(|e| st_err(path, e))?;
        Ok(MmapedSafetensors { path: path.to_path_buf(), mmap })
    }

    /// The file this maps.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn parsed(&self) -> safetensors::SafeTensors<'_> {
        safetensors::SafeTensors::deserialize(&self.mmap).expect("the header was validated in `open`")
    }

    /// Tensor names in file order of their offsets.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<(usize, String)> =
            self.parsed().tensors().into_iter().map(|(n, t)| (t.data().as_ptr() as usize, n)).collect();
        v.sort();
        v.into_iter().map(|(_, n)| n).collect()
    }

    /// The `__metadata__` map of the header.
    pub fn metadata(&self) -> Result<HashMap<String, String>> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(&self.mmap).map_err(|e| st_err(&self.path, e))?;
        Ok(meta.metadata().clone().unwrap_or_default().into_iter().collect())
    }

    /// Shape and dtype of tensor `name` without loading it.
    pub fn info(&self, name: &str) -> Result<(Shape, DType)> {
        let st = self.parsed();
        let view = st.tensor(name).map_err(|e| self.tensor_err(name, e))?;
        let dt = from_st(view.dtype()).ok_or_else(|| self.tensor_err(name, format!("dtype {:?} is not supported", view.dtype())))?;
        Ok((Shape::new(view.shape().to_vec()), dt))
    }

    fn tensor_err(&self, name: &str, e: impl std::fmt::Display) -> Error {
        Error::SafeTensorsTensor { path: self.path.display().to_string(), name: name.to_string(), msg: e.to_string() }
    }

    /// Loads tensor `name` onto `device`.
    pub fn load(&self, name: &str, device: Device) -> Result<Tensor> {
        let st = self.parsed();
        let view = st.tensor(name).map_err(|e| self.tensor_err(name, e))?;
        let dt = from_st(view.dtype()).ok_or_else(|| self.tensor_err(name, format!("dtype {:?} is not supported", view.dtype())))?;
        let shape = Shape::new(view.shape().to_vec());
        let data = CpuData::from_bytes(dt, view.data());
        Tensor::from_cpu_data(data, shape, device).map_err(|e| self.tensor_err(name, e))
    }

    /// Loads every tensor.
    pub fn load_all(&self, device: Device) -> Result<HashMap<String, Tensor>> {
        self.names().into_iter().map(|n| Ok((n.clone(), self.load(&n, device)?))).collect()
    }
}

/// Loads every tensor of a safetensors file.
pub fn load(path: impl AsRef<Path>, device: Device) -> Result<HashMap<String, Tensor>> {
    MmapedSafetensors::open(path)?.load_all(device)
}

/// Writes `tensors` (any layout, any dtype) and optional `__metadata__` to `path` atomically: the bytes go to
/// a temporary file beside it, which is fsynced and then renamed over `path`.
pub fn save(path: impl AsRef<Path>, tensors: &[(&str, &Tensor)], metadata: Option<&HashMap<String, String>>) -> Result<()> {
    let path = path.as_ref();
    let mut seen = std::collections::HashSet::new();
    let mut bufs = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if !seen.insert(*name) {
            return Err(st_err(path, format!("tensor name `{name}` appears twice")));
        }
        let c = t.contiguous()?;
        let bytes = {
            let st = c.storage();
            let range = c.layout().contiguous_range().expect("contiguous() returns a contiguous layout");
            let size = c.dtype().size_in_bytes();
            st.cpu().data().as_bytes()[range.start * size..range.end * size].to_vec()
        };
        bufs.push((name.to_string(), c.dims().to_vec(), c.dtype(), bytes));
    }
    let views: BTreeMap<String, TensorView<'_>> = bufs
        .iter()
        .map(|(n, shape, dt, b)| {
            let v = TensorView::new(to_st(*dt), shape.clone(), b).map_err(|e| st_err(path, e))?;
            Ok((n.clone(), v))
        })
        .collect::<Result<_>>()?;
    let meta = metadata.map(|m| m.clone().into_iter().collect());
    let bytes = safetensors::tensor::serialize(views, meta).map_err(|e| st_err(path, e))?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename, so a crash leaves the old file or the
/// new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| st_err(path, "the path has no file name"))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
    f.sync_all().map_err(|e| io_err(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
