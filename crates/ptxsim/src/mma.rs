//! Warp-wide matrix instructions: `mma.sync.aligned.{m16n8k16,m16n8k8}.row.col.f32.{f16,bf16}.{f16,bf16}.f32`
//! and `ldmatrix.sync.aligned.m8n8.x{1,2,4}{.trans}.shared.b16`, on per-lane register fragments laid out
//! exactly as the PTX ISA's "Matrix Fragments for mma.m16n8k16 / mma.m16n8k8" and "ldmatrix" sections say.
//!
//! Fragment layout (groupID = lane >> 2, tig = lane % 4; element `i` of a lane's fragment sits in register
//! `i / 2`, the even element in the low 16 bits):
//! - A (16×k, row-major view): element `i` is at row `groupID + 8·((i >> 1) & 1)`, column
//!   `2·tig + (i & 1) + 8·(i >> 2)`; k16 uses elements 0..8 (four registers), k8 elements 0..4 (two).
//! - B (k×8): element `i` is at row `2·tig + (i & 1) + 8·(i >> 1)`, column `groupID`; k16 uses 0..4, k8 0..2.
//! - C and D (16×8, f32, one element per register): element `i` is at row `groupID + 8·(i >> 1)`, column
//!   `2·tig + (i & 1)`.

use crate::numeric::float_to_f64;
use crate::types::ScalarType;

/// The two `mma.sync` shapes rankfold's kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MmaShape {
    M16N8K16,
    M16N8K8,
}

impl MmaShape {
    pub(crate) const fn k(self) -> usize {
        match self {
            MmaShape::M16N8K16 => 16,
            MmaShape::M16N8K8 => 8,
        }
    }
}

/// The 16-bit element `i` of a lane's fragment registers.
fn element(regs: &[u32], i: usize) -> u16 {
    (regs[i / 2] >> (16 * (i % 2))) as u16
}

/// `D = A·B + C` for one warp. `ab_type` is F16 or Bf16 (the A and B element type); `a`, `b`, `c` are
/// the lanes' registers. Products of f16/bf16 values are exact in f32; the sum of each dot product and C
/// is formed in f64 and rounded once to f32. The hardware's accumulation order and intermediate rounding
/// are not specified by the ISA, so results may differ from a GPU in the last bits of f32.
pub(crate) fn mma_sync(
    shape: MmaShape,
    ab_type: ScalarType,
    a: &[[u32; 4]; 32],
    b: &[[u32; 2]; 32],
    c: &[[f32; 4]; 32],
) -> [[f32; 4]; 32] {
    let k = shape.k();
    let val = |bits: u16| float_to_f64(ab_type, bits as u64);
    let mut am = [[0f64; 16]; 16]; // [16, k] row-major
    let mut bm = [[0f64; 8]; 16]; // [k, 8] row-major
    let mut cm = [[0f64; 8]; 16]; // [16, 8] row-major
    for lane in 0..32 {
        let (g, t) = (lane >> 2, lane % 4);
        for i in 0..k / 2 {
            am[g + 8 * ((i >> 1) & 1)][2 * t + (i & 1) + 8 * (i >> 2)] = val(element(&a[lane], i));
        }
        for i in 0..k / 4 {
            bm[2 * t + (i & 1) + 8 * (i >> 1)][g] = val(element(&b[lane], i));
        }
        for i in 0..4 {
            cm[g + 8 * (i >> 1)][2 * t + (i & 1)] = c[lane][i] as f64;
        }
    }
    let mut d = [[0f32; 4]; 32];
    for (lane, out) in d.iter_mut().enumerate() {
        let (g, t) = (lane >> 2, lane % 4);
        for (i, o) in out.iter_mut().enumerate() {
            let (row, col) = (g + 8 * (i >> 1), 2 * t + (i & 1));
            let dot: f64 = (0..k).map(|kk| am[row][kk] * bm[kk][col]).sum();
            *o = (dot + cm[row][col]) as f32;
        }
    }
    d
}

/// `ldmatrix.sync.aligned.m8n8.x{num}{.trans}.shared.b16`. `rows[r]` is the 16-byte row (eight b16
/// elements) whose address lane `r` supplied; matrix `j` is rows `8j..8j+8`. Lane `l` receives in register
/// `j` the elements of matrix `j` at row `l / 4`, columns `2·(l % 4)` and `2·(l % 4) + 1` (the first in
/// the low half); with `.trans` it receives the transposed matrix's, i.e. rows `2·(l % 4)` and
/// `2·(l % 4) + 1` of column `l / 4`. Registers `num..4` are left 0.
pub(crate) fn ldmatrix(num: usize, trans: bool, rows: &[[u8; 16]]) -> [[u32; 4]; 32] {
    assert!(
        matches!(num, 1 | 2 | 4) && rows.len() >= 8 * num,
        "ldmatrix needs 8·num rows for num in {{1, 2, 4}} (the executor gathers them)"
    );
    let elem = |j: usize, r: usize, c: usize| {
        let row = &rows[8 * j + r];
        u16::from_le_bytes([row[2 * c], row[2 * c + 1]]) as u32
    };
    let mut out = [[0u32; 4]; 32];
    for (lane, regs) in out.iter_mut().enumerate() {
        let (r, c) = (lane / 4, 2 * (lane % 4));
        for (j, reg) in regs.iter_mut().enumerate().take(num) {
            *reg = if trans {
                elem(j, c, r) | elem(j, c + 1, r) << 16
            } else {
                elem(j, r, c) | elem(j, r, c + 1) << 16
            };
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // Matrix loops read best with explicit indices.
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Where the ISA puts matrix element (r, c): (lane, element index), written from the inverse side of
    /// the layout (which lane and slot hold a given element) rather than the forward formulas above.
    fn a_slot(r: usize, c: usize) -> (usize, usize) {
        ((r % 8) * 4 + (c % 8) / 2, (c % 2) + 2 * (r / 8) + 4 * (c / 8))
    }
    fn b_slot(r: usize, c: usize) -> (usize, usize) {
        (c * 4 + (r % 8) / 2, (r % 2) + 2 * (r / 8))
    }
    fn cd_slot(r: usize, c: usize) -> (usize, usize) {
        ((r % 8) * 4 + c / 2, (c % 2) + 2 * (r / 8))
    }

    fn put(regs: &mut [u32], i: usize, bits: u16) {
        regs[i / 2] |= (bits as u32) << (16 * (i % 2));
    }

    fn check_mma(shape: MmaShape, ty: ScalarType, seed: u64, exact: bool) {
        let k = shape.k();
        let mut rng = Rng(seed);
        // Small integers times powers of two keep every sum exact when `exact`; otherwise random values.
        let value = |rng: &mut Rng| -> f32 {
            let n = rng.next();
            if exact {
                ((n % 17) as f32 - 8.0) * 2f32.powi((n >> 8) as i32 % 5 - 2)
            } else {
                ((n >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0) as f32
            }
        };
        let to_bits = |x: f32| match ty {
            ScalarType::F16 => half::f16::from_f32(x).to_bits(),
            _ => half::bf16::from_f32(x).to_bits(),
        };
        let from_bits = |b: u16| match ty {
            ScalarType::F16 => half::f16::from_bits(b).to_f32(),
            _ => half::bf16::from_bits(b).to_f32(),
        };
        let am: Vec<Vec<u16>> = (0..16)
            .map(|_| (0..k).map(|_| to_bits(value(&mut rng))).collect())
            .collect();
        let bm: Vec<Vec<u16>> = (0..k)
            .map(|_| (0..8).map(|_| to_bits(value(&mut rng))).collect())
            .collect();
        let cm: Vec<Vec<f32>> = (0..16).map(|_| (0..8).map(|_| value(&mut rng)).collect()).collect();
        let (mut a, mut b, mut c) = ([[0u32; 4]; 32], [[0u32; 2]; 32], [[0f32; 4]; 32]);
        for r in 0..16 {
            for col in 0..k {
                let (lane, i) = a_slot(r, col);
                put(&mut a[lane], i, am[r][col]);
            }
        }
        for r in 0..k {
            for col in 0..8 {
                let (lane, i) = b_slot(r, col);
                put(&mut b[lane], i, bm[r][col]);
            }
        }
        for r in 0..16 {
            for col in 0..8 {
                let (lane, i) = cd_slot(r, col);
                c[lane][i] = cm[r][col];
            }
        }
        let d = mma_sync(shape, ty, &a, &b, &c);
        for r in 0..16 {
            for col in 0..8 {
                let mut want = cm[r][col] as f64;
                for kk in 0..k {
                    want += from_bits(am[r][kk]) as f64 * from_bits(bm[kk][col]) as f64;
                }
                let (lane, i) = cd_slot(r, col);
                let got = d[lane][i] as f64;
                if exact {
                    assert_eq!(got, want, "{shape:?} {ty:?} d[{r}][{col}]");
                } else {
                    assert!(
                        (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                        "{shape:?} d[{r}][{col}]"
                    );
                }
            }
        }
    }

    #[test]
    fn mma_matches_plain_matrix_product() {
        for (seed, shape) in [(1, MmaShape::M16N8K16), (2, MmaShape::M16N8K8)] {
            for ty in [ScalarType::F16, ScalarType::Bf16] {
                check_mma(shape, ty, seed * 7 + 3, true);
                check_mma(shape, ty, seed * 11 + 5, false);
            }
        }
    }

    #[test]
    fn ldmatrix_places_each_element_where_the_isa_says() {
        let mut rng = Rng(99);
        for num in [1, 2, 4] {
            for trans in [false, true] {
                let rows: Vec<[u8; 16]> = (0..8 * num).map(|_| [0; 16].map(|_| rng.next() as u8)).collect();
                let out = ldmatrix(num, trans, &rows);
                for j in 0..4 {
                    for r in 0..8 {
                        for c in 0..8 {
                            if j >= num {
                                continue;
                            }
                            let want = u16::from_le_bytes([rows[8 * j + r][2 * c], rows[8 * j + r][2 * c + 1]]);
                            // Without .trans element (r, c) lands in lane 4r + c/2; with it, the lane
                            // that owns (c, r) of the transposed matrix: lane 4c + r/2, half r % 2.
                            let (lane, half) = if trans {
                                (4 * c + r / 2, r % 2)
                            } else {
                                (4 * r + c / 2, c % 2)
                            };
                            let got = (out[lane][j] >> (16 * half)) as u16;
                            assert_eq!(got, want, "x{num} trans {trans} matrix {j} ({r}, {c})");
                        }
                    }
                }
                for lane in out.iter() {
                    assert!(lane[num..].iter().all(|&v| v == 0));
                }
            }
        }
    }
}
