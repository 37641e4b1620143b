//! Warp-collective instructions: shfl.sync, vote.sync, activemask and mma.sync.

use super::{lanes, Ctx, Warp};
use crate::error::Result;
use crate::ir::{Inst, IntOp, Op, Opnd, ShflMode, VoteMode};
use crate::types::ScalarType;

impl Warp {
    /// Checks a `.sync` collective's member mask: every executing lane is a member, and every member that has
    /// not exited executes this instruction together with the others.
    fn check_members(
        &self,
        ctx: &Ctx<'_>,
        inst: &Inst,
        exec: u32,
        mask: Option<&Opnd>,
    ) -> Result<u32> {
        let Some(m) = mask else { return Ok(exec) };
        let Some(l0) = lanes(exec).next() else {
            return Ok(exec);
        };
        let members = self.get(m, l0) as u32;
        if exec & !members != 0 {
            let msg = format!("lanes {:#010x} execute a warp collective without being in its member mask {members:#010x}", exec & !members);
            return Err(self.exec_err(ctx, inst, exec & !members, &msg));
        }
        let live = self.valid & !self.exited;
        let missing = members & live & !exec;
        if missing != 0 {
            let msg = format!(
                "member lanes {missing:#010x} of mask {members:#010x} have not exited but do not execute this warp \
                 collective with the others (divergence)"
            );
            return Err(self.exec_err(ctx, inst, exec, &msg));
        }
        Ok(members)
    }

    pub(super) fn warp_op(&mut self, inst: &Inst, exec: u32, ctx: &mut Ctx<'_>) -> Result<()> {
        let a = &inst.args;
        match inst.op {
            Op::Shfl { mode } => {
                self.check_members(ctx, inst, exec, a.get(4))?;
                let (d, p) = match &a[0] {
                    Opnd::Vec(v) if v.len() == 2 => (v[0].clone(), v[1].clone()),
                    o => (o.clone(), Opnd::Sink),
                };
                // Every source value is read before any lane writes its destination.
                let mut src = [0u64; 32];
                for (l, s) in src.iter_mut().enumerate() {
                    *s = self.get(&a[1], l);
                }
                for l in lanes(exec) {
                    let b = (self.get(&a[2], l) & 0x1f) as i32;
                    let c = self.get(&a[3], l) as u32;
                    let clamp = (c & 0x1f) as i32;
                    let seg = ((c >> 8) & 0x1f) as i32;
                    let lane = l as i32;
                    let max_lane = (lane & seg) | (clamp & !seg);
                    let min_lane = lane & seg;
                    let (j, ok) = match mode {
                        ShflMode::Up => (lane - b, lane - b >= max_lane),
                        ShflMode::Down => (lane + b, lane + b <= max_lane),
                        ShflMode::Bfly => (lane ^ b, (lane ^ b) <= max_lane),
                        ShflMode::Idx => {
                            let j = min_lane | (b & !seg);
                            (j, j <= max_lane)
                        }
                    };
                    let j = if ok { j as usize } else { l };
                    if exec & (1 << (j & 31)) == 0 {
                        let msg = format!("shfl reads lane {j}, which does not execute it");
                        return Err(self.exec_err(ctx, inst, 1 << l, &msg));
                    }
                    self.set(&d, l, src[j & 31]);
                    self.set(&p, l, u64::from(ok));
                }
            }
            Op::Vote { mode } => {
                self.check_members(ctx, inst, exec, a.get(2))?;
                let mut ballot = 0u32;
                for l in lanes(exec) {
                    if self.get(&a[1], l) != 0 {
                        ballot |= 1 << l;
                    }
                }
                let r = match mode {
                    VoteMode::All => u64::from(ballot == exec),
                    VoteMode::Any => u64::from(ballot != 0),
                    VoteMode::Uni => u64::from(ballot == exec || ballot == 0),
                    VoteMode::Ballot => u64::from(ballot),
                };
                for l in lanes(exec) {
                    self.set(&a[0], l, r);
                }
            }
            Op::Redux { op, ty } => {
                self.check_members(ctx, inst, exec, a.get(2))?;
                let signed = ty.is_signed();
                let mut acc: Option<u32> = None;
                for l in lanes(exec) {
                    let v = self.get(&a[1], l) as u32;
                    acc = Some(match acc {
                        None => v,
                        Some(x) => match op {
                            IntOp::Add => x.wrapping_add(v),
                            IntOp::Min if signed => (x as i32).min(v as i32) as u32,
                            IntOp::Max if signed => (x as i32).max(v as i32) as u32,
                            IntOp::Min => x.min(v),
                            IntOp::Max => x.max(v),
                            IntOp::And => x & v,
                            IntOp::Or => x | v,
                            _ => x ^ v,
                        },
                    });
                }
                for l in lanes(exec) {
                    self.set(&a[0], l, u64::from(acc.unwrap_or(0)));
                }
            }
            Op::Activemask => {
                for l in lanes(exec) {
                    self.set(&a[0], l, u64::from(exec));
                }
            }
            Op::Mma { k, ty } => {
                if exec != u32::MAX {
                    return Err(self.exec_err(
                        ctx,
                        inst,
                        exec,
                        "mma.sync needs all 32 lanes of the warp",
                    ));
                }
                if a.len() != 4 {
                    let msg = "mma.sync needs four operand vectors";
                    return Err(self.exec_err(ctx, inst, exec, msg));
                }
                let vecs: [&[Opnd]; 4] = std::array::from_fn(|i| match &a[i] {
                    Opnd::Vec(v) => v.as_slice(),
                    o => std::slice::from_ref(o),
                });
                let mut fa = [[0u32; 4]; 32];
                let mut fb = [[0u32; 2]; 32];
                let mut fc = [[0f32; 4]; 32];
                for l in 0..32 {
                    for (i, o) in vecs[1].iter().take(4).enumerate() {
                        fa[l][i] = self.get(o, l) as u32;
                    }
                    for (i, o) in vecs[2].iter().take(2).enumerate() {
                        fb[l][i] = self.get(o, l) as u32;
                    }
                    for (i, o) in vecs[3].iter().take(4).enumerate() {
                        fc[l][i] = f32::from_bits(self.get(o, l) as u32);
                    }
                }
                let shape = if k == 16 {
                    crate::mma::MmaShape::M16N8K16
                } else {
                    crate::mma::MmaShape::M16N8K8
                };
                let ab = if ty == ScalarType::Bf16 {
                    ScalarType::Bf16
                } else {
                    ScalarType::F16
                };
                let fd = crate::mma::mma_sync(shape, ab, &fa, &fb, &fc);
                for (l, dl) in fd.iter().enumerate() {
                    for (i, o) in vecs[0].iter().take(4).enumerate() {
                        self.set(o, l, u64::from(dl[i].to_bits()));
                    }
                }
                ctx.counters.mma += 1;
                ctx.counters.flops += 2 * 16 * 8 * u64::from(k);
            }
            _ => return Err(self.exec_err(ctx, inst, exec, "not a warp instruction")),
        }
        Ok(())
    }
}
