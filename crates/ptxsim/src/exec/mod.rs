//! The executor: blocks run one after another, each as warps of 32 lanes with per-lane PCs. A warp always runs
//! the lanes at the minimum PC together, which reconverges the structured control flow NVRTC emits; a barrier
//! parks lanes until every live thread of the block has arrived (exited threads count as arrived).

mod alu;
mod mem;
mod warp_ops;

#[cfg(test)]
pub(crate) use mem::bank_conflicts;

use crate::counters::Counters;
use crate::error::{Result, SimError, Site};
use crate::ir::{Inst, Op, Opnd, Sreg};
use crate::memory::DeviceMemory;
use crate::program::Program;

/// Everything one launch shares between its blocks.
pub(crate) struct Ctx<'a> {
    pub prog: &'a Program,
    pub mem: &'a mut DeviceMemory,
    pub params: Vec<u8>,
    pub counters: Counters,
}

/// Race and initialization tracking of one shared-memory byte (epochs are barrier intervals; 0 means never).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Meta {
    /// The block epoch in which a block first wrote the byte (any write, atomics included).
    init: u32,
    w_epoch: u32,
    w_tid: u32,
    w_wepoch: u32,
    r_epoch: u32,
    /// The reading thread, or `MULTI` when several threads read it in `r_epoch`.
    r_tid: u32,
    r_wepoch: u32,
    /// The warp of the readers when they are several (`MULTI` when they span warps).
    r_warp: u32,
    /// The lanes of the readers in `r_epoch` while they all belong to warp `r_warp`.
    r_lanes: u32,
    /// The thread (index + 1; 0 = none) whose cp.async wrote the byte, its group, and the block (start epoch).
    async_tid: u32,
    async_group: u32,
    async_block: u32,
    /// The interval and thread (`MULTI` for several) of the latest atomics on the byte.
    a_epoch: u32,
    a_tid: u32,
}

pub(crate) const MULTI: u32 = u32::MAX;

/// Warp instructions one warp may run between barriers before the launch is declared hung.
const SPIN_LIMIT: u64 = 1 << 30;

/// The state of the block being run.
pub(crate) struct Block {
    pub ctaid: [u32; 3],
    pub shared: Vec<u8>,
    pub meta: Vec<Meta>,
    /// Local memory of every thread, `local_bytes` each.
    pub local: Vec<u8>,
    pub epoch: u32,
    pub start_epoch: u32,
    /// Per thread: the open cp.async group, and the groups below this one are complete.
    pub async_open: Vec<u32>,
    pub async_done: Vec<u32>,
}

/// Launch geometry as the special registers see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geo {
    pub ntid: [u32; 3],
    pub nctaid: [u32; 3],
    pub ctaid: [u32; 3],
    pub nwarps: u32,
    pub dyn_smem: u32,
    pub total_smem: u32,
}

/// One warp: registers laid out `[reg][lane]`, per-lane PCs and masks.
pub(crate) struct Warp {
    pub regs: Vec<u64>,
    pub pc: [u32; 32],
    pub valid: u32,
    pub exited: u32,
    pub waiting: u32,
    /// The barrier id each waiting lane waits on.
    pub bar_id: [u8; 32],
    /// The carry flag (`.cc`) of each lane.
    pub carry: u32,
    /// Per-lane call stacks of (return PC, call record).
    pub stacks: Vec<Vec<(u32, u32)>>,
    pub tid: [[u32; 3]; 32],
    /// Linear thread index in the block.
    pub lin: [u32; 32],
    pub index: u32,
    /// Incremented by every `bar.warp.sync`: shared accesses are stamped with it.
    pub wepoch: u32,
    /// Per lane `t`, per lane `o`: the `wepoch` a warp sync reached that orders every access of `o` stamped
    /// below it before the later accesses of `t` (a vector clock, joined by syncs over part of the warp).
    pub seen: Box<[[u32; 32]; 32]>,
    /// The `wepoch` reached by the latest `bar.warp.sync` that every thread of the warp took part in.
    pub full: u32,
    pub geo: Geo,
}

/// What an instruction did to control flow.
pub(crate) enum Flow {
    /// Every lane of the mask continues at the next instruction.
    Next,
    /// Every lane of the mask jumps to the target.
    Jump(u32),
    /// The instruction set each lane's PC itself.
    Moved,
}

/// Iterates the set bits of a lane mask.
#[inline]
pub(crate) fn lanes(mask: u32) -> impl Iterator<Item = usize> {
    let mut m = mask;
    std::iter::from_fn(move || {
        if m == 0 {
            None
        } else {
            let l = m.trailing_zeros() as usize;
            m &= m - 1;
            Some(l)
        }
    })
}

/// Runs a whole grid. `dyn_shared` is the launch's dynamic shared memory in bytes.
pub(crate) fn run_grid(
    ctx: &mut Ctx<'_>,
    grid: [u32; 3],
    block: [u32; 3],
    dyn_shared: u32,
) -> Result<()> {
    let prog = ctx.prog;
    let nthreads = block[0] * block[1] * block[2];
    let nwarps = nthreads.div_ceil(32);
    let shared_len = if dyn_shared > 0 {
        prog.dyn_shared_offset + dyn_shared as usize
    } else {
        prog.shared_static
    };
    let geo = Geo {
        ntid: block,
        nctaid: grid,
        ctaid: [0; 3],
        nwarps,
        dyn_smem: dyn_shared,
        total_smem: shared_len as u32,
    };
    let mut warps: Vec<Warp> = (0..nwarps)
        .map(|w| Warp {
            regs: vec![0; prog.nregs as usize * 32],
            pc: [0; 32],
            valid: 0,
            exited: 0,
            waiting: 0,
            bar_id: [0; 32],
            carry: 0,
            stacks: vec![Vec::new(); 32],
            tid: [[0; 3]; 32],
            lin: [0; 32],
            index: w,
            wepoch: 0,
            seen: Box::new([[0; 32]; 32]),
            full: 0,
            geo,
        })
        .collect();
    for w in warps.iter_mut() {
        for l in 0..32u32 {
            let t = w.index * 32 + l;
            if t < nthreads {
                w.valid |= 1 << l;
                w.lin[l as usize] = t;
                w.tid[l as usize] = [
                    t % block[0],
                    (t / block[0]) % block[1],
                    t / (block[0] * block[1]),
                ];
            }
        }
    }
    let mut blk = Block {
        ctaid: [0; 3],
        shared: vec![0; shared_len],
        meta: vec![Meta::default(); shared_len],
        local: vec![0; prog.local_bytes * nthreads as usize],
        epoch: 0,
        start_epoch: 0,
        async_open: vec![0; nthreads as usize],
        async_done: vec![0; nthreads as usize],
    };
    for bz in 0..grid[2] {
        for by in 0..grid[1] {
            for bx in 0..grid[0] {
                blk.ctaid = [bx, by, bz];
                blk.epoch += 1;
                blk.start_epoch = blk.epoch;
                blk.async_open.fill(0);
                blk.async_done.fill(0);
                for w in warps.iter_mut() {
                    w.pc = [0; 32];
                    w.exited = 0;
                    w.waiting = 0;
                    w.carry = 0;
                    w.geo.ctaid = blk.ctaid;
                    for s in w.stacks.iter_mut() {
                        s.clear();
                    }
                }
                run_block(ctx, &mut warps, &mut blk)?;
                ctx.counters.blocks += 1;
                ctx.counters.threads += u64::from(nthreads);
            }
        }
    }
    Ok(())
}

fn run_block(ctx: &mut Ctx<'_>, warps: &mut [Warp], blk: &mut Block) -> Result<()> {
    loop {
        for w in warps.iter_mut() {
            w.run(ctx, blk)?;
        }
        if warps.iter().all(|w| w.exited == w.valid) {
            return Ok(());
        }
        // Every live thread now waits at a barrier: release them into the next barrier interval.
        check_barrier(ctx, warps)?;
        ctx.counters.barriers += 1;
        blk.epoch += 1;
        for w in warps.iter_mut() {
            for l in lanes(w.waiting) {
                w.pc[l] += 1;
            }
            w.waiting = 0;
        }
    }
}

/// Checks that every waiting thread of the block waits on one barrier id (each barrier needs the whole block
/// here, so threads split over several ids never get released) and, for an aligned barrier (`bar.sync`,
/// `__syncthreads()`), at one instruction (the ISA leaves divergent aligned barriers undefined).
fn check_barrier(ctx: &Ctx<'_>, warps: &[Warp]) -> Result<()> {
    let code = &ctx.prog.code;
    let mut first: Option<(&Warp, usize)> = None;
    for w in warps {
        for l in lanes(w.waiting) {
            let Some((fw, fl)) = first else {
                first = Some((w, l));
                continue;
            };
            let (fid, id) = (fw.bar_id[fl], w.bar_id[l]);
            let (fpc, pc) = (fw.pc[fl] as usize, w.pc[l] as usize);
            let aligned = |pc: usize| matches!(code[pc].op, Op::Bar { aligned: true });
            let msg = if fid != id {
                format!(
                    "deadlock: this thread waits on barrier {id} while thread {:?} waits on barrier {fid} \
                     (PTX line {}); a barrier here needs every thread of the block",
                    fw.tid[fl], code[fpc].line
                )
            } else if fpc != pc && (aligned(fpc) || aligned(pc)) {
                format!(
                    "divergent aligned barrier {id}: thread {:?} waits at a different barrier instruction \
                     (PTX line {}); `bar.sync` (`__syncthreads()`) must be reached at one instruction by the \
                     whole block",
                    fw.tid[fl], code[fpc].line
                )
            } else {
                continue;
            };
            return Err(w.exec_err(ctx, &code[pc], 1 << l, &msg));
        }
    }
    Ok(())
}

impl Warp {
    /// Runs until every lane has exited or waits at a barrier.
    fn run(&mut self, ctx: &mut Ctx<'_>, blk: &mut Block) -> Result<()> {
        let prog = ctx.prog;
        let mut budget = SPIN_LIMIT;
        loop {
            let runnable = self.valid & !self.exited & !self.waiting;
            if runnable == 0 {
                return Ok(());
            }
            let in_call = lanes(runnable).any(|l| !self.stacks[l].is_empty());
            let (pc, mask, others) = if in_call {
                self.pick_in_call(runnable)
            } else {
                self.pick(runnable)
            };
            let mut pc = pc;
            loop {
                let Some(inst) = prog.code.get(pc as usize) else {
                    // Running off the end of the code behaves like `exit`.
                    self.exited |= mask;
                    break;
                };
                let exec = match inst.guard {
                    None => mask,
                    Some((r, neg)) => {
                        let mut e = 0;
                        let base = r as usize * 32;
                        for l in lanes(mask) {
                            if (self.regs[base + l] != 0) != neg {
                                e |= 1 << l;
                            }
                        }
                        e
                    }
                };
                budget -= 1;
                if budget == 0 {
                    let msg = "a warp ran 2^30 instructions without reaching a barrier or exit (a spin-wait on \
                               another block or warp never ends here: blocks and warps run one at a time)";
                    return Err(self.exec_err(ctx, inst, mask, msg));
                }
                let c = &mut ctx.counters;
                c.warp_insts[inst.class as usize] += 1;
                c.thread_insts[inst.class as usize] += u64::from(exec.count_ones());
                let flow = self.step(inst, pc, mask, exec, ctx, blk)?;
                match flow {
                    Flow::Next if pc + 1 < others => pc += 1,
                    Flow::Jump(t) if t < others => pc = t,
                    Flow::Next => {
                        for l in lanes(mask) {
                            self.pc[l] = pc + 1;
                        }
                        break;
                    }
                    Flow::Jump(t) => {
                        for l in lanes(mask) {
                            self.pc[l] = t;
                        }
                        break;
                    }
                    Flow::Moved => break,
                }
            }
        }
    }

    /// The lanes at the smallest PC, and the smallest PC of the other lanes (the group runs on alone until it
    /// gets there).
    fn pick(&self, runnable: u32) -> (u32, u32, u32) {
        let mut pc = u32::MAX;
        let mut mask = 0u32;
        for l in lanes(runnable) {
            let p = self.pc[l];
            if p < pc {
                pc = p;
                mask = 1 << l;
            } else if p == pc {
                mask |= 1 << l;
            }
        }
        let others = lanes(runnable & !mask)
            .map(|l| self.pc[l])
            .min()
            .unwrap_or(u32::MAX);
        (pc, mask, others)
    }

    /// Like `pick` when some lane is inside a called function: lanes are ordered by their position as the
    /// sequence (call sites of the frames, outermost first, then the PC), so lanes inside a call run before lanes
    /// at later PCs of the caller, and a lane at a call site runs before the lanes already inside that call. The
    /// group runs one instruction at a time (`others` is 0).
    fn pick_in_call(&self, runnable: u32) -> (u32, u32, u32) {
        let key = |l: usize| {
            self.stacks[l]
                .iter()
                .map(|f| f.0 - 1)
                .chain(std::iter::once(self.pc[l]))
        };
        let mut best: Option<usize> = None;
        let mut mask = 0u32;
        for l in lanes(runnable) {
            match best {
                None => {
                    best = Some(l);
                    mask = 1 << l;
                }
                Some(b) => match key(l).cmp(key(b)) {
                    std::cmp::Ordering::Less => {
                        best = Some(l);
                        mask = 1 << l;
                    }
                    std::cmp::Ordering::Equal => mask |= 1 << l,
                    std::cmp::Ordering::Greater => {}
                },
            }
        }
        let pc = best.map_or(u32::MAX, |b| self.pc[b]);
        (pc, mask, 0)
    }

    /// Executes one instruction for the lanes in `exec` (the lanes of `mask` whose guard holds).
    fn step(
        &mut self,
        inst: &Inst,
        pc: u32,
        mask: u32,
        exec: u32,
        ctx: &mut Ctx<'_>,
        blk: &mut Block,
    ) -> Result<Flow> {
        match inst.op {
            Op::Bra => {
                let Some(Opnd::Label(t)) = inst.args.first() else {
                    return Err(self.exec_err(ctx, inst, mask, "branch without a label target"));
                };
                if exec == mask {
                    return Ok(Flow::Jump(*t));
                }
                if exec == 0 {
                    return Ok(Flow::Next);
                }
                ctx.counters.divergent_branches += 1;
                for l in lanes(mask) {
                    self.pc[l] = if exec & (1 << l) != 0 { *t } else { pc + 1 };
                }
                Ok(Flow::Moved)
            }
            Op::Exit => {
                self.exited |= exec;
                self.advance_rest(mask & !exec, pc);
                Ok(Flow::Moved)
            }
            Op::Ret => {
                for l in lanes(exec) {
                    match self.stacks[l].pop() {
                        None => self.exited |= 1 << l,
                        Some((ret, call)) => {
                            let info = &ctx.prog.calls[call as usize];
                            self.copy_local(ctx, blk, l, &info.copy_out);
                            self.pc[l] = ret;
                        }
                    }
                }
                self.advance_rest(mask & !exec, pc);
                Ok(Flow::Moved)
            }
            Op::Call { func } => {
                let info = &ctx.prog.calls[func as usize];
                for l in lanes(exec) {
                    if self.stacks[l].len() >= 64 {
                        return Err(self.exec_err(ctx, inst, 1 << l, "call stack deeper than 64"));
                    }
                    self.copy_local(ctx, blk, l, &info.copy_in);
                    self.stacks[l].push((pc + 1, func));
                    self.pc[l] = info.target;
                }
                self.advance_rest(mask & !exec, pc);
                Ok(Flow::Moved)
            }
            Op::Bar { .. } => {
                // `bar.sync id, count`: only a count covering the whole block is supported (the barrier here
                // is always block-wide).
                if let (Some(c), Some(l)) = (inst.args.get(1), lanes(exec).next()) {
                    let count = self.get(c, l);
                    if count != u64::from(self.geo.nwarps * 32) {
                        let msg = format!("bar.sync with a thread count of {count} (only the whole block is supported)");
                        return Err(self.exec_err(ctx, inst, exec, &msg));
                    }
                }
                for l in lanes(exec) {
                    let id = inst.args.first().map_or(0, |a| self.get(a, l));
                    if id > 15 {
                        let msg = format!("barrier id {id} is out of range (0 to 15)");
                        return Err(self.exec_err(ctx, inst, 1 << l, &msg));
                    }
                    self.bar_id[l] = id as u8;
                    self.pc[l] = pc;
                }
                self.waiting |= exec;
                self.advance_rest(mask & !exec, pc);
                Ok(Flow::Moved)
            }
            Op::Trap => {
                if exec != 0 {
                    return Err(SimError::Trap {
                        site: self.site(ctx, inst, exec.trailing_zeros() as usize),
                    });
                }
                Ok(Flow::Next)
            }
            _ => {
                if exec != 0 {
                    self.exec_op(inst, exec, ctx, blk)?;
                }
                Ok(Flow::Next)
            }
        }
    }

    fn advance_rest(&mut self, rest: u32, pc: u32) {
        for l in lanes(rest) {
            self.pc[l] = pc + 1;
        }
    }

    /// Per-thread copies of call arguments or results inside lane `l`'s local memory.
    fn copy_local(&self, ctx: &Ctx<'_>, blk: &mut Block, l: usize, copies: &[(u64, u64, u32)]) {
        let lb = ctx.prog.local_bytes;
        let base = self.lin[l] as usize * lb;
        for &(src, dst, n) in copies {
            let (s, d, n) = (base + src as usize, base + dst as usize, n as usize);
            blk.local.copy_within(s..s + n, d);
        }
    }

    /// Reads an operand of lane `l`.
    #[inline(always)]
    pub(crate) fn get(&self, o: &Opnd, l: usize) -> u64 {
        match o {
            Opnd::Reg(r) => self.regs[*r as usize * 32 + l],
            Opnd::Imm(v) => *v,
            Opnd::NotReg(r) => u64::from(self.regs[*r as usize * 32 + l] == 0),
            Opnd::Sreg(s) => self.sreg(*s, l),
            _ => 0,
        }
    }

    /// Writes a destination operand of lane `l` (`_` discards).
    #[inline]
    pub(crate) fn set(&mut self, o: &Opnd, l: usize, v: u64) {
        if let Opnd::Reg(r) = o {
            self.regs[*r as usize * 32 + l] = v;
        }
    }

    #[inline(never)]
    fn sreg(&self, s: Sreg, l: usize) -> u64 {
        let g = &self.geo;
        let lt = (1u64 << l) - 1;
        u64::from(match s {
            Sreg::Tid(d) => self.tid[l][d as usize],
            Sreg::Ntid(d) => g.ntid[d as usize],
            Sreg::Ctaid(d) => g.ctaid[d as usize],
            Sreg::Nctaid(d) => g.nctaid[d as usize],
            Sreg::LaneId => l as u32,
            Sreg::WarpId => self.index,
            Sreg::NWarpId => g.nwarps,
            Sreg::LaneMaskEq => 1 << l,
            Sreg::LaneMaskLt => lt as u32,
            Sreg::LaneMaskLe => (lt | 1 << l) as u32,
            Sreg::LaneMaskGt => !((lt | 1 << l) as u32),
            Sreg::LaneMaskGe => !(lt as u32),
            Sreg::Clock | Sreg::Clock64 | Sreg::GlobalTimer => {
                return self.wepoch as u64 + self.pc[l] as u64
            }
            Sreg::SmId => 0,
            Sreg::NSmId => 132,
            Sreg::DynSmem => g.dyn_smem,
            Sreg::TotalSmem => g.total_smem,
        })
    }

    /// The site of lane `l` executing `inst`.
    pub(crate) fn site(&self, ctx: &Ctx<'_>, inst: &Inst, l: usize) -> Box<Site> {
        let source = if inst.loc.1 > 0 {
            ctx.prog
                .files
                .iter()
                .find(|(i, _)| *i == inst.loc.0)
                .map(|(_, f)| (f.clone(), inst.loc.1))
        } else {
            None
        };
        Box::new(Site {
            kernel: ctx.prog.kernel.clone(),
            block: self.geo.ctaid,
            thread: self.tid[l],
            ptx_line: inst.line,
            source,
        })
    }

    pub(crate) fn exec_err(&self, ctx: &Ctx<'_>, inst: &Inst, mask: u32, msg: &str) -> SimError {
        let l = mask.trailing_zeros().min(31) as usize;
        SimError::Exec {
            site: self.site(ctx, inst, l),
            msg: msg.to_string(),
        }
    }

    /// `bar.warp.sync membermask`: orders the earlier shared accesses of the lanes that take part (those of
    /// the mask running it now) before their later ones; lanes outside the mask stay unordered.
    fn warp_sync(&mut self, inst: &Inst, exec: u32) {
        let member = match (inst.args.first(), lanes(exec).next()) {
            (Some(m), Some(l)) => self.get(m, l) as u32,
            _ => u32::MAX,
        };
        let part = exec & member;
        self.wepoch += 1;
        let s = self.wepoch;
        if part & self.valid == self.valid {
            self.full = s;
            return;
        }
        let mut join = [self.full; 32];
        for a in lanes(part) {
            for (j, v) in join.iter_mut().zip(self.seen[a].iter()) {
                *j = (*j).max(*v);
            }
        }
        for a in lanes(part) {
            join[a] = s;
        }
        for a in lanes(part) {
            self.seen[a] = join;
        }
    }

    /// Whether an access of lane `o` stamped `stamp` is ordered by warp syncs before lane `t`'s accesses now.
    #[inline]
    pub(crate) fn warp_ordered(&self, o: usize, t: usize, stamp: u32) -> bool {
        self.full.max(self.seen[t][o]) > stamp
    }

    fn exec_op(
        &mut self,
        inst: &Inst,
        exec: u32,
        ctx: &mut Ctx<'_>,
        blk: &mut Block,
    ) -> Result<()> {
        match &inst.op {
            Op::Ld { .. }
            | Op::St { .. }
            | Op::Atom { .. }
            | Op::CpAsync { .. }
            | Op::Ldmatrix { .. } => self.mem_op(inst, exec, ctx, blk),
            Op::Bar { .. } | Op::Bra | Op::Call { .. } | Op::Ret | Op::Exit | Op::Trap => Ok(()),
            Op::BarWarp => {
                self.warp_sync(inst, exec);
                Ok(())
            }
            Op::Shfl { .. }
            | Op::Vote { .. }
            | Op::Activemask
            | Op::Mma { .. }
            | Op::Redux { .. } => self.warp_op(inst, exec, ctx),
            Op::Nop => Ok(()),
            Op::CpAsyncCommit => {
                for l in lanes(exec) {
                    blk.async_open[self.lin[l] as usize] += 1;
                }
                Ok(())
            }
            Op::CpAsyncWait { keep } => {
                for l in lanes(exec) {
                    let t = self.lin[l] as usize;
                    let done = match keep {
                        Some(n) => blk.async_open[t].saturating_sub(*n),
                        None => {
                            blk.async_open[t] += 1;
                            blk.async_open[t]
                        }
                    };
                    blk.async_done[t] = blk.async_done[t].max(done);
                }
                Ok(())
            }
            _ => self.alu(inst, exec, ctx),
        }
    }
}
