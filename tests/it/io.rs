//! safetensors round trips for every dtype (including strided views), metadata, and errors that name the file
//! and the tensor.

use std::collections::HashMap;

use anyhow::Result;
use rankfold_tensor::safetensors::{load, save, MmapedSafetensors};
use rankfold_tensor::{DType, Device, Rng, Tensor};

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rankfold-it-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir is writable");
    d
}

#[test]
fn round_trip_every_dtype() -> Result<()> {
    let dir = tmpdir("st");
    let path = dir.join("all.safetensors");
    let mut rng = Rng::new(4);
    let base = rng.uniform_tensor(-100.0, 100.0, (3, 5), DType::F32, Device::Cpu)?;
    let mut named = vec![];
    for dt in [DType::F32, DType::F64, DType::F16, DType::BF16, DType::U8, DType::U32, DType::I64] {
        let t = if dt.is_float() { base.to_dtype(dt)? } else { base.abs()?.to_dtype(dt)? };
        named.push((format!("t.{dt}"), t));
    }
    // A transposed view is written in its logical (row-major) order.
    named.push(("view".into(), base.t()?));
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save(&path, &refs, Some(&meta))?;
    let back = load(&path, Device::Cpu)?;
    assert_eq!(back.len(), named.len());
    for (n, t) in &named {
        let b = &back[n];
        assert_eq!((b.dims(), b.dtype()), (t.dims(), t.dtype()), "{n}");
        assert_eq!(b.to_vec::<f64>()?, t.to_vec::<f64>()?, "{n} must be bit-identical");
    }
    let f = MmapedSafetensors::open(&path)?;
    assert_eq!(f.metadata()?.get("format").map(String::as_str), Some("pt"));
    assert_eq!(f.info("t.bf16")?, (rankfold_tensor::Shape::from([3, 5]), DType::BF16));
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[test]
fn bad_files_get_errors_naming_file_and_tensor() -> Result<()> {
    let dir = tmpdir("bad");
    let missing = dir.join("nope.safetensors");
    let e = load(&missing, Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("nope.safetensors"), "{e}");
    // A truncated file.
    let good = dir.join("good.safetensors");
    let t = Tensor::ones((4, 4), DType::F32, Device::Cpu)?;
    save(&good, &[("w", &t)], None)?;
    let bytes = std::fs::read(&good)?;
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 10])?;
    let e = load(&cut, Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("cut.safetensors"), "{e}");
    // A hostile header length is rejected without a huge allocation.
    let hostile = dir.join("hostile.safetensors");
    let mut h = (u64::MAX / 2).to_le_bytes().to_vec();
    h.extend_from_slice(b"{}");
    std::fs::write(&hostile, &h)?;
    assert!(load(&hostile, Device::Cpu).is_err());
    // A tensor that is not there is named.
    let e = MmapedSafetensors::open(&good)?.load("missing.weight", Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("missing.weight") && e.contains("good.safetensors"), "{e}");
    // Duplicate names are refused, and the existing file is left as it was.
    assert!(save(&good, &[("w", &t), ("w", &t)], None).is_err());
    assert_eq!(std::fs::read(&good)?, bytes);
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
