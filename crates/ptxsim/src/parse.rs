//! The hand-written PTX parser: module directives, variables, `.entry`/`.func` bodies with scoped registers,
//! labels and `.loc`; each instruction is decoded once into `ir::Inst` by `decode`.

use std::collections::HashMap;

use crate::decode::decode;
use crate::error::{Result, SimError};
use crate::ir::{Function, Inst, Module, Op, Opnd, Space, SymRef, Symbol};
use crate::lex::{parse_int, parse_number, tokenize, Tok, Token};
use crate::types::ScalarType;

/// Parses PTX text into a `Module`.
pub fn parse(src: &str) -> Result<Module> {
    let toks = tokenize(src)?;
    let mut p = Parser {
        toks,
        pos: 0,
        preds: Vec::new(),
        module: Module {
            globals: vec![],
            functions: vec![],
            files: vec![],
        },
    };
    p.module_body()?;
    Ok(p.module)
}

/// The names of the `.entry` kernels of a PTX text.
pub fn entry_names(ptx: &str) -> Result<Vec<String>> {
    Ok(parse(ptx)?.entry_names())
}

/// A name in a function's scope.
#[derive(Debug, Clone, Copy)]
enum Name {
    Reg(u32),
    Sym(SymRef),
}

struct Parser<'a> {
    toks: Vec<Token<'a>>,
    pos: usize,
    /// Per register of the function being parsed: whether it is a predicate.
    preds: Vec<bool>,
    module: Module,
}

fn err<T>(line: u32, msg: impl Into<String>) -> Result<T> {
    Err(SimError::Parse {
        line,
        msg: msg.into(),
    })
}

impl<'a> Parser<'a> {
    fn line(&self) -> u32 {
        self.toks
            .get(self.pos)
            .or(self.toks.last())
            .map_or(0, |t| t.line)
    }

    fn peek(&self) -> Option<&Tok<'a>> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }

    fn next(&mut self) -> Result<Tok<'a>> {
        let line = self.line();
        let t = self.toks.get(self.pos).map(|t| t.tok.clone());
        self.pos += 1;
        match t {
            Some(t) => Ok(t),
            None => err(line, "unexpected end of PTX"),
        }
    }

    fn is_punct(&self, c: char) -> bool {
        self.peek() == Some(&Tok::Punct(c))
    }

    fn expect_punct(&mut self, c: char) -> Result<()> {
        let line = self.line();
        match self.next()? {
            Tok::Punct(d) if d == c => Ok(()),
            t => err(line, format!("expected `{c}`, found {t:?}")),
        }
    }

    fn word(&mut self) -> Result<&'a str> {
        let line = self.line();
        match self.next()? {
            Tok::Word(w) => Ok(w),
            t => err(line, format!("expected a name, found {t:?}")),
        }
    }

    fn int(&mut self) -> Result<u64> {
        let line = self.line();
        match self.next()? {
            Tok::Num(n) => parse_int(n).map_or_else(|| err(line, format!("bad integer `{n}`")), Ok),
            t => err(line, format!("expected an integer, found {t:?}")),
        }
    }

    /// Skips every remaining token on the current token's line.
    fn skip_line(&mut self, line: u32) {
        while self.pos < self.toks.len() && self.toks[self.pos].line == line {
            self.pos += 1;
        }
    }

    fn skip_to_semicolon(&mut self) -> Result<()> {
        while self.next()? != Tok::Punct(';') {}
        Ok(())
    }

    fn module_body(&mut self) -> Result<()> {
        let mut is_extern = false;
        while let Some(t) = self.peek().cloned() {
            let line = self.line();
            let Tok::Word(w) = t else {
                return err(line, format!("unexpected {t:?} at module scope"));
            };
            match w {
                ".version" | ".target" | ".address_size" => {
                    self.pos += 1;
                    self.skip_line(line);
                }
                ".section" => {
                    // Debug sections (`.section .debug_str { … }`) carry nothing the simulator needs.
                    self.pos += 1;
                    self.skip_line(line);
                    if self.is_punct('{') {
                        let mut depth = 0usize;
                        loop {
                            match self.next()? {
                                Tok::Punct('{') => depth += 1,
                                Tok::Punct('}') => {
                                    depth -= 1;
                                    if depth == 0 {
                                        break;
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                }
                ".file" => {
                    self.pos += 1;
                    let idx = self.int()? as u32;
                    if let Tok::Str(s) = self.next()? {
                        self.module.files.push((idx, s.to_string()));
                    }
                    self.skip_line(line);
                }
                ".visible" | ".weak" | ".common" => self.pos += 1,
                ".extern" => {
                    self.pos += 1;
                    is_extern = true;
                }
                ".entry" | ".func" => {
                    self.pos += 1;
                    self.function(w == ".entry", line)?;
                    is_extern = false;
                }
                ".global" | ".const" | ".shared" => {
                    self.pos += 1;
                    let space = match w {
                        ".global" => Space::Global,
                        ".const" => Space::Const,
                        _ => Space::Shared,
                    };
                    let mut d = self.var_decl(space)?;
                    d.is_extern = is_extern;
                    self.expect_punct(';')?;
                    self.module.globals.push(d);
                    is_extern = false;
                }
                ".pragma" => {
                    self.pos += 1;
                    self.skip_to_semicolon()?;
                }
                _ => return err(line, format!("unsupported module directive `{w}`")),
            }
        }
        Ok(())
    }

    /// Parses `[.align N] [.vN] .type name[N]… [= init]` (the space word already consumed).
    fn var_decl(&mut self, space: Space) -> Result<Symbol> {
        let line = self.line();
        let mut align = 0usize;
        let mut vec = 1usize;
        let mut elem = None;
        let name = loop {
            let w = self.word()?;
            match w {
                ".align" => align = self.int()? as usize,
                ".v2" => vec = 2,
                ".v4" => vec = 4,
                ".ptr" | ".global" | ".shared" | ".local" | ".const" => {}
                _ if w.starts_with('.') => match ScalarType::parse(&w[1..]) {
                    Some(t) => elem = Some(t),
                    None => return err(line, format!("unsupported variable attribute `{w}`")),
                },
                _ => break w,
            }
        };
        let Some(elem) = elem else {
            return err(line, format!("variable `{name}` has no type"));
        };
        let esize = elem.size() * vec;
        let mut count = 1usize;
        let mut unsized_array = false;
        while self.is_punct('[') {
            self.pos += 1;
            if self.is_punct(']') {
                unsized_array = true;
            } else {
                count *= self.int()? as usize;
            }
            self.expect_punct(']')?;
        }
        let mut init = Vec::new();
        if self.is_punct('=') {
            self.pos += 1;
            self.initializer(elem, &mut init)?;
        }
        let size = if unsized_array { 0 } else { esize * count };
        if init.len() > size && !unsized_array {
            return err(
                line,
                format!("initializer of `{name}` is larger than the variable"),
            );
        }
        let sym = Symbol {
            name: name.to_string(),
            space,
            size: if unsized_array { init.len() } else { size },
            align: if align == 0 { esize.max(1) } else { align },
            is_extern: false,
            init,
        };
        Ok(sym)
    }

    fn initializer(&mut self, elem: ScalarType, out: &mut Vec<u8>) -> Result<()> {
        let line = self.line();
        if self.is_punct('{') {
            self.pos += 1;
            loop {
                if self.is_punct('}') {
                    self.pos += 1;
                    return Ok(());
                }
                self.initializer(elem, out)?;
                if self.is_punct(',') {
                    self.pos += 1;
                }
            }
        }
        let neg = self.is_punct('-');
        if neg {
            self.pos += 1;
        }
        let Tok::Num(n) = self.next()? else {
            return err(line, "initializers other than numbers are not supported");
        };
        let Some((mut bits, is_float)) = parse_number(n) else {
            return err(line, format!("bad number `{n}`"));
        };
        if is_float && elem == ScalarType::F32 && !n.starts_with("0f") && !n.starts_with("0F") {
            bits = u64::from((f64::from_bits(bits) as f32).to_bits());
        }
        if neg {
            bits = if is_float {
                bits ^ (1u64 << (elem.bits().min(64) - 1))
            } else {
                bits.wrapping_neg()
            };
        }
        out.extend_from_slice(&bits.to_le_bytes()[..elem.size().min(8)]);
        Ok(())
    }

    /// Parses a parameter list `( .param … name, … )`.
    fn param_list(&mut self) -> Result<Vec<Symbol>> {
        let mut out = Vec::new();
        self.expect_punct('(')?;
        while !self.is_punct(')') {
            let line = self.line();
            let w = self.word()?;
            let space = match w {
                ".param" => Space::Param,
                ".reg" => Space::Param,
                _ => return err(line, format!("expected `.param`, found `{w}`")),
            };
            out.push(self.var_decl(space)?);
            if self.is_punct(',') {
                self.pos += 1;
            }
        }
        self.pos += 1;
        Ok(out)
    }

    fn function(&mut self, is_entry: bool, line: u32) -> Result<()> {
        let mut rets = Vec::new();
        if !is_entry && self.is_punct('(') {
            rets = self.param_list()?;
        }
        let name = self.word()?;
        let params = if self.is_punct('(') {
            self.param_list()?
        } else {
            Vec::new()
        };
        // Performance directives up to the body or `;`: `.maxntid` / `.reqntid` are kept for the launch check,
        // the others (.minnctapersm, .noreturn, …) are skipped.
        let mut max_threads = None;
        while !self.is_punct('{') && !self.is_punct(';') {
            if let Tok::Word(w @ (".maxntid" | ".reqntid")) = self.next()? {
                let mut n = self.int()?;
                while self.is_punct(',') {
                    self.pos += 1;
                    n *= self.int()?;
                }
                max_threads = Some((n, w == ".reqntid"));
            }
        }
        let idx = match self.module.function(name) {
            Some(i) => i,
            None => {
                self.module.functions.push(Function {
                    name: name.to_string(),
                    is_entry,
                    params: params.clone(),
                    rets: rets.clone(),
                    locals: vec![],
                    nregs: 0,
                    code: vec![],
                    line,
                    max_threads,
                });
                self.module.functions.len() - 1
            }
        };
        if self.is_punct(';') {
            self.pos += 1;
            return Ok(());
        }
        self.pos += 1;
        let mut f = Function {
            name: name.to_string(),
            is_entry,
            params,
            rets,
            locals: vec![],
            nregs: 0,
            code: vec![],
            line,
            max_threads,
        };
        self.body(&mut f)?;
        self.module.functions[idx] = f;
        Ok(())
    }

    fn body(&mut self, f: &mut Function) -> Result<()> {
        self.preds.clear();
        let mut scopes: Vec<HashMap<String, Name>> = vec![HashMap::new()];
        for (i, p) in f.params.iter().enumerate() {
            scopes[0].insert(p.name.clone(), Name::Sym(SymRef::Param(i as u32)));
        }
        for (i, p) in f.rets.iter().enumerate() {
            scopes[0].insert(p.name.clone(), Name::Sym(SymRef::Ret(i as u32)));
        }
        let mut labels: HashMap<&'a str, u32> = HashMap::new();
        // Branch operands naming labels not yet seen: (instruction, operand index, label).
        let mut fixups: Vec<(usize, usize, &'a str, u32)> = Vec::new();
        let mut loc = (0u32, 0u32);
        let mut depth = 1usize;
        while depth > 0 {
            let line = self.line();
            match self.next()? {
                Tok::Punct('{') => {
                    depth += 1;
                    scopes.push(HashMap::new());
                }
                Tok::Punct('}') => {
                    depth -= 1;
                    scopes.pop();
                }
                Tok::Punct('@') => {
                    let neg = self.is_punct('!');
                    if neg {
                        self.pos += 1;
                    }
                    let pw = self.word()?;
                    let Some(Name::Reg(r)) = lookup(&scopes, pw) else {
                        return err(line, format!("unknown guard predicate `{pw}`"));
                    };
                    let op = self.word()?;
                    self.instruction(f, &scopes, op, Some((r, neg)), loc, &mut fixups, line)?;
                }
                Tok::Word(".reg") => {
                    // Only whether a register is a predicate is kept: instructions name their own types.
                    let is_pred = self.word()? == ".pred";
                    loop {
                        let name = self.word()?;
                        if self.is_punct('<') {
                            self.pos += 1;
                            let n = self.int()? as u32;
                            self.expect_punct('>')?;
                            let scope = scopes
                                .last_mut()
                                .expect("a function body always has a scope");
                            for i in 0..n {
                                scope.insert(format!("{name}{i}"), Name::Reg(f.nregs));
                                f.nregs += 1;
                                self.preds.push(is_pred);
                            }
                        } else {
                            scopes
                                .last_mut()
                                .expect("a function body always has a scope")
                                .insert(name.to_string(), Name::Reg(f.nregs));
                            f.nregs += 1;
                            self.preds.push(is_pred);
                        }
                        if self.is_punct(',') {
                            self.pos += 1;
                            continue;
                        }
                        break;
                    }
                    self.expect_punct(';')?;
                }
                Tok::Word(w @ (".local" | ".param" | ".shared" | ".global" | ".const")) => {
                    let space = match w {
                        ".local" | ".param" => Space::Local,
                        ".shared" => Space::Shared,
                        ".global" => Space::Global,
                        _ => Space::Const,
                    };
                    let d = self.var_decl(space)?;
                    self.expect_punct(';')?;
                    let name = d.name.clone();
                    let r = if space == Space::Local {
                        f.locals.push(d);
                        SymRef::Local(f.locals.len() as u32 - 1)
                    } else {
                        self.module.globals.push(d);
                        SymRef::Global(self.module.globals.len() as u32 - 1)
                    };
                    scopes
                        .last_mut()
                        .expect("a function body always has a scope")
                        .insert(name, Name::Sym(r));
                }
                Tok::Word(".loc") => {
                    let file = self.int()? as u32;
                    let l = self.int()? as u32;
                    loc = (file, l);
                    self.skip_line(line);
                }
                Tok::Word(".pragma") => self.skip_to_semicolon()?,
                Tok::Word(w) if self.is_punct(':') => {
                    self.pos += 1;
                    labels.insert(w, f.code.len() as u32);
                }
                Tok::Word(w) if !w.starts_with('.') || w.len() > 1 => {
                    if w.starts_with('.') {
                        return err(
                            line,
                            format!("unsupported directive `{w}` in a function body"),
                        );
                    }
                    self.instruction(f, &scopes, w, None, loc, &mut fixups, line)?;
                }
                t => return err(line, format!("unexpected {t:?}")),
            }
        }
        for (ii, oi, name, line) in fixups {
            let Some(&target) = labels.get(name) else {
                return err(line, format!("unknown name `{name}`"));
            };
            f.code[ii].args[oi] = Opnd::Label(target);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn instruction(
        &mut self,
        f: &mut Function,
        scopes: &[HashMap<String, Name>],
        opcode: &'a str,
        guard: Option<(u32, bool)>,
        loc: (u32, u32),
        fixups: &mut Vec<(usize, usize, &'a str, u32)>,
        line: u32,
    ) -> Result<()> {
        let mut args = Vec::new();
        let mut pending = Vec::new();
        while !self.is_punct(';') {
            let o = self.operand(scopes, &mut pending, args.len(), line)?;
            args.push(o);
            if self.is_punct(',') {
                self.pos += 1;
            }
        }
        self.pos += 1;
        for (oi, name) in pending {
            fixups.push((f.code.len(), oi, name, line));
        }
        let parts: Vec<&str> = opcode.split('.').collect();
        let (mut op, class) = decode(&parts, &args, line)?;
        // cp.async's fourth operand is `ignore-src` when it is a predicate, else `src-size`.
        if let (Op::CpAsync { ignore_src, .. }, Some(Opnd::Reg(r))) = (&mut op, args.get(3)) {
            *ignore_src = self.preds.get(*r as usize).copied().unwrap_or(false);
        }
        f.code.push(Inst {
            op,
            guard,
            args,
            class,
            line,
            loc,
        });
        Ok(())
    }

    fn operand(
        &mut self,
        scopes: &[HashMap<String, Name>],
        pending: &mut Vec<(usize, &'a str)>,
        index: usize,
        line: u32,
    ) -> Result<Opnd> {
        match self.next()? {
            Tok::Punct(c @ ('{' | '(')) => {
                let close = if c == '{' { '}' } else { ')' };
                let mut items = Vec::new();
                while !self.is_punct(close) {
                    items.push(self.operand(scopes, pending, index, line)?);
                    if self.is_punct(',') {
                        self.pos += 1;
                    }
                }
                self.pos += 1;
                if items.is_empty() && c == '{' {
                    return err(line, "empty vector operand");
                }
                Ok(Opnd::Vec(items))
            }
            Tok::Punct('[') => {
                let base = match self.next()? {
                    Tok::Word(w) => self.name(scopes, w, line)?,
                    Tok::Num(n) => Opnd::Imm(
                        parse_int(n).map_or_else(|| err(line, format!("bad address `{n}`")), Ok)?,
                    ),
                    t => return err(line, format!("bad address {t:?}")),
                };
                let mut off = 0i64;
                while self.is_punct('+') || self.is_punct('-') {
                    let mut neg = self.next()? == Tok::Punct('-');
                    if self.is_punct('-') {
                        self.pos += 1;
                        neg = !neg;
                    }
                    let v = self.int()? as i64;
                    off = off.wrapping_add(if neg { v.wrapping_neg() } else { v });
                }
                self.expect_punct(']')?;
                Ok(Opnd::Addr(Box::new(base), off))
            }
            Tok::Punct('-') => match self.next()? {
                Tok::Num(n) => {
                    let Some((bits, is_float)) = parse_number(n) else {
                        return err(line, format!("bad number `{n}`"));
                    };
                    if is_float {
                        return err(line, "negated float literals are not supported");
                    }
                    Ok(Opnd::Imm(bits.wrapping_neg()))
                }
                t => err(line, format!("bad operand -{t:?}")),
            },
            Tok::Punct('!') => {
                let w = self.word()?;
                match self.name(scopes, w, line)? {
                    Opnd::Reg(r) => Ok(Opnd::NotReg(r)),
                    o => err(line, format!("cannot negate {o:?}")),
                }
            }
            Tok::Num(n) => {
                let Some((bits, _)) = parse_number(n) else {
                    return err(line, format!("bad number `{n}`"));
                };
                Ok(Opnd::Imm(bits))
            }
            Tok::Word("_") => Ok(Opnd::Sink),
            Tok::Word(w) => {
                let first = if let Some(o) = self.try_name(scopes, w) {
                    o
                } else {
                    pending.push((index, w));
                    Opnd::Label(u32::MAX)
                };
                if self.is_punct('|') {
                    self.pos += 1;
                    let w2 = self.word()?;
                    let second = self.name(scopes, w2, line)?;
                    return Ok(Opnd::Vec(vec![first, second]));
                }
                Ok(first)
            }
            t => err(line, format!("unexpected {t:?} in operands")),
        }
    }

    fn name(&self, scopes: &[HashMap<String, Name>], w: &str, line: u32) -> Result<Opnd> {
        self.try_name(scopes, w)
            .map_or_else(|| err(line, format!("unknown name `{w}`")), Ok)
    }

    fn try_name(&self, scopes: &[HashMap<String, Name>], w: &str) -> Option<Opnd> {
        if let Some(n) = lookup(scopes, w) {
            return Some(match n {
                Name::Reg(r) => Opnd::Reg(r),
                Name::Sym(s) => Opnd::Sym(s),
            });
        }
        if let Some(s) = special(w) {
            return Some(Opnd::Sreg(s));
        }
        if let Some(i) = self.module.globals.iter().rposition(|g| g.name == w) {
            return Some(Opnd::Sym(SymRef::Global(i as u32)));
        }
        self.module
            .function(w)
            .map(|i| Opnd::Sym(SymRef::Func(i as u32)))
    }
}

fn lookup(scopes: &[HashMap<String, Name>], w: &str) -> Option<Name> {
    scopes.iter().rev().find_map(|s| s.get(w).copied())
}

fn special(w: &str) -> Option<crate::ir::Sreg> {
    use crate::ir::Sreg::*;
    let dim = |s: &str| match s {
        "x" => Some(0u8),
        "y" => Some(1),
        "z" => Some(2),
        _ => None,
    };
    if let Some((base, d)) = w.split_once('.') {
        let d = dim(d)?;
        return Some(match base {
            "%tid" => Tid(d),
            "%ntid" => Ntid(d),
            "%ctaid" => Ctaid(d),
            "%nctaid" => Nctaid(d),
            _ => return None,
        });
    }
    Some(match w {
        "%laneid" => LaneId,
        "%warpid" => WarpId,
        "%nwarpid" => NWarpId,
        "%lanemask_eq" => LaneMaskEq,
        "%lanemask_lt" => LaneMaskLt,
        "%lanemask_le" => LaneMaskLe,
        "%lanemask_gt" => LaneMaskGt,
        "%lanemask_ge" => LaneMaskGe,
        "%clock" => Clock,
        "%clock64" => Clock64,
        "%globaltimer" => GlobalTimer,
        "%smid" => SmId,
        "%nsmid" => NSmId,
        "%dynamic_smem_size" => DynSmem,
        "%total_smem_size" => TotalSmem,
        _ => return None,
    })
}
