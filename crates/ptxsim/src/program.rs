//! Linking one kernel for execution: the entry and every function it calls become one flat instruction array
//! with program-wide register numbers, branch targets and call records, and every symbol becomes an address.

use crate::error::{Result, SimError};
use crate::ir::{Function, Inst, Module, Op, Opnd, Space, SymRef};

/// Addresses of a loaded module's variables: device addresses for `.global`/`.const`, offsets for `.shared`.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub global_addrs: Vec<u64>,
    /// Bytes of static shared memory.
    pub shared_static: usize,
    /// The offset of dynamic (`extern .shared`) shared memory.
    pub dyn_shared_offset: usize,
}

impl Layout {
    /// Places the module's variables: `.shared` ones at offsets, the others through `alloc`, which receives
    /// (size, initializer) and returns the device address.
    pub(crate) fn new(
        module: &Module,
        mut alloc: impl FnMut(usize, &[u8]) -> Result<u64>,
    ) -> Result<Self> {
        let mut shared = 0usize;
        let mut dyn_align = 16usize;
        let mut global_addrs = Vec::with_capacity(module.globals.len());
        for g in &module.globals {
            match g.space {
                Space::Shared if g.is_extern => {
                    dyn_align = dyn_align.max(g.align);
                    global_addrs.push(u64::MAX);
                }
                Space::Shared => {
                    shared = align_up(shared, g.align.max(1));
                    global_addrs.push(shared as u64);
                    shared += g.size;
                }
                _ => global_addrs.push(alloc(g.size.max(1), &g.init)?),
            }
        }
        let dyn_shared_offset = align_up(shared, dyn_align);
        for (g, a) in module.globals.iter().zip(global_addrs.iter_mut()) {
            if g.space == Space::Shared && g.is_extern {
                *a = dyn_shared_offset as u64;
            }
        }
        Ok(Self {
            global_addrs,
            shared_static: shared,
            dyn_shared_offset,
        })
    }
}

/// What a `call` does besides jumping: per-thread copies of arguments in and results out.
#[derive(Debug, Clone)]
pub(crate) struct CallInfo {
    pub target: u32,
    /// (source local offset, destination local offset, bytes) copied at the call.
    pub copy_in: Vec<(u64, u64, u32)>,
    /// (callee local offset, caller local offset, bytes) copied at the return.
    pub copy_out: Vec<(u64, u64, u32)>,
}

/// A kernel parameter's place in the parameter buffer.
#[derive(Debug, Clone)]
pub(crate) struct ParamSlot {
    pub name: String,
    pub offset: usize,
    pub size: usize,
}

/// A linked kernel, ready to execute.
#[derive(Debug, Clone)]
pub(crate) struct Program {
    pub kernel: String,
    pub code: Vec<Inst>,
    pub nregs: u32,
    pub params: Vec<ParamSlot>,
    pub param_bytes: usize,
    /// Per-thread local memory: `.local` variables and the parameters of called functions.
    pub local_bytes: usize,
    pub shared_static: usize,
    pub dyn_shared_offset: usize,
    pub calls: Vec<CallInfo>,
    pub files: Vec<(u32, String)>,
    /// The entry's `.maxntid` / `.reqntid` (threads per block; true for `.reqntid`).
    pub max_threads: Option<(u64, bool)>,
}

pub(crate) fn align_up(v: usize, a: usize) -> usize {
    v.div_ceil(a.max(1)) * a.max(1)
}

/// Per-function placement during linking.
struct Placed {
    func: usize,
    pc_base: u32,
    reg_base: u32,
    /// Local offsets of the function's `locals`, `params` (non-entry) and `rets`.
    locals: Vec<u64>,
    params: Vec<u64>,
    rets: Vec<u64>,
}

/// Links `entry` of `module` with the variable `layout`.
pub(crate) fn link(module: &Module, layout: &Layout, entry: &str, source: &str) -> Result<Program> {
    let root = module
        .functions
        .iter()
        .position(|f| f.is_entry && f.name == entry)
        .ok_or_else(|| SimError::UnknownKernel {
            module: source.to_string(),
            name: entry.to_string(),
        })?;
    // Functions reachable from the entry, in discovery order; recursion is rejected (locals are static).
    let mut order = vec![root];
    let mut i = 0;
    while i < order.len() {
        for inst in &module.functions[order[i]].code {
            if let Op::Call { func } = inst.op {
                let f = func as usize;
                if is_printf(module, f) {
                    continue;
                }
                if f == root || module.functions[f].is_entry {
                    return Err(SimError::Parse {
                        line: inst.line,
                        msg: "call of a kernel entry".into(),
                    });
                }
                if module.functions[f].code.is_empty() {
                    let msg = format!(
                        "call of `{}`, which has no body in this module",
                        module.functions[f].name
                    );
                    return Err(SimError::Parse {
                        line: inst.line,
                        msg,
                    });
                }
                if !order.contains(&f) {
                    order.push(f);
                }
            }
        }
        i += 1;
    }
    check_no_recursion(module, &order)?;
    let layout = &shared_layout(module, layout, &order);
    let mut placed = Vec::with_capacity(order.len());
    let (mut pc, mut reg, mut local) = (0u32, 0u32, 0usize);
    for &fi in &order {
        let f = &module.functions[fi];
        let mut place = |syms: &[crate::ir::Symbol]| {
            syms.iter()
                .map(|s| {
                    local = align_up(local, s.align.max(1));
                    let o = local as u64;
                    local += s.size;
                    o
                })
                .collect::<Vec<u64>>()
        };
        let locals = place(&f.locals);
        let params = if f.is_entry { vec![] } else { place(&f.params) };
        let rets = place(&f.rets);
        placed.push(Placed {
            func: fi,
            pc_base: pc,
            reg_base: reg,
            locals,
            params,
            rets,
        });
        pc += f.code.len() as u32;
        reg += f.nregs;
    }
    let mut params = Vec::new();
    let mut off = 0usize;
    for p in &module.functions[root].params {
        off = align_up(off, p.align.max(1));
        params.push(ParamSlot {
            name: p.name.clone(),
            offset: off,
            size: p.size,
        });
        off += p.size;
    }
    let mut prog = Program {
        kernel: entry.to_string(),
        code: Vec::with_capacity(pc as usize),
        nregs: reg,
        params,
        param_bytes: off,
        local_bytes: align_up(local, 16),
        shared_static: layout.shared_static,
        dyn_shared_offset: layout.dyn_shared_offset,
        calls: Vec::new(),
        files: module.files.clone(),
        max_threads: module.functions[root].max_threads,
    };
    for p in &placed {
        let f = &module.functions[p.func];
        for inst in &f.code {
            let linked = link_inst(module, layout, &placed, p, f, inst, &mut prog)?;
            prog.code.push(linked);
        }
    }
    Ok(prog)
}

/// A copy of `layout` whose static shared memory holds only the `.shared` variables these functions use
/// (a kernel gets only its own shared variables, so running past one is out of bounds, not into a neighbour).
fn shared_layout(module: &Module, layout: &Layout, order: &[usize]) -> Layout {
    fn mark(o: &Opnd, used: &mut [bool]) {
        match o {
            Opnd::Sym(SymRef::Global(i)) => used[*i as usize] = true,
            Opnd::Addr(b, _) => mark(b, used),
            Opnd::Vec(v) => v.iter().for_each(|x| mark(x, used)),
            _ => {}
        }
    }
    let mut used = vec![false; module.globals.len()];
    for &f in order {
        for inst in &module.functions[f].code {
            inst.args.iter().for_each(|a| mark(a, &mut used));
        }
    }
    let mut out = layout.clone();
    let mut shared = 0usize;
    let mut dyn_align = 16usize;
    for (i, g) in module.globals.iter().enumerate() {
        if g.space != Space::Shared {
            continue;
        }
        if g.is_extern {
            dyn_align = dyn_align.max(g.align);
        } else if used[i] {
            shared = align_up(shared, g.align.max(1));
            out.global_addrs[i] = shared as u64;
            shared += g.size;
        }
    }
    out.shared_static = shared;
    out.dyn_shared_offset = align_up(shared, dyn_align);
    for (g, a) in module.globals.iter().zip(out.global_addrs.iter_mut()) {
        if g.space == Space::Shared && g.is_extern {
            *a = out.dyn_shared_offset as u64;
        }
    }
    out
}

/// Whether function `f` is the body-less `vprintf` that `printf` in CUDA compiles to.
fn is_printf(module: &Module, f: usize) -> bool {
    let fun = &module.functions[f];
    fun.name == "vprintf" && fun.code.is_empty()
}

fn check_no_recursion(module: &Module, order: &[usize]) -> Result<()> {
    // Depth-first search for a cycle among the reachable functions.
    fn visit(module: &Module, f: usize, stack: &mut Vec<usize>) -> Result<()> {
        if stack.contains(&f) {
            let fun = &module.functions[f];
            return Err(SimError::Parse {
                line: fun.line,
                msg: format!("recursive call of `{}` is not supported", fun.name),
            });
        }
        stack.push(f);
        for inst in &module.functions[f].code {
            if let Op::Call { func } = inst.op {
                visit(module, func as usize, stack)?;
            }
        }
        stack.pop();
        Ok(())
    }
    visit(module, order[0], &mut Vec::new())
}

/// Resolves a symbol to (state space, address in that space).
fn resolve(
    module: &Module,
    layout: &Layout,
    p: &Placed,
    f: &Function,
    s: SymRef,
    line: u32,
) -> Result<(Space, u64)> {
    Ok(match s {
        SymRef::Global(i) => {
            let g = &module.globals[i as usize];
            let space = if g.space == Space::Shared {
                Space::Shared
            } else {
                Space::Global
            };
            (space, layout.global_addrs[i as usize])
        }
        SymRef::Param(i) if f.is_entry => {
            let mut off = 0usize;
            for (j, q) in f.params.iter().enumerate() {
                off = align_up(off, q.align.max(1));
                if j == i as usize {
                    break;
                }
                off += q.size;
            }
            (Space::Param, off as u64)
        }
        SymRef::Param(i) => (Space::Local, p.params[i as usize]),
        SymRef::Ret(i) => (Space::Local, p.rets[i as usize]),
        SymRef::Local(i) => (Space::Local, p.locals[i as usize]),
        SymRef::Func(_) => {
            return Err(SimError::Parse {
                line,
                msg: "a function name used as a value".into(),
            })
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn link_inst(
    module: &Module,
    layout: &Layout,
    placed: &[Placed],
    p: &Placed,
    f: &Function,
    inst: &Inst,
    prog: &mut Program,
) -> Result<Inst> {
    let line = inst.line;
    let mut out = inst.clone();
    if let Some((r, n)) = inst.guard {
        out.guard = Some((r + p.reg_base, n));
    }
    if let Op::Call { func } = inst.op {
        if is_printf(module, func as usize) {
            // Device-side printf prints nothing here; the call is skipped.
            out.op = Op::Nop;
            out.args.clear();
            return Ok(out);
        }
        let callee = placed
            .iter()
            .find(|q| q.func == func as usize)
            .expect("every callee was placed");
        let cf = &module.functions[func as usize];
        let fpos = inst
            .args
            .iter()
            .position(|a| matches!(a, Opnd::Sym(SymRef::Func(_))))
            .expect("decode checked");
        let list = |o: Option<&Opnd>| -> Vec<Opnd> {
            match o {
                Some(Opnd::Vec(v)) => v.clone(),
                _ => vec![],
            }
        };
        let rets = if fpos > 0 {
            list(inst.args.first())
        } else {
            vec![]
        };
        let args = list(inst.args.get(fpos + 1));
        let addr_of = |o: &Opnd| -> Result<u64> {
            match o {
                Opnd::Sym(s) => Ok(resolve(module, layout, p, f, *s, line)?.1),
                _ => Err(SimError::Parse {
                    line,
                    msg: "call arguments must be .param variables".into(),
                }),
            }
        };
        if args.len() != cf.params.len() || rets.len() != cf.rets.len() {
            return Err(SimError::Parse {
                line,
                msg: format!("call of `{}` with the wrong number of arguments", cf.name),
            });
        }
        let mut info = CallInfo {
            target: callee.pc_base,
            copy_in: vec![],
            copy_out: vec![],
        };
        for (a, (dst, sym)) in args.iter().zip(callee.params.iter().zip(&cf.params)) {
            info.copy_in.push((addr_of(a)?, *dst, sym.size as u32));
        }
        for (r, (src, sym)) in rets.iter().zip(callee.rets.iter().zip(&cf.rets)) {
            info.copy_out.push((*src, addr_of(r)?, sym.size as u32));
        }
        prog.calls.push(info);
        out.op = Op::Call {
            func: prog.calls.len() as u32 - 1,
        };
        out.args.clear();
        return Ok(out);
    }
    let mut sym_space = None;
    for a in out.args.iter_mut() {
        relocate(module, layout, p, f, a, line, &mut sym_space)?;
    }
    // A memory instruction addressing a variable directly uses the variable's space: this turns `ld.param`
    // of a device function's parameters into per-thread local accesses, and generic `[sym]` into its space.
    if let Some(space) = sym_space {
        match &mut out.op {
            Op::Ld { space: s, .. } | Op::St { space: s, .. } | Op::Atom { space: s, .. }
                if *s == Space::Generic
                    || (*s == Space::Param && space == Space::Local)
                    || *s == Space::Const =>
            {
                *s = if *s == Space::Const {
                    Space::Global
                } else {
                    space
                };
                out.class = match space {
                    Space::Local => crate::ir::Class::Local,
                    Space::Shared => crate::ir::Class::Shared,
                    _ => out.class,
                };
            }
            _ => {}
        }
    }
    if let Op::Ld {
        space: s @ Space::Const,
        ..
    } = &mut out.op
    {
        *s = Space::Global;
    }
    Ok(out)
}

fn relocate(
    module: &Module,
    layout: &Layout,
    p: &Placed,
    f: &Function,
    o: &mut Opnd,
    line: u32,
    sym_space: &mut Option<Space>,
) -> Result<()> {
    match o {
        Opnd::Reg(r) | Opnd::NotReg(r) => *r += p.reg_base,
        Opnd::Label(t) => *t += p.pc_base,
        Opnd::Sym(s) => {
            let (space, addr) = resolve(module, layout, p, f, *s, line)?;
            *sym_space = Some(space);
            *o = Opnd::Imm(addr);
        }
        Opnd::Addr(base, _) => relocate(module, layout, p, f, base, line, sym_space)?,
        Opnd::Vec(v) => {
            for x in v {
                relocate(module, layout, p, f, x, line, sym_space)?;
            }
        }
        Opnd::Imm(_) | Opnd::Sreg(_) | Opnd::Sink => {}
    }
    Ok(())
}
