//! Tests of the float instruction semantics: the exact core against the host's IEEE arithmetic, directed
//! rounding checked against exact error-free transformations in f64, and the PTX special-value rules.

use super::test_rng::Rng;
use super::*;
use std::cmp::Ordering;

const MODES: [Option<Rounding>; 4] = [
    Some(Rounding::Rn),
    Some(Rounding::Rz),
    Some(Rounding::Rm),
    Some(Rounding::Rp),
];

fn mods(rnd: Option<Rounding>) -> FloatMods {
    FloatMods {
        rnd,
        ..FloatMods::default()
    }
}

/// Knuth's TwoSum: `a + b == s + e` exactly.
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    (s, (a - (s - bb)) + (b - bb))
}

/// Compares `v` with the exact value `hi + lo` (see `check_modes` for why `v − hi` is exact when it matters).
fn cmp_exact(v: f64, hi: f64, lo: f64) -> Ordering {
    if v.is_infinite() {
        return if v > 0.0 { Ordering::Greater } else { Ordering::Less };
    }
    (v - hi).partial_cmp(&lo).expect("finite comparison")
}

/// The next representable value above `bits` in `fmt`.
fn next_up(fmt: Format, bits: u64) -> u64 {
    if bits & !fmt.sign_bit() == 0 {
        1
    } else if fmt.is_neg(bits) {
        bits - 1
    } else {
        bits + 1
    }
}

/// Checks results `[rn, rz, rm, rp]` against an exact value known only through `cmp(v) = v.cmp(exact)`:
/// rm ≤ exact ≤ rp, rm and rp equal or adjacent, rz the one nearer zero, rn the nearer (ties to even).
fn check_modes(fmt: Format, what: &str, r: [u64; 4], cmp: impl Fn(f64) -> Ordering) {
    let [rn, rz, dn, up] = r;
    let v = |b: u64| soft::to_f64(fmt, b);
    assert!(cmp(v(dn)) != Ordering::Greater, "{what}: rm {} above exact", v(dn));
    assert!(cmp(v(up)) != Ordering::Less, "{what}: rp {} below exact", v(up));
    if cmp(v(dn)) == Ordering::Equal {
        assert!(
            v(up) == v(dn) && v(rz) == v(dn) && v(rn) == v(dn),
            "{what}: exact result differs by mode"
        );
        return;
    }
    assert_eq!(up, next_up(fmt, dn), "{what}: rm/rp not adjacent");
    let exact_neg = cmp(0.0) == Ordering::Greater;
    assert_eq!(rz, if exact_neg { up } else { dn }, "{what}: rz");
    let half_ulp = |b: u64| {
        let prev = soft::to_f64(fmt, b - 1);
        (soft::to_f64(fmt, b) - prev).abs() / 2.0
    };
    let mid = if v(up).is_infinite() {
        v(dn) + half_ulp(dn)
    } else if v(dn).is_infinite() {
        v(up) - half_ulp(up)
    } else {
        (v(dn) + v(up)) / 2.0
    };
    if fmt == soft::F64 {
        // The midpoint of two f64 neighbours is not an f64; round-to-nearest f64 is the host's IEEE
        // arithmetic, which `exact_core_nearest_matches_host_ieee_f32_and_f64` checks against the core.
        assert!(rn == dn || rn == up, "{what}: rn not a neighbour");
        return;
    }
    let want = match cmp(mid) {
        Ordering::Less => up,
        Ordering::Greater => dn,
        Ordering::Equal => {
            if dn & 1 == 0 {
                dn
            } else {
                up
            }
        }
    };
    assert_eq!(rn, want, "{what}: rn");
}

fn all_modes(f: impl Fn(FloatMods) -> u64) -> [u64; 4] {
    MODES.map(|r| f(mods(r)))
}

fn canon32(x: f32) -> u64 {
    if x.is_nan() {
        0x7fff_ffff
    } else {
        x.to_bits() as u64
    }
}

fn canon64(x: f64) -> u64 {
    if x.is_nan() {
        soft::F64.canonical_nan()
    } else {
        x.to_bits()
    }
}

#[test]
fn exact_core_nearest_matches_host_ieee_f32_and_f64() {
    let mut rng = Rng::new(20);
    for _ in 0..20_000 {
        let (a, b, c) = (rng.f32_bits(), rng.f32_bits(), rng.f32_bits());
        let [x, y, z] = [a, b, c].map(f32::from_bits);
        let (a, b, c) = (a as u64, b as u64, c as u64);
        let f = soft::F32;
        let ne = Mode::NearestEven;
        assert_eq!(
            soft_arith(FloatBinOp::Add, f, a, b, ne),
            canon32(x + y),
            "{x:e} + {y:e}"
        );
        assert_eq!(
            soft_arith(FloatBinOp::Sub, f, a, b, ne),
            canon32(x - y),
            "{x:e} - {y:e}"
        );
        assert_eq!(
            soft_arith(FloatBinOp::Mul, f, a, b, ne),
            canon32(x * y),
            "{x:e} * {y:e}"
        );
        assert_eq!(
            soft_arith(FloatBinOp::Div, f, a, b, ne),
            canon32(x / y),
            "{x:e} / {y:e}"
        );
        assert_eq!(
            soft_fma(f, a, b, c, ne),
            canon32(x.mul_add(y, z)),
            "fma {x:e} {y:e} {z:e}"
        );
        assert_eq!(sqrt(f, a, ne), canon32(x.sqrt()), "sqrt {x:e}");
    }
    for _ in 0..20_000 {
        let (a, b, c) = (rng.f64_bits(), rng.f64_bits(), rng.f64_bits());
        let [x, y, z] = [a, b, c].map(f64::from_bits);
        let f = soft::F64;
        let ne = Mode::NearestEven;
        assert_eq!(
            soft_arith(FloatBinOp::Add, f, a, b, ne),
            canon64(x + y),
            "{x:e} + {y:e}"
        );
        assert_eq!(
            soft_arith(FloatBinOp::Mul, f, a, b, ne),
            canon64(x * y),
            "{x:e} * {y:e}"
        );
        assert_eq!(
            soft_arith(FloatBinOp::Div, f, a, b, ne),
            canon64(x / y),
            "{x:e} / {y:e}"
        );
        assert_eq!(
            soft_fma(f, a, b, c, ne),
            canon64(x.mul_add(y, z)),
            "fma {x:e} {y:e} {z:e}"
        );
        assert_eq!(sqrt(f, a, ne), canon64(x.sqrt()), "sqrt {x:e}");
    }
}

/// Runs add, sub, mul, fma and div on one element format in every direction and checks each against the
/// exact value, which for these formats f64 TwoSum captures exactly (products are exact in f64).
fn check_format_ops(ty: ScalarType, a: u64, b: u64, c: u64) {
    let fmt = float_format(ty).expect("float type");
    let [x, y, z] = [a, b, c].map(|v| soft::to_f64(fmt, v));
    if !(x.is_finite() && y.is_finite() && z.is_finite()) {
        return;
    }
    let r = all_modes(|m| float_binop(FloatBinOp::Add, ty, a, b, m));
    let (hi, lo) = two_sum(x, y);
    check_modes(fmt, &format!("{ty:?} {x:e} + {y:e}"), r, |v| cmp_exact(v, hi, lo));
    let r = all_modes(|m| float_binop(FloatBinOp::Sub, ty, a, b, m));
    let (hi, lo) = two_sum(x, -y);
    check_modes(fmt, &format!("{ty:?} {x:e} - {y:e}"), r, |v| cmp_exact(v, hi, lo));
    let r = all_modes(|m| float_binop(FloatBinOp::Mul, ty, a, b, m));
    check_modes(fmt, &format!("{ty:?} {x:e} * {y:e}"), r, |v| cmp_exact(v, x * y, 0.0));
    let r = all_modes(|m| float_fma(ty, a, b, c, m));
    let (hi, lo) = two_sum(x * y, z);
    check_modes(fmt, &format!("{ty:?} fma {x:e} {y:e} {z:e}"), r, |v| {
        cmp_exact(v, hi, lo)
    });
    if y != 0.0 {
        // v ≤ x / y  ⇔  v·y ≤ x for y > 0; v·y is exact in f64 for these formats.
        let r = all_modes(|m| float_binop(FloatBinOp::Div, ty, a, b, m));
        check_modes(fmt, &format!("{ty:?} {x:e} / {y:e}"), r, |v| {
            if v.is_infinite() {
                return if v > 0.0 { Ordering::Greater } else { Ordering::Less };
            }
            let o = (v * y).partial_cmp(&x).expect("finite");
            if y > 0.0 {
                o
            } else {
                o.reverse()
            }
        });
    }
    if x > 0.0 {
        let r = all_modes(|m| float_unop(FloatUnOp::Sqrt, ty, a, m));
        check_modes(fmt, &format!("{ty:?} sqrt {x:e}"), r, |v| {
            if v.is_infinite() {
                Ordering::Greater
            } else {
                (v * v).partial_cmp(&x).expect("finite")
            }
        });
    }
}

#[test]
fn directed_rounding_f32_f16_bf16() {
    let mut rng = Rng::new(21);
    for _ in 0..20_000 {
        let (a, b, c) = (rng.f32_bits() as u64, rng.f32_bits() as u64, rng.f32_bits() as u64);
        check_format_ops(ScalarType::F32, a, b, c);
        let [a, b, c] = [0; 3].map(|_| rng.half_bits(5) as u64);
        check_format_ops(ScalarType::F16, a, b, c);
        let [a, b, c] = [0; 3].map(|_| rng.half_bits(8) as u64);
        check_format_ops(ScalarType::Bf16, a, b, c);
    }
}

#[test]
fn directed_rounding_f64_add_and_mul() {
    let mut rng = Rng::new(22);
    let f = soft::F64;
    for _ in 0..20_000 {
        let (a, b) = (rng.f64_bits(), rng.f64_bits());
        let (x, y) = (f64::from_bits(a), f64::from_bits(b));
        if !(x.is_finite() && y.is_finite()) {
            continue;
        }
        let (hi, lo) = two_sum(x, y);
        if hi.is_finite() {
            let r = all_modes(|m| float_binop(FloatBinOp::Add, ScalarType::F64, a, b, m));
            check_modes(f, &format!("{x:e} + {y:e}"), r, |v| cmp_exact(v, hi, lo));
        }
        let p = x * y;
        // TwoProd is exact only away from underflow.
        if p.is_finite() && (x == 0.0 || y == 0.0 || p.abs() > 1e-290) {
            let e = x.mul_add(y, -p);
            let r = all_modes(|m| float_binop(FloatBinOp::Mul, ScalarType::F64, a, b, m));
            check_modes(f, &format!("{x:e} * {y:e}"), r, |v| cmp_exact(v, p, e));
        }
    }
}

#[test]
fn directed_rounding_f64_div_and_fma() {
    let mut rng = Rng::new(28);
    let f = soft::F64;
    for _ in 0..20_000 {
        let (a, b, c) = (rng.f64_bits(), rng.f64_bits(), rng.f64_bits());
        let (x, y, z) = (f64::from_bits(a), f64::from_bits(b), f64::from_bits(c));
        if !(x.is_finite() && y.is_finite() && z.is_finite()) {
            continue;
        }
        let q = x / y;
        if y != 0.0 && q.is_finite() && (q == 0.0 || q.abs() > 1e-290) && x.abs() > 1e-290 && x.abs() < 1e300 {
            // v ≤ x / y ⇔ v·y ≤ x (y > 0), with v·y = p + e exactly by TwoProd.
            let r = all_modes(|m| float_binop(FloatBinOp::Div, ScalarType::F64, a, b, m));
            check_modes(f, &format!("{x:e} / {y:e}"), r, |v| {
                if v.is_infinite() {
                    return if v > 0.0 { Ordering::Greater } else { Ordering::Less };
                }
                let p = v * y;
                let e = v.mul_add(y, -p);
                let o = (p - x).partial_cmp(&-e).expect("finite");
                if y > 0.0 {
                    o
                } else {
                    o.reverse()
                }
            });
        }
        // With 26-bit mantissas the product is exact in f64, so TwoSum gives the exact fma.
        let (a26, b26) = (a & !((1 << 27) - 1), b & !((1 << 27) - 1));
        let (x26, y26) = (f64::from_bits(a26), f64::from_bits(b26));
        let p = x26 * y26;
        if p.is_finite() && (p == 0.0 || p.abs() > 1e-290) && (x26 == 0.0 || y26 == 0.0 || p != 0.0) {
            let (hi, lo) = two_sum(p, z);
            if hi.is_finite() {
                let r = all_modes(|m| float_fma(ScalarType::F64, a26, b26, c, m));
                check_modes(f, &format!("fma {x26:e} {y26:e} {z:e}"), r, |v| cmp_exact(v, hi, lo));
            }
        }
    }
}

#[test]
fn half_nearest_matches_the_half_crate() {
    let mut rng = Rng::new(23);
    for _ in 0..20_000 {
        let (a, b) = (rng.half_bits(5), rng.half_bits(5));
        let (x, y) = (half::f16::from_bits(a).to_f64(), half::f16::from_bits(b).to_f64());
        let want = |v: f64| {
            let h = half::f16::from_f64(v);
            if h.is_nan() {
                0x7fff
            } else {
                h.to_bits() as u64
            }
        };
        // f16 sums and products are exact in f64, so one f64→f16 rounding is the correct result.
        assert_eq!(
            float_binop(FloatBinOp::Add, ScalarType::F16, a as u64, b as u64, mods(None)),
            want(x + y)
        );
        assert_eq!(
            float_binop(FloatBinOp::Mul, ScalarType::F16, a as u64, b as u64, mods(None)),
            want(x * y)
        );
    }
}

#[test]
fn packed_types_work_per_half() {
    let mut rng = Rng::new(24);
    for ty in [ScalarType::F16x2, ScalarType::Bf16x2] {
        let scalar = if ty == ScalarType::F16x2 {
            ScalarType::F16
        } else {
            ScalarType::Bf16
        };
        let eb = if ty == ScalarType::F16x2 { 5 } else { 8 };
        for _ in 0..2000 {
            let [a0, a1, b0, b1, c0, c1] = [0; 6].map(|_| rng.half_bits(eb) as u64);
            let (a, b, c) = (a1 << 16 | a0, b1 << 16 | b0, c1 << 16 | c0);
            let m = mods(Some(Rounding::Rz));
            let lo = float_fma(scalar, a0, b0, c0, m);
            let hi = float_fma(scalar, a1, b1, c1, m);
            assert_eq!(float_fma(ty, a, b, c, m), hi << 16 | lo);
            let lo = float_binop(FloatBinOp::Max, scalar, a0, b0, m);
            let hi = float_binop(FloatBinOp::Max, scalar, a1, b1, m);
            assert_eq!(float_binop(FloatBinOp::Max, ty, a, b, m), hi << 16 | lo);
        }
    }
}

#[test]
fn ftz_and_sat() {
    let f32b = |x: f32| x.to_bits() as u64;
    let sub = 0x0000_0100u64; // An f32 subnormal.
    let ftz = FloatMods {
        ftz: true,
        ..FloatMods::default()
    };
    assert_eq!(float_binop(FloatBinOp::Add, ScalarType::F32, sub, 0, ftz), 0);
    assert_eq!(
        float_binop(FloatBinOp::Add, ScalarType::F32, sub | 1 << 31, 1 << 31, ftz),
        1 << 31
    );
    assert_eq!(
        float_binop(FloatBinOp::Add, ScalarType::F32, sub, 0, FloatMods::default()),
        sub
    );
    // A normal product whose result is subnormal is flushed to a signed zero.
    let tiny = f32b(f32::MIN_POSITIVE);
    assert_eq!(
        float_binop(FloatBinOp::Mul, ScalarType::F32, tiny, f32b(-0.5), ftz),
        1 << 31
    );
    let sat = FloatMods {
        sat: true,
        ..FloatMods::default()
    };
    assert_eq!(
        float_binop(FloatBinOp::Add, ScalarType::F32, f32b(0.7), f32b(0.7), sat),
        f32b(1.0)
    );
    assert_eq!(
        float_binop(FloatBinOp::Add, ScalarType::F32, f32b(-0.7), f32b(0.2), sat),
        0
    );
    assert_eq!(
        float_binop(FloatBinOp::Add, ScalarType::F32, f32b(0.25), f32b(0.25), sat),
        f32b(0.5)
    );
    assert_eq!(
        float_binop(FloatBinOp::Mul, ScalarType::F32, f32b(f32::INFINITY), 0, sat),
        0
    );
    let h = |x: f32| half::f16::from_f32(x).to_bits() as u64;
    assert_eq!(
        float_binop(FloatBinOp::Add, ScalarType::F16, h(0.75), h(0.5), sat),
        h(1.0)
    );
}

#[test]
fn min_max_nan_and_signed_zero_rules() {
    let f = |x: f32| x.to_bits() as u64;
    let nan = 0x7fc0_0001u64;
    let plain = FloatMods::default();
    let nanmod = FloatMods {
        nan: true,
        ..FloatMods::default()
    };
    for op in [FloatBinOp::Min, FloatBinOp::Max] {
        assert_eq!(float_binop(op, ScalarType::F32, nan, f(2.0), plain), f(2.0));
        assert_eq!(float_binop(op, ScalarType::F32, f(-3.0), nan, plain), f(-3.0));
        assert_eq!(float_binop(op, ScalarType::F32, nan, nan, plain), 0x7fff_ffff);
        assert_eq!(float_binop(op, ScalarType::F32, nan, f(1.0), nanmod), 0x7fff_ffff);
    }
    assert_eq!(
        float_binop(FloatBinOp::Min, ScalarType::F32, f(0.0), f(-0.0), plain),
        f(-0.0)
    );
    assert_eq!(
        float_binop(FloatBinOp::Max, ScalarType::F32, f(-0.0), f(0.0), plain),
        f(0.0)
    );
    let mut rng = Rng::new(25);
    for _ in 0..5000 {
        let (a, b) = (rng.f32_bits(), rng.f32_bits());
        let (x, y) = (f32::from_bits(a), f32::from_bits(b));
        if x.is_nan() || y.is_nan() || x == y {
            continue;
        }
        assert_eq!(
            float_binop(FloatBinOp::Min, ScalarType::F32, a as u64, b as u64, plain),
            f(x.min(y))
        );
        assert_eq!(
            float_binop(FloatBinOp::Max, ScalarType::F32, a as u64, b as u64, plain),
            f(x.max(y))
        );
    }
}

#[test]
fn special_values_of_arithmetic() {
    let f = |x: f32| x.to_bits() as u64;
    let rz = mods(Some(Rounding::Rz));
    let inf = f(f32::INFINITY);
    let cases = [
        (FloatBinOp::Add, inf, f(-f32::INFINITY), 0x7fff_ffff),
        (FloatBinOp::Mul, inf, 0, 0x7fff_ffff),
        (FloatBinOp::Div, 0, 0, 0x7fff_ffff),
        (FloatBinOp::Div, f(-1.0), 0, f(-f32::INFINITY)),
        (FloatBinOp::Div, f(1.0), inf, 0),
        (FloatBinOp::Add, f(f32::MAX), f(f32::MAX), f(f32::MAX)),
        (FloatBinOp::Sub, f(1.0), f(1.0), 0),
    ];
    for (op, a, b, want) in cases {
        assert_eq!(float_binop(op, ScalarType::F32, a, b, rz), want, "{op:?} {a:#x} {b:#x}");
    }
    // x − x is −0 only when rounding toward −∞.
    assert_eq!(
        float_binop(
            FloatBinOp::Sub,
            ScalarType::F32,
            f(1.5),
            f(1.5),
            mods(Some(Rounding::Rm))
        ),
        f(-0.0)
    );
    assert_eq!(
        float_binop(FloatBinOp::Add, ScalarType::F32, f(f32::MAX), f(f32::MAX), mods(None)),
        inf
    );
    let h = |x: f32| half::f16::from_f32(x).to_bits() as u64;
    assert_eq!(
        float_binop(FloatBinOp::Add, ScalarType::F16, h(65504.0), h(65504.0), rz),
        h(65504.0)
    );
    assert_eq!(
        float_unop(FloatUnOp::Sqrt, ScalarType::F32, f(-0.0), mods(None)),
        f(-0.0)
    );
    assert_eq!(
        float_unop(FloatUnOp::Sqrt, ScalarType::F32, f(-1.0), mods(None)),
        0x7fff_ffff
    );
    assert_eq!(
        float_unop(FloatUnOp::Neg, ScalarType::F16x2, 0x3c00_bc00, mods(None)),
        0xbc00_3c00
    );
    assert_eq!(
        float_unop(FloatUnOp::Abs, ScalarType::F64, f64::to_bits(-2.5), mods(None)),
        f64::to_bits(2.5)
    );
}

#[test]
fn approximate_functions_within_isa_bounds() {
    let mut rng = Rng::new(26);
    let approx = FloatMods {
        approx: true,
        ..FloatMods::default()
    };
    for _ in 0..5000 {
        let x = (rng.wide_f64() as f32).clamp(-100.0, 100.0);
        // Keep reciprocals finite: rcp of a tiny subnormal overflows, which the bound below cannot express.
        let x = if x.abs() < 1e-30 { 1.0 + x } else { x };
        let a = x.to_bits() as u64;
        let run = |op| f32::from_bits(float_unop(op, ScalarType::F32, a, approx) as u32) as f64;
        let xd = x as f64;
        let rel = |got: f64, want: f64, tol: f64| {
            assert!(
                (got - want).abs() <= tol * want.abs() + 1e-300,
                "{got:e} vs {want:e} at {xd:e}"
            );
        };
        rel(run(FloatUnOp::Ex2), xd.exp2(), 2f64.powi(-22));
        rel(run(FloatUnOp::Tanh), xd.tanh(), 2f64.powi(-11));
        assert!((run(FloatUnOp::Sin) - xd.sin()).abs() <= 2f64.powi(-20));
        assert!((run(FloatUnOp::Cos) - xd.cos()).abs() <= 2f64.powi(-20));
        if x > 0.0 {
            rel(run(FloatUnOp::Lg2), xd.log2(), 2f64.powi(-22));
            rel(run(FloatUnOp::Rsqrt), 1.0 / xd.sqrt(), 2f64.powi(-22));
            rel(run(FloatUnOp::Rcp), 1.0 / xd, 2f64.powi(-23));
        }
    }
    let f = |x: f32| x.to_bits() as u64;
    assert_eq!(
        float_unop(FloatUnOp::Lg2, ScalarType::F32, 0, approx),
        f(f32::NEG_INFINITY)
    );
    assert_eq!(
        float_unop(FloatUnOp::Rsqrt, ScalarType::F32, f(-0.0), approx),
        f(f32::NEG_INFINITY)
    );
    assert_eq!(
        float_unop(FloatUnOp::Ex2, ScalarType::F32, f(f32::NEG_INFINITY), approx),
        0
    );
}

#[test]
fn float_compare_matches_host_including_unordered() {
    let mut rng = Rng::new(27);
    for _ in 0..5000 {
        let (a, b) = (rng.f32_bits(), rng.f32_bits());
        let b = if rng.below(6) == 0 { a } else { b };
        let (x, y) = (f32::from_bits(a), f32::from_bits(b));
        let u = x.is_nan() || y.is_nan();
        let c = |op| float_cmp(op, ScalarType::F32, a as u64, b as u64);
        assert_eq!(c(CmpOp::Eq), x == y);
        assert_eq!(c(CmpOp::Ne), !u && x != y);
        assert_eq!(c(CmpOp::Lt), x < y);
        assert_eq!(c(CmpOp::Ge), x >= y);
        assert_eq!(c(CmpOp::Equ), u || x == y);
        assert_eq!(c(CmpOp::Ltu), u || x < y);
        assert_eq!(c(CmpOp::Gtu), u || x > y);
        assert_eq!(c(CmpOp::Num), !u);
        assert_eq!(c(CmpOp::Nan), u);
        let (h, g) = (half::bf16::from_f32(x), half::bf16::from_f32(y));
        let cb = |op| float_cmp(op, ScalarType::Bf16, h.to_bits() as u64, g.to_bits() as u64);
        assert_eq!(cb(CmpOp::Le), h <= g);
        assert_eq!(cb(CmpOp::Neu), h.is_nan() || g.is_nan() || h != g);
    }
}
