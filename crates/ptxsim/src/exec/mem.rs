//! Memory instructions (ld, st, atom/red, cp.async, ldmatrix) with bounds, alignment, race and initialization
//! checks, and the traffic counters: global bytes and 32-byte sectors, shared requests and bank conflicts.

use super::{lanes, Block, Ctx, Warp, MULTI};
use crate::error::{Result, SimError};
use crate::ir::{AtomOp, Class, Inst, Op, Opnd, Space};
use crate::memory::{read_le, write_le, LOCAL_WINDOW, SHARED_WINDOW, WINDOW_SIZE};
use crate::numeric::{self, FloatBinOp, FloatMods};
use crate::types::ScalarType;

/// A resolved per-lane address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Global(u64),
    Shared(u64),
    Local(u64),
    Param(u64),
}

impl Target {
    fn offset(self, d: u64) -> Self {
        match self {
            Target::Global(a) => Target::Global(a + d),
            Target::Shared(a) => Target::Shared(a + d),
            Target::Local(a) => Target::Local(a + d),
            Target::Param(a) => Target::Param(a + d),
        }
    }

    fn addr(self) -> u64 {
        match self {
            Target::Global(a) | Target::Shared(a) | Target::Local(a) | Target::Param(a) => a,
        }
    }

    fn space_name(self) -> &'static str {
        match self {
            Target::Global(_) => "global",
            Target::Shared(_) => "shared",
            Target::Local(_) => "local",
            Target::Param(_) => "param",
        }
    }
}

fn target(space: Space, a: u64) -> Target {
    match space {
        Space::Global | Space::Const => Target::Global(a),
        Space::Shared => Target::Shared(a),
        Space::Local => Target::Local(a),
        Space::Param => Target::Param(a),
        Space::Generic => {
            if a.wrapping_sub(SHARED_WINDOW) < WINDOW_SIZE {
                Target::Shared(a - SHARED_WINDOW)
            } else if a.wrapping_sub(LOCAL_WINDOW) < WINDOW_SIZE {
                Target::Local(a - LOCAL_WINDOW)
            } else {
                Target::Global(a)
            }
        }
    }
}

/// Kinds of access, for checks and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Load,
    Store,
    /// The shared-memory side of a cp.async.
    AsyncStore,
    Atomic,
}

impl Access {
    fn name(self) -> &'static str {
        match self {
            Access::Load => "load",
            Access::Store | Access::AsyncStore => "store",
            Access::Atomic => "atomic",
        }
    }
}

impl Warp {
    fn addr_of(&self, o: &Opnd, l: usize) -> u64 {
        match o {
            Opnd::Addr(base, off) => self.get(base, l).wrapping_add(*off as u64),
            o => self.get(o, l),
        }
    }

    pub(super) fn mem_op(
        &mut self,
        inst: &Inst,
        exec: u32,
        ctx: &mut Ctx<'_>,
        blk: &mut Block,
    ) -> Result<()> {
        let a = &inst.args;
        let mut tg = [Target::Global(0); 32];
        match inst.op {
            Op::Ld { space, ty, nvec } | Op::St { space, ty, nvec } => {
                let store = matches!(inst.op, Op::St { .. });
                let (ao, vo) = if store {
                    (&a[0], &a[1])
                } else {
                    (&a[1], &a[0])
                };
                for l in lanes(exec) {
                    tg[l] = target(space, self.addr_of(ao, l));
                }
                let esz = ty.size();
                let total = esz * nvec as usize;
                self.account(inst, ctx, space, &tg, exec, total, store, None);
                let access = if store { Access::Store } else { Access::Load };
                let vals: &[Opnd] = match vo {
                    Opnd::Vec(v) => v,
                    o => std::slice::from_ref(o),
                };
                for l in lanes(exec) {
                    self.check_align(ctx, inst, l, tg[l], total, access)?;
                    for (i, v) in vals.iter().enumerate() {
                        let t = tg[l].offset((i * esz) as u64);
                        if store {
                            let x = self.get(v, l);
                            self.write(ctx, blk, inst, l, t, esz, x, Access::Store)?;
                        } else {
                            let mut x = self.read(ctx, blk, inst, l, t, esz, Access::Load)?;
                            if ty.is_signed() {
                                let s = 64 - ty.bits();
                                x = (((x << s) as i64) >> s) as u64;
                            }
                            self.set(v, l, x);
                        }
                    }
                }
            }
            Op::Atom { space, op, ty, ret } => {
                let (ao, rest) = if ret {
                    (&a[1], &a[2..])
                } else {
                    (&a[0], &a[1..])
                };
                for l in lanes(exec) {
                    tg[l] = target(space, self.addr_of(ao, l));
                }
                let size = ty.size();
                self.account(inst, ctx, space, &tg, exec, size, true, None);
                for l in lanes(exec) {
                    self.check_align(ctx, inst, l, tg[l], size, Access::Atomic)?;
                    let old = self.read(ctx, blk, inst, l, tg[l], size, Access::Atomic)?;
                    let b = self.get(&rest[0], l);
                    let c = rest.get(1).map_or(0, |o| self.get(o, l));
                    let new = atom_apply(op, ty, old, b, c);
                    self.write(ctx, blk, inst, l, tg[l], size, new, Access::Atomic)?;
                    if ret {
                        self.set(&a[0], l, old);
                    }
                }
            }
            Op::CpAsync { size, ignore_src } => {
                let size = usize::from(size);
                let mut src = [Target::Global(0); 32];
                for l in lanes(exec) {
                    tg[l] = target(Space::Shared, self.addr_of(&a[0], l));
                    src[l] = target(Space::Global, self.addr_of(&a[1], l));
                }
                let mut src_size = [0usize; 32];
                for l in lanes(exec) {
                    src_size[l] = match a.get(3) {
                        None => size,
                        Some(o) if ignore_src => {
                            if self.get(o, l) != 0 {
                                0
                            } else {
                                size
                            }
                        }
                        Some(o) => {
                            let n = self.get(o, l);
                            if n > size as u64 {
                                let msg =
                                    format!("cp.async src-size {n} exceeds the copy size {size}");
                                return Err(self.exec_err(ctx, inst, 1 << l, &msg));
                            }
                            n as usize
                        }
                    };
                }
                self.account(
                    inst,
                    ctx,
                    Space::Global,
                    &src,
                    exec,
                    size,
                    false,
                    Some(&src_size),
                );
                for l in lanes(exec) {
                    let n = src_size[l];
                    self.check_align(ctx, inst, l, src[l], size, Access::Load)?;
                    self.check_align(ctx, inst, l, tg[l], size, Access::Store)?;
                    // Whole 8-byte (or 4-byte) pieces when the full size is copied, else byte by byte.
                    let piece = if n == size { size.min(8) } else { 1 };
                    let mut buf = [0u8; 16];
                    for i in (0..n).step_by(piece) {
                        let t = src[l].offset(i as u64);
                        let v = self.read(ctx, blk, inst, l, t, piece, Access::Load)?;
                        buf[i..i + piece].copy_from_slice(&v.to_le_bytes()[..piece]);
                    }
                    let piece = size.min(8);
                    for i in (0..size).step_by(piece) {
                        let v = read_le(&buf[i..i + piece]);
                        let t = tg[l].offset(i as u64);
                        self.write(ctx, blk, inst, l, t, piece, v, Access::AsyncStore)?;
                    }
                }
                // The shared side: one request whose bank conflicts follow the destination addresses.
                let mut dst = [0u64; 32];
                for l in lanes(exec) {
                    dst[l] = tg[l].addr();
                }
                ctx.counters.shared_requests += 1;
                ctx.counters.bank_conflicts += bank_conflicts(&dst, exec, size);
            }
            Op::Ldmatrix { num, trans } => {
                let nrows = 8 * usize::from(num);
                let need = if nrows == 32 {
                    u32::MAX
                } else {
                    (1u32 << nrows) - 1
                };
                if exec & need != need {
                    return Err(self.exec_err(
                        ctx,
                        inst,
                        exec,
                        "ldmatrix needs every lane that supplies a row address",
                    ));
                }
                for l in lanes(need) {
                    tg[l] = target(Space::Shared, self.addr_of(&a[1], l));
                }
                self.account(inst, ctx, Space::Shared, &tg, need, 16, false, None);
                let mut rows = [[0u8; 16]; 32];
                for (l, row) in rows.iter_mut().enumerate().take(nrows) {
                    self.check_align(ctx, inst, l, tg[l], 16, Access::Load)?;
                    for half in 0..2 {
                        let t = tg[l].offset(8 * half as u64);
                        let v = self.read(ctx, blk, inst, l, t, 8, Access::Load)?;
                        row[8 * half..8 * half + 8].copy_from_slice(&v.to_le_bytes());
                    }
                }
                let frags = crate::mma::ldmatrix(usize::from(num), trans, &rows[..nrows]);
                let Opnd::Vec(dst) = &a[0] else {
                    return Err(self.exec_err(
                        ctx,
                        inst,
                        exec,
                        "ldmatrix destination must be a vector",
                    ));
                };
                for l in lanes(exec) {
                    for (i, d) in dst.iter().enumerate() {
                        self.set(d, l, u64::from(frags[l][i]));
                    }
                }
            }
            _ => return Err(self.exec_err(ctx, inst, exec, "not a memory instruction")),
        }
        Ok(())
    }

    /// Counts one warp-level access: global bytes and sectors, or shared requests and bank conflicts.
    #[allow(clippy::too_many_arguments)]
    fn account(
        &self,
        inst: &Inst,
        ctx: &mut Ctx<'_>,
        space: Space,
        tg: &[Target; 32],
        exec: u32,
        size: usize,
        store: bool,
        lane_sizes: Option<&[usize; 32]>,
    ) {
        let c = &mut ctx.counters;
        let mut sectors = [0u64; 64];
        let mut ns = 0;
        let mut shared = [0u64; 32];
        let mut nsh = 0u32;
        let mut global_bytes = 0u64;
        let mut first = None;
        for l in lanes(exec) {
            first.get_or_insert(tg[l]);
            match tg[l] {
                Target::Global(addr) => {
                    // cp.async reads only its src-size bytes (the rest of the destination is zero-filled).
                    let sz = lane_sizes.map_or(size, |s| s[l]);
                    if sz == 0 {
                        continue;
                    }
                    global_bytes += sz as u64;
                    let (s0, s1) = (addr >> 5, (addr + sz as u64 - 1) >> 5);
                    for s in s0..=s1.min(s0 + 1) {
                        if ns < sectors.len() {
                            sectors[ns] = s;
                            ns += 1;
                        }
                    }
                }
                Target::Shared(off) => {
                    shared[l] = off;
                    nsh |= 1 << l;
                }
                _ => {}
            }
        }
        if space == Space::Generic {
            // Count a generic access under the space its first active lane resolved to.
            let class = match first {
                Some(Target::Shared(_)) => Class::Shared,
                Some(Target::Local(_)) => Class::Local,
                _ => Class::Global,
            };
            if class != inst.class && !matches!(inst.op, Op::Atom { .. }) {
                c.warp_insts[inst.class as usize] -= 1;
                c.thread_insts[inst.class as usize] -= u64::from(exec.count_ones());
                c.warp_insts[class as usize] += 1;
                c.thread_insts[class as usize] += u64::from(exec.count_ones());
            }
        }
        if global_bytes > 0 {
            let bytes = global_bytes;
            if store {
                c.global_write_bytes += bytes;
            } else {
                c.global_read_bytes += bytes;
            }
            if matches!(inst.op, Op::Atom { ret: true, .. }) {
                c.global_read_bytes += bytes;
            }
            let s = &mut sectors[..ns];
            s.sort_unstable();
            let mut distinct = 0;
            for i in 0..s.len() {
                if i == 0 || s[i] != s[i - 1] {
                    distinct += 1;
                }
            }
            c.global_requests += 1;
            c.global_sectors += distinct;
        }
        if nsh != 0 {
            c.shared_requests += 1;
            c.bank_conflicts += bank_conflicts(&shared, nsh, size);
        }
    }

    fn check_align(
        &self,
        ctx: &Ctx<'_>,
        inst: &Inst,
        l: usize,
        t: Target,
        size: usize,
        acc: Access,
    ) -> Result<()> {
        if size > 1 && t.addr() % size as u64 != 0 {
            return Err(SimError::Misaligned {
                site: self.site(ctx, inst, l),
                space: t.space_name(),
                access: acc.name(),
                addr: t.addr(),
                size,
            });
        }
        Ok(())
    }

    fn oob(
        &self,
        ctx: &Ctx<'_>,
        inst: &Inst,
        l: usize,
        t: Target,
        size: usize,
        acc: Access,
    ) -> SimError {
        SimError::OutOfBounds {
            site: self.site(ctx, inst, l),
            space: t.space_name(),
            access: acc.name(),
            addr: t.addr(),
            size,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        ctx: &Ctx<'_>,
        blk: &mut Block,
        inst: &Inst,
        l: usize,
        t: Target,
        size: usize,
        acc: Access,
    ) -> Result<u64> {
        match t {
            Target::Global(a) => match ctx.mem.slice(a, size) {
                Some(b) => Ok(read_le(b)),
                None => Err(self.oob(ctx, inst, l, t, size, acc)),
            },
            Target::Param(a) => match ctx.params.get(a as usize..a as usize + size) {
                Some(b) => Ok(read_le(b)),
                None => Err(self.oob(ctx, inst, l, t, size, acc)),
            },
            Target::Local(a) => {
                let lb = ctx.prog.local_bytes as u64;
                if a + size as u64 > lb {
                    return Err(self.oob(ctx, inst, l, t, size, acc));
                }
                let base = (u64::from(self.lin[l]) * lb + a) as usize;
                Ok(read_le(&blk.local[base..base + size]))
            }
            Target::Shared(a) => {
                if a + size as u64 > blk.shared.len() as u64 {
                    return Err(self.oob(ctx, inst, l, t, size, acc));
                }
                self.track_shared(ctx, blk, inst, l, a as usize, size, acc, false)?;
                Ok(read_le(&blk.shared[a as usize..a as usize + size]))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        ctx: &mut Ctx<'_>,
        blk: &mut Block,
        inst: &Inst,
        l: usize,
        t: Target,
        size: usize,
        v: u64,
        acc: Access,
    ) -> Result<()> {
        match t {
            Target::Global(a) => match ctx.mem.slice_mut(a, size) {
                Some(b) => {
                    write_le(b, v);
                    Ok(())
                }
                None => Err(self.oob(ctx, inst, l, t, size, acc)),
            },
            Target::Param(_) => {
                Err(self.exec_err(ctx, inst, 1 << l, "store to kernel parameter space"))
            }
            Target::Local(a) => {
                let lb = ctx.prog.local_bytes as u64;
                if a + size as u64 > lb {
                    return Err(self.oob(ctx, inst, l, t, size, acc));
                }
                let base = (u64::from(self.lin[l]) * lb + a) as usize;
                write_le(&mut blk.local[base..base + size], v);
                Ok(())
            }
            Target::Shared(a) => {
                if a + size as u64 > blk.shared.len() as u64 {
                    return Err(self.oob(ctx, inst, l, t, size, acc));
                }
                self.track_shared(ctx, blk, inst, l, a as usize, size, acc, true)?;
                write_le(&mut blk.shared[a as usize..a as usize + size], v);
                Ok(())
            }
        }
    }

    /// Checks and records a shared-memory access for the race and initialization checks.
    #[allow(clippy::too_many_arguments)]
    fn track_shared(
        &self,
        ctx: &Ctx<'_>,
        blk: &mut Block,
        inst: &Inst,
        l: usize,
        off: usize,
        size: usize,
        acc: Access,
        write: bool,
    ) -> Result<()> {
        let (e, t, we) = (blk.epoch, self.lin[l], self.wepoch);
        let start = blk.start_epoch;
        let conflict = |ot: u32, owe: u32, oe: u32| {
            oe == e
                && ot != t
                && (ot == MULTI
                    || ot / 32 != t / 32
                    || !self.warp_ordered((ot % 32) as usize, l, owe))
        };
        // Readers of this warp other than this lane, none ordered before this access by a `bar.warp.sync`
        // (`r_wepoch` is the latest reader's stamp, which bounds the others').
        let unordered_readers = |m: &super::Meta| {
            super::lanes(m.r_lanes & !(1 << l))
                .filter(|&o| !self.warp_ordered(o, l, m.r_wepoch))
                .fold(0u32, |acc, o| acc | 1 << o)
        };
        let reader_conflict = |m: &super::Meta| {
            if m.r_tid == MULTI {
                m.r_epoch == e && (m.r_warp != t / 32 || unordered_readers(m) != 0)
            } else {
                conflict(m.r_tid, m.r_wepoch, m.r_epoch)
            }
        };
        for i in off..off + size {
            let m = &mut blk.meta[i];
            if m.async_tid != 0 && m.async_block == start {
                let owner = m.async_tid - 1;
                if m.async_group >= blk.async_done[owner as usize] {
                    if acc != Access::AsyncStore || owner != t {
                        let g = self.geo.ntid;
                        return Err(SimError::AsyncCopyPending {
                            site: self.site(ctx, inst, l),
                            offset: i as u64,
                            other_thread: [
                                owner % g[0],
                                (owner / g[0]) % g[1],
                                owner / (g[0] * g[1]),
                            ],
                        });
                    }
                } else {
                    m.async_tid = 0;
                }
            }
            if acc == Access::AsyncStore {
                m.async_tid = t + 1;
                m.async_group = blk.async_open[t as usize];
                m.async_block = start;
            }
            let race = |other: u32, other_access: &'static str| {
                let th = if other == MULTI {
                    [u32::MAX; 3]
                } else {
                    let g = self.geo.ntid;
                    [other % g[0], (other / g[0]) % g[1], other / (g[0] * g[1])]
                };
                SimError::SharedRace {
                    site: self.site(ctx, inst, l),
                    offset: i as u64,
                    access: acc.name(),
                    other_access,
                    other_thread: th,
                }
            };
            if acc == Access::Atomic {
                // Atomics never race with each other, but do with plain accesses of other threads.
                if !write {
                    if m.init < start {
                        let site = self.site(ctx, inst, l);
                        return Err(SimError::UninitShared {
                            site,
                            offset: i as u64,
                        });
                    }
                    if conflict(m.w_tid, m.w_wepoch, m.w_epoch) {
                        return Err(race(m.w_tid, "store"));
                    }
                    if reader_conflict(m) {
                        return Err(race(m.r_tid, "load"));
                    }
                    m.a_tid = if m.a_epoch == e && m.a_tid != t {
                        MULTI
                    } else {
                        t
                    };
                    m.a_epoch = e;
                }
                continue;
            }
            // A plain access after another thread's atomic in the same interval races with it.
            if m.a_epoch == e && m.a_tid != t {
                return Err(race(m.a_tid, "atomic"));
            }
            if write {
                if conflict(m.w_tid, m.w_wepoch, m.w_epoch) {
                    return Err(race(m.w_tid, "store"));
                }
                if reader_conflict(m) {
                    return Err(race(m.r_tid, "load"));
                }
                m.w_epoch = e;
                m.w_tid = t;
                m.w_wepoch = we;
                if m.init < start {
                    m.init = e;
                }
            } else {
                if m.init < start {
                    return Err(SimError::UninitShared {
                        site: self.site(ctx, inst, l),
                        offset: i as u64,
                    });
                }
                if conflict(m.w_tid, m.w_wepoch, m.w_epoch) {
                    return Err(race(m.w_tid, "store"));
                }
                if m.r_epoch != e {
                    m.r_epoch = e;
                    m.r_tid = t;
                    m.r_warp = t / 32;
                    m.r_lanes = 1 << l;
                    m.r_wepoch = we;
                } else if m.r_tid != t {
                    if m.r_warp == t / 32 {
                        // Readers of this warp ordered before this one by a warp sync are dropped.
                        let keep = unordered_readers(m);
                        m.r_lanes = keep | 1 << l;
                        m.r_tid = if keep == 0 { t } else { MULTI };
                    } else {
                        m.r_tid = MULTI;
                        m.r_warp = MULTI;
                    }
                    m.r_wepoch = we;
                }
            }
        }
        Ok(())
    }
}

/// Extra shared-memory wavefronts of one warp request: 32 banks of 4 bytes; 8-byte accesses are served in two
/// half-warp phases and 16-byte accesses in four quarter-warp phases; lanes reading the same word share it.
pub(crate) fn bank_conflicts(off: &[u64; 32], mask: u32, size: usize) -> u64 {
    let phases = match size {
        16 => 4,
        8 => 2,
        _ => 1,
    };
    let per = 32 / phases;
    let words = size.div_ceil(4).max(1) as u64;
    let mut extra = 0;
    for p in 0..phases {
        let mut pairs = [(0u32, 0u64); 128];
        let mut n = 0;
        for (l, &o) in off.iter().enumerate().skip(p * per).take(per) {
            if mask & (1 << l) == 0 {
                continue;
            }
            for w in 0..words {
                let word = o / 4 + w;
                pairs[n] = ((word % 32) as u32, word);
                n += 1;
            }
        }
        let ps = &mut pairs[..n];
        ps.sort_unstable();
        let (mut best, mut run) = (0u64, 0u64);
        for i in 0..ps.len() {
            if i > 0 && ps[i] == ps[i - 1] {
                continue;
            }
            run = if i > 0 && ps[i].0 == ps[i - 1].0 {
                run + 1
            } else {
                1
            };
            best = best.max(run);
        }
        extra += best.saturating_sub(1);
    }
    extra
}

/// The new value of an atomic read-modify-write.
fn atom_apply(op: AtomOp, ty: ScalarType, old: u64, b: u64, c: u64) -> u64 {
    let bits = ty.bits();
    let mk = if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let (o, b) = (old & mk, b & mk);
    let sext = |v: u64| ((v << (64 - bits)) as i64) >> (64 - bits);
    match op {
        AtomOp::Add if ty.is_float() => {
            numeric::float_binop(FloatBinOp::Add, ty, o, b, FloatMods::default())
        }
        AtomOp::Add => o.wrapping_add(b) & mk,
        AtomOp::Min | AtomOp::Max => {
            let less = if ty.is_signed() {
                sext(o) < sext(b)
            } else {
                o < b
            };
            if less == (op == AtomOp::Min) {
                o
            } else {
                b
            }
        }
        AtomOp::Exch => b,
        AtomOp::Cas => {
            if o == b {
                c & mk
            } else {
                o
            }
        }
        AtomOp::And => o & b,
        AtomOp::Or => o | b,
        AtomOp::Xor => o ^ b,
        AtomOp::Inc => {
            if o >= b {
                0
            } else {
                o + 1
            }
        }
        AtomOp::Dec => {
            if o == 0 || o > b {
                b
            } else {
                o - 1
            }
        }
    }
}
