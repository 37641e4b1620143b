//! The GGUF header parser: a bounds-checked little-endian cursor over the mapped bytes. Every count and length is
//! checked against the bytes left before anything is allocated, so a hostile header costs at most a small constant
//! multiple of the file's own size (a typed array element or string never takes more than 32 bytes of memory per
//! 1 byte, 8 bytes or 12 bytes it needs in the file).

use super::value::{Array, Value, ValueType};

/// Arrays nested deeper than this are rejected (llama.cpp writes none; the limit bounds the recursion).
pub(crate) const MAX_ARRAY_DEPTH: usize = 8;

/// Why a read failed; the caller adds the file and the field.
#[derive(Debug)]
pub(crate) enum Bad {
    Truncated { need: usize, have: usize },
    Invalid(String),
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::Truncated { need, have } => {
                write!(
                    f,
                    "truncated: needs {need} more bytes, {have} left in the file"
                )
            }
            Bad::Invalid(m) => f.write_str(m),
        }
    }
}

pub(crate) type R<T> = std::result::Result<T, Bad>;

/// A cursor over the file's bytes.
#[derive(Debug)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

macro_rules! read_le {
    ($name:ident, $t:ty) => {
        pub(crate) fn $name(&mut self) -> R<$t> {
            let b = self.take(std::mem::size_of::<$t>())?;
            let mut a = [0u8; std::mem::size_of::<$t>()];
            a.copy_from_slice(b);
            Ok(<$t>::from_le_bytes(a))
        }
    };
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize) -> R<&'a [u8]> {
        if n > self.remaining() {
            return Err(Bad::Truncated {
                need: n,
                have: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    read_le!(u8, u8);
    read_le!(i8, i8);
    read_le!(u16, u16);
    read_le!(i16, i16);
    read_le!(u32, u32);
    read_le!(i32, i32);
    read_le!(u64, u64);
    read_le!(i64, i64);
    read_le!(f32, f32);
    read_le!(f64, f64);

    /// Reads a count and checks that `count` items of at least `min_size` bytes each fit in what is left.
    pub(crate) fn count(&mut self, min_size: usize, what: &str) -> R<usize> {
        let n = self.u64()?;
        let fits = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(min_size))
            .is_some_and(|b| b <= self.remaining());
        if !fits {
            return Err(Bad::Invalid(format!(
                "{what} count {n} needs at least {n}×{min_size} bytes but only {} are left in the file",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }

    /// A GGUF string: u64 byte length, then UTF-8 bytes.
    pub(crate) fn string(&mut self) -> R<String> {
        let n = self.u64()?;
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.remaining())
            .ok_or_else(|| {
                Bad::Invalid(format!(
                    "string length {n} is more than the {} bytes left in the file",
                    self.remaining()
                ))
            })?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|e| Bad::Invalid(format!("string is not UTF-8: {e}")))
    }

    pub(crate) fn value_type(&mut self) -> R<ValueType> {
        let id = self.u32()?;
        ValueType::from_id(id).ok_or_else(|| Bad::Invalid(format!("unknown value type id {id}")))
    }

    /// One value of a known type.
    pub(crate) fn value(&mut self, ty: ValueType, depth: usize) -> R<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.u8()?),
            ValueType::I8 => Value::I8(self.i8()?),
            ValueType::U16 => Value::U16(self.u16()?),
            ValueType::I16 => Value::I16(self.i16()?),
            ValueType::U32 => Value::U32(self.u32()?),
            ValueType::I32 => Value::I32(self.i32()?),
            ValueType::F32 => Value::F32(self.f32()?),
            ValueType::Bool => Value::Bool(self.bool()?),
            ValueType::String => Value::String(self.string()?),
            ValueType::Array => Value::Array(self.array(depth + 1)?),
            ValueType::U64 => Value::U64(self.u64()?),
            ValueType::I64 => Value::I64(self.i64()?),
            ValueType::F64 => Value::F64(self.f64()?),
        })
    }

    fn bool(&mut self) -> R<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(Bad::Invalid(format!("bool byte is {b}, not 0 or 1"))),
        }
    }

    /// An array: element type, u64 count, elements.
    pub(crate) fn array(&mut self, depth: usize) -> R<Array> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(Bad::Invalid(format!(
                "arrays nested more than {MAX_ARRAY_DEPTH} deep"
            )));
        }
        let et = self.value_type()?;
        let n = self.count(et.min_size(), "array element")?;
        fn many<T>(n: usize, mut f: impl FnMut() -> R<T>) -> R<Vec<T>> {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(f().map_err(|e| match e {
                    Bad::Invalid(m) => Bad::Invalid(format!("element {i}: {m}")),
                    t => t,
                })?);
            }
            Ok(v)
        }
        Ok(match et {
            ValueType::U8 => Array::U8(self.take(n)?.to_vec()),
            ValueType::I8 => Array::I8(many(n, || self.i8())?),
            ValueType::U16 => Array::U16(many(n, || self.u16())?),
            ValueType::I16 => Array::I16(many(n, || self.i16())?),
            ValueType::U32 => Array::U32(many(n, || self.u32())?),
            ValueType::I32 => Array::I32(many(n, || self.i32())?),
            ValueType::F32 => Array::F32(many(n, || self.f32())?),
            ValueType::Bool => Array::Bool(many(n, || self.bool())?),
            ValueType::String => Array::String(many(n, || self.string())?),
            ValueType::Array => Array::Array(many(n, || self.array(depth + 1))?),
            ValueType::U64 => Array::U64(many(n, || self.u64())?),
            ValueType::I64 => Array::I64(many(n, || self.i64())?),
            ValueType::F64 => Array::F64(many(n, || self.f64())?),
        })
    }
}
