//! `Layout`: how a tensor's elements sit in its storage (shape, strides in elements, start offset), the
//! zero-copy view transforms, and iteration over the storage offsets of a strided view.

use crate::{Error, Result, Shape};

/// Shape, strides (in elements) and start offset of a view into a storage buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    shape: Shape,
    strides: Vec<usize>,
    offset: usize,
}

impl Layout {
    pub fn contiguous(shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        let strides = shape.contiguous_strides();
        Layout { shape, strides, offset: 0 }
    }
    pub fn new(shape: Shape, strides: Vec<usize>, offset: usize) -> Self {
        Layout { shape, strides, offset }
    }
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// True when the elements are row-major and gap-free (dims of size 1 may carry any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut acc = 1;
        for (&d, &s) in self.dims().iter().zip(&self.strides).rev() {
            if d != 1 && s != acc {
                return false;
            }
            acc *= d;
        }
        true
    }

    /// The storage range `[offset, offset + elem_count)` when contiguous.
    pub fn contiguous_range(&self) -> Option<std::ops::Range<usize>> {
        self.is_contiguous().then(|| self.offset..self.offset + self.shape.elem_count())
    }

    pub(crate) fn permute(&self, perm: &[usize]) -> Layout {
        let dims = perm.iter().map(|&p| self.dims()[p]).collect::<Vec<_>>();
        let strides = perm.iter().map(|&p| self.strides[p]).collect();
        Layout { shape: Shape::new(dims), strides, offset: self.offset }
    }

    pub(crate) fn narrow(&self, dim: usize, start: usize, len: usize) -> Layout {
        let mut dims = self.dims().to_vec();
        dims[dim] = len;
        Layout { shape: Shape::new(dims), strides: self.strides.clone(), offset: self.offset + start * self.strides[dim] }
    }

    /// A view of this layout stretched to `target` (stride 0 along broadcast dims).
    pub(crate) fn broadcast_as(&self, target: &Shape, op: &'static str) -> Result<Layout> {
        let lead = target.rank().checked_sub(self.shape.rank()).ok_or_else(|| Error::ShapeMismatch {
            op,
            lhs: self.shape.clone(),
            rhs: target.clone(),
        })?;
        let mut strides = vec![0; target.rank()];
        for i in 0..self.shape.rank() {
            let (d, t) = (self.dims()[i], target.dims()[i + lead]);
            strides[i + lead] = if d == t {
                self.strides[i]
            } else if d == 1 {
                0
            } else {
                return Err(Error::ShapeMismatch { op, lhs: self.shape.clone(), rhs: target.clone() });
            };
        }
        Ok(Layout { shape: target.clone(), strides, offset: self.offset })
    }

    /// A reshaped view when the data allows it without a copy (contiguous), else None.
    pub(crate) fn reshape(&self, shape: &Shape) -> Option<Layout> {
        self.is_contiguous().then(|| Layout { shape: shape.clone(), strides: shape.contiguous_strides(), offset: self.offset })
    }

    /// Iterates over the storage offsets of the elements in row-major order.
    pub fn offsets(&self) -> StridedOffsets<'_> {
        StridedOffsets::new(self)
    }

    /// Splits the view into (outer index offsets, inner run length, inner stride) so kernels can process rows:
    /// returns the innermost dim size and stride and an iterator over the start offset of every row.
    pub fn rows(&self) -> (usize, usize, StridedOffsets<'_>) {
        let rank = self.shape.rank();
        if rank == 0 {
            return (1, 1, StridedOffsets { layout: self, index: vec![], next: Some(self.offset), outer_rank: 0 });
        }
        let inner = self.dims()[rank - 1];
        let stride = self.strides[rank - 1];
        let mut it = StridedOffsets::new(self);
        it.outer_rank = rank - 1;
        if inner == 0 {
            it.next = None;
        }
        (inner, stride, it)
    }
}

/// Row-major iterator over storage offsets of a strided layout (optionally only over its outer dims).
#[derive(Debug)]
pub struct StridedOffsets<'a> {
    layout: &'a Layout,
    index: Vec<usize>,
    next: Option<usize>,
    outer_rank: usize,
}

impl<'a> StridedOffsets<'a> {
    fn new(layout: &'a Layout) -> Self {
        let rank = layout.shape.rank();
        let next = (layout.shape.elem_count() > 0).then_some(layout.offset);
        StridedOffsets { layout, index: vec![0; rank], next, outer_rank: rank }
    }
}

impl Iterator for StridedOffsets<'_> {
    type Item = usize;
    #[inline]
    fn next(&mut self) -> Option<usize> {
        let cur = self.next?;
        let dims = self.layout.dims();
        let strides = &self.layout.strides;
        let mut off = cur;
        let mut d = self.outer_rank;
        loop {
            if d == 0 {
                self.next = None;
                break;
            }
            d -= 1;
            self.index[d] += 1;
            off += strides[d];
            if self.index[d] < dims[d] {
                self.next = Some(off);
                break;
            }
            off -= strides[d] * dims[d];
            self.index[d] = 0;
        }
        Some(cur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_of_transposed_view() {
        let l = Layout::contiguous([2, 3]).permute(&[1, 0]);
        assert!(!l.is_contiguous());
        assert_eq!(l.offsets().collect::<Vec<_>>(), vec![0, 3, 1, 4, 2, 5]);
        let (inner, stride, rows) = l.rows();
        assert_eq!((inner, stride), (2, 3));
        assert_eq!(rows.collect::<Vec<_>>(), vec![0, 1, 2]);
    }

    #[test]
    fn broadcast_and_narrow() {
        let l = Layout::contiguous([3, 1]).broadcast_as(&Shape::from([2, 3, 4]), "t").unwrap();
        assert_eq!(l.strides(), &[0, 1, 0]);
        assert_eq!(l.offsets().take(5).collect::<Vec<_>>(), vec![0, 0, 0, 0, 1]);
        let n = Layout::contiguous([4, 5]).narrow(1, 2, 2);
        assert_eq!(n.offsets().collect::<Vec<_>>(), vec![2, 3, 7, 8, 12, 13, 17, 18]);
        assert!(Layout::contiguous([0, 3]).offsets().next().is_none());
    }
}
