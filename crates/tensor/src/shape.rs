//! `Shape` (the dimensions of a tensor) and helpers to resolve dimension arguments and broadcast shapes.

use crate::{Error, Result};

/// The dimensions of a tensor, outermost first.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Shape {
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
    }
    /// Row-major (C-contiguous) strides for this shape.
    pub fn contiguous_strides(&self) -> Vec<usize> {
        let mut strides = vec![0; self.0.len()];
        let mut acc = 1;
        for (s, d) in strides.iter_mut().zip(&self.0).rev() {
            *s = acc;
            acc *= *d;
        }
        strides
    }
    /// The size of dimension `dim`, which must be in range.
    pub fn dim(&self, dim: usize) -> usize {
        self.0[dim]
    }

    /// Resolves a possibly negative dimension index (`-1` is the last) for `op`.
    pub fn resolve_dim(&self, dim: isize, op: &'static str) -> Result<usize> {
        let rank = self.rank() as isize;
        let d = if dim < 0 { dim + rank } else { dim };
        if d < 0 || d >= rank {
            return Err(Error::DimOutOfRange { op, dim, shape: self.clone() });
        }
        Ok(d as usize)
    }

    /// The shape both `self` and `rhs` broadcast to (NumPy rules: align right, 1 stretches).
    pub fn broadcast_with(&self, rhs: &Shape, op: &'static str) -> Result<Shape> {
        let (l, r) = (self.dims(), rhs.dims());
        let rank = l.len().max(r.len());
        let mut out = vec![0; rank];
        for i in 0..rank {
            let a = if i + l.len() >= rank { l[i + l.len() - rank] } else { 1 };
            let b = if i + r.len() >= rank { r[i + r.len() - rank] } else { 1 };
            out[i] = if a == b || b == 1 {
                a
            } else if a == 1 {
                b
            } else {
                return Err(Error::ShapeMismatch { op, lhs: self.clone(), rhs: rhs.clone() });
            };
        }
        Ok(Shape(out))
    }

    /// The dims of a broadcast result that `self` was stretched along (to be summed in a backward pass):
    /// leading dims `self` lacks, and dims where `self` has 1 but `target` does not.
    pub fn broadcast_sum_dims(&self, target: &Shape) -> (Vec<usize>, Vec<usize>) {
        let lead = target.rank() - self.rank();
        let leading: Vec<usize> = (0..lead).collect();
        let stretched = (0..self.rank())
            .filter(|&i| self.0[i] == 1 && target.0[i + lead] != 1)
            .collect();
        (leading, stretched)
    }
}

impl From<Vec<usize>> for Shape {
    fn from(v: Vec<usize>) -> Self {
        Shape(v)
    }
}
impl From<&[usize]> for Shape {
    fn from(v: &[usize]) -> Self {
        Shape(v.to_vec())
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(v: [usize; N]) -> Self {
        Shape(v.to_vec())
    }
}
impl From<&Shape> for Shape {
    fn from(v: &Shape) -> Self {
        v.clone()
    }
}
impl From<()> for Shape {
    fn from(_: ()) -> Self {
        Shape(vec![])
    }
}
impl From<usize> for Shape {
    fn from(d: usize) -> Self {
        Shape(vec![d])
    }
}
impl From<(usize, usize)> for Shape {
    fn from(d: (usize, usize)) -> Self {
        Shape(vec![d.0, d.1])
    }
}
impl From<(usize, usize, usize)> for Shape {
    fn from(d: (usize, usize, usize)) -> Self {
        Shape(vec![d.0, d.1, d.2])
    }
}
impl From<(usize, usize, usize, usize)> for Shape {
    fn from(d: (usize, usize, usize, usize)) -> Self {
        Shape(vec![d.0, d.1, d.2, d.3])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_rules() {
        let a = Shape::from([3, 1, 5]);
        let b = Shape::from([4, 1]);
        assert_eq!(a.broadcast_with(&b, "t").unwrap(), Shape::from([3, 4, 5]));
        assert!(Shape::from([3]).broadcast_with(&Shape::from([4]), "t").is_err());
        assert_eq!(b.broadcast_sum_dims(&Shape::from([3, 4, 5])), (vec![0], vec![1]));
    }

    #[test]
    fn strides_and_dims() {
        assert_eq!(Shape::from([2, 3, 4]).contiguous_strides(), vec![12, 4, 1]);
        assert_eq!(Shape::from([2, 3]).resolve_dim(-1, "t").unwrap(), 1);
        assert!(Shape::from([2, 3]).resolve_dim(2, "t").is_err());
    }
}
