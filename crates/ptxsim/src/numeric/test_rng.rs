//! A tiny deterministic random source for the numeric tests (xorshift64*), with generators biased toward
//! the awkward values: subnormals, values near overflow, exact halves and signed zeros.

pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub(crate) fn u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn u32(&mut self) -> u32 {
        (self.u64() >> 32) as u32
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.u64() % n
    }

    /// A finite f64 whose magnitude spans the f32 range and a little beyond, including f32 subnormals.
    pub(crate) fn wide_f64(&mut self) -> f64 {
        let m = (self.u64() >> 11) as f64 / (1u64 << 53) as f64 + 0.5;
        let e = self.below(300) as i32 - 160;
        let x = m * 2f64.powi(e);
        if self.u64() & 1 == 1 {
            -x
        } else {
            x
        }
    }

    /// An f32 bit pattern: mostly random bits, sometimes a special or a value of a chosen binade.
    pub(crate) fn f32_bits(&mut self) -> u32 {
        match self.below(16) {
            0 => [
                0,
                0x8000_0000,
                0x7f80_0000,
                0xff80_0000,
                0x7fc0_0000,
                1,
                0x8000_0001,
                0x7f7f_ffff,
            ][self.below(8) as usize],
            1 | 2 => self.u32() & 0x807f_ffff, // a subnormal or zero
            3..=8 => (self.u32() & 0x807f_ffff) | ((110 + self.below(40) as u32) << 23),
            _ => self.u32(),
        }
    }

    /// A 16-bit pattern of a format with 5 (f16) or 8 (bf16) exponent bits.
    pub(crate) fn half_bits(&mut self, exp_bits: u32) -> u16 {
        let man = 15 - exp_bits;
        let v = self.u32() as u16;
        match self.below(8) {
            0 => v & !(((1 << exp_bits) - 1) << man), // a subnormal or zero
            1..=4 => {
                let bias = (1u16 << (exp_bits - 1)) - 1;
                let e = bias - 3 + self.below(7) as u16;
                (v & !(((1 << exp_bits) - 1) << man)) | (e << man)
            }
            _ => v,
        }
    }

    /// An f64 bit pattern: random bits, sometimes a special, mostly a moderate binade.
    pub(crate) fn f64_bits(&mut self) -> u64 {
        match self.below(16) {
            0 => [
                0,
                1 << 63,
                0x7ff0 << 48,
                0xfff0 << 48,
                0x7ff8 << 48,
                1,
                0x7fef_ffff_ffff_ffff,
            ][self.below(7) as usize],
            1 => self.u64() & 0x800f_ffff_ffff_ffff,
            2..=10 => (self.u64() & 0x800f_ffff_ffff_ffff) | ((990 + self.below(60)) << 52),
            _ => self.u64(),
        }
    }
}
