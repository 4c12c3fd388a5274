//! CLIF generation: the row loop, the f32x4 loop with its one-element tail, and the program
//! body (instruction by instruction, through `math.rs` for the transcendental functions).

use super::math::Math;
use super::{JitError, KernelFn};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{F32, F32X4, I64};
use cranelift_codegen::ir::{
    AbiParam, BlockArg, InstBuilder, MemFlagsData, StackSlotData, StackSlotKind, UserFuncName,
    Value,
};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};
use ortho_ir::fused::{Binary, Form, FusedElementwise, FusedError, Instr, Unary};
use std::sync::OnceLock;

/// Name under which `powf` is registered with the JIT.
pub(super) const POWF_SYMBOL: &str = "ortho_jit_powf";

extern "C" fn powf_shim(x: f32, e: f32) -> f32 {
    x.powf(e)
}

extern "C" fn fmaf_shim(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

/// The host ISA, detected once (`cranelift_native` reads CPUID: SSE4.1, AVX, FMA…).
fn host_isa() -> Result<OwnedTargetIsa, JitError> {
    static ISA: OnceLock<Result<OwnedTargetIsa, JitError>> = OnceLock::new();
    ISA.get_or_init(|| {
        let mut flags = settings::builder();
        let set = |f: &mut settings::Builder, k: &str, v: &str| {
            f.set(k, v)
                .map_err(|e| JitError::Unsupported(format!("{k}={v}: {e}")))
        };
        set(&mut flags, "opt_level", "speed")?;
        // The JIT maps code anywhere; calls to host functions need absolute addresses.
        set(&mut flags, "use_colocated_libcalls", "false")?;
        set(&mut flags, "is_pic", "false")?;
        let isa = cranelift_native::builder().map_err(|e| JitError::Unsupported(e.to_string()))?;
        isa.finish(settings::Flags::new(flags))
            .map_err(|e| JitError::Unsupported(e.to_string()))
    })
    .clone()
}

/// Compiles `f` into a fresh module; returns the module (which owns the code) and the entry.
/// Knobs for tests: turn FMA off (the code path of hosts without it), capture the machine code.
#[derive(Default)]
pub(super) struct Options {
    pub no_fma: bool,
    /// Filled with Cranelift's listing of the generated machine instructions when `Some`.
    pub vcode: Option<String>,
}

pub(super) fn compile_with(
    f: &FusedElementwise,
    o: &mut Options,
) -> Result<(JITModule, KernelFn), JitError> {
    let isa = host_isa()?;
    let has_fma = isa.has_native_fma() && !o.no_fma;
    let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
    jb.symbol(POWF_SYMBOL, powf_shim as *const u8);
    // Only reached if Cranelift legalizes an `fma` into a libcall, which `Math` avoids.
    jb.symbol("fmaf", fmaf_shim as *const u8);
    let mut module = JITModule::new(jb);
    let cg = |e: cranelift_module::ModuleError| JitError::Codegen(e.to_string());

    let ptr = module.target_config().pointer_type();
    let mut sig = module.make_signature();
    sig.params.extend([
        AbiParam::new(ptr),
        AbiParam::new(ptr),
        AbiParam::new(I64),
        AbiParam::new(I64),
    ]);
    let id = module
        .declare_function("fused", Linkage::Local, &sig)
        .map_err(cg)?;

    let needs_powf = f.program.iter().any(|i| matches!(i, Instr::Powf(..)));
    let powf_id = if needs_powf {
        let mut s = module.make_signature();
        s.params.extend([AbiParam::new(F32), AbiParam::new(F32)]);
        s.returns.push(AbiParam::new(F32));
        Some(
            module
                .declare_function(POWF_SYMBOL, Linkage::Import, &s)
                .map_err(cg)?,
        )
    } else {
        None
    };

    let mut ctx = module.make_context();
    ctx.func.signature = sig;
    ctx.func.name = UserFuncName::user(0, id.as_u32());
    let mut fbc = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fbc);
        let powf = powf_id.map(|pid| module.declare_func_in_func(pid, b.func));
        build_body(&mut b, f, ptr, Math { has_fma, powf })?;
        b.seal_all_blocks();
        b.finalize(module.target_config());
    }
    if o.vcode.is_some() {
        ctx.set_disasm(true);
    }
    module.define_function(id, &mut ctx).map_err(|e| match e {
        cranelift_module::ModuleError::Compilation(ce) => JitError::Codegen(format!("{ce:?}")),
        other => cg(other),
    })?;
    if o.vcode.is_some() {
        let clif = ctx.func.display().to_string();
        o.vcode = ctx
            .compiled_code()
            .and_then(|c| c.vcode.clone())
            .map(|v| format!("{clif}\n{v}"));
    }
    module.clear_context(&mut ctx);
    module.finalize_definitions().map_err(cg)?;
    let code = module.get_finalized_function(id);
    // SAFETY: the function was declared with exactly this signature (two pointers, two i64)
    // in the host's default calling convention, which is `extern "C"`.
    let func = unsafe { std::mem::transmute::<*const u8, KernelFn>(code) };
    Ok((module, func))
}

/// Flags of operand loads: they never trap (lengths are checked before the call), and nothing
/// the kernel stores aliases them, so they may move and be kept in registers.
fn load_flags() -> MemFlagsData {
    MemFlagsData::new()
        .with_notrap()
        .with_readonly()
        .with_can_move()
}

/// Flags of output stores, and of the hoisted-register buffer (the same alias category, so
/// the buffer's loads stay in the loop).
fn out_flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

fn spill_flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap().with_aligned()
}

/// Flags of loads that must stay where they are written (pointers, per-row values), so that
/// what is computed from them is not sunk into the column loop.
fn pinned_flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap().with_readonly()
}

fn jump_args(v: &[Value]) -> Vec<BlockArg> {
    v.iter().map(|&x| BlockArg::Value(x)).collect()
}

/// Where a register's value varies: once per call (constants, scalar operands), once per row
/// (per-row operands), or per element. Each register is computed in the outermost block where
/// its operands are known, so `sqrt(mean + eps)` costs one vector op per row, not per element.
fn levels(f: &FusedElementwise) -> Vec<u8> {
    let mut lv: Vec<u8> = Vec::with_capacity(f.program.len());
    for ins in &f.program {
        let l = match *ins {
            Instr::Input(k) => match f.forms.get(k as usize) {
                Some(Form::Scalar) => 0,
                Some(Form::PerRow) => 1,
                _ => 2,
            },
            Instr::Const(_) => 0,
            _ => ins
                .operands()
                .iter()
                .map(|&r| lv.get(r as usize).copied().unwrap_or(2))
                .max()
                .unwrap_or(0),
        };
        lv.push(l);
    }
    lv
}

fn build_body(
    b: &mut FunctionBuilder,
    f: &FusedElementwise,
    ptr: cranelift_codegen::ir::Type,
    math: Math,
) -> Result<(), JitError> {
    let lv = levels(f);
    let result = f.program.len() - 1;
    let entry = b.create_block();
    let row_head = b.create_block();
    let row_body = b.create_block();
    let vec_head = b.create_block();
    let vec_body = b.create_block();
    let tail_head = b.create_block();
    let tail_body = b.create_block();
    let row_next = b.create_block();
    let exit = b.create_block();
    for blk in [row_head, vec_head, vec_body, tail_head, tail_body, row_next] {
        b.append_block_param(blk, I64);
    }

    // entry: operand base pointers; scalars and everything computed from them alone.
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let params = b.block_params(entry).to_vec();
    let (inputs, out, rows, row_len) = (params[0], params[1], params[2], params[3]);
    let mut base = Vec::with_capacity(f.forms.len());
    let mut leaf: Vec<Option<Value>> = vec![None; f.forms.len()];
    for (k, form) in f.forms.iter().enumerate() {
        let p = b.ins().load(ptr, pinned_flags(), inputs, (k * 8) as i32);
        if *form == Form::Scalar {
            let s = b.ins().load(F32, pinned_flags(), p, 0);
            leaf[k] = Some(b.ins().splat(F32X4, s));
        }
        base.push(p);
    }
    let mut regs: Vec<Option<Value>> = vec![None; f.program.len()];
    emit(b, f, &lv, 0, &leaf, &mut regs, &math)?;
    let zero = b.ins().iconst(I64, 0);
    b.ins().jump(row_head, &jump_args(&[zero]));

    // row_head(r): r < rows ?
    b.switch_to_block(row_head);
    let r = b.block_params(row_head)[0];
    let more = b.ins().icmp(IntCC::UnsignedLessThan, r, rows);
    b.ins().brif(more, row_body, &[], exit, &[]);

    // row_body: row pointers, per-row operands and what depends on them alone.
    b.switch_to_block(row_body);
    let off = b.ins().imul(r, row_len);
    let off_bytes = b.ins().ishl_imm_u(off, 2);
    let r_bytes = b.ins().ishl_imm_u(r, 2);
    let mut row_ptr: Vec<Option<Value>> = vec![None; f.forms.len()];
    for (k, form) in f.forms.iter().enumerate() {
        match form {
            Form::Full => row_ptr[k] = Some(b.ins().iadd(base[k], off_bytes)),
            Form::LastAxis => row_ptr[k] = Some(base[k]),
            Form::PerRow => {
                let a = b.ins().iadd(base[k], r_bytes);
                let s = b.ins().load(F32, pinned_flags(), a, 0);
                leaf[k] = Some(b.ins().splat(F32X4, s));
            }
            Form::Scalar => {}
        }
    }
    emit(b, f, &lv, 1, &leaf, &mut regs, &math)?;
    let out_row = b.ins().iadd(out, off_bytes);

    // Hoisted registers the column loops read go through a stack buffer: Cranelift places pure
    // instructions at their uses (it would recompute `sqrt(mean + eps)` for every vector), and
    // loads in the category of the output stores are neither moved nor forwarded.
    let needed = hoisted_needed(f, &lv, result);
    let hoisted: Vec<usize> = (0..f.program.len())
        .filter(|&i| needed[i] && regs[i].is_some())
        .collect();
    let slot = b.create_sized_stack_slot(StackSlotData::new(
        StackSlotKind::ExplicitSlot,
        (16 * hoisted.len().max(1)) as u32,
        4,
    ));
    let spill = b.ins().stack_addr(ptr, slot, 0);
    for (n, &i) in hoisted.iter().enumerate() {
        if let Some(v) = regs[i] {
            b.ins().store(spill_flags(), v, spill, (16 * n) as i32);
        }
    }
    b.ins().jump(vec_head, &jump_args(&[zero]));
    let reload = |b: &mut FunctionBuilder| -> Vec<Option<Value>> {
        let mut r = vec![None; f.program.len()];
        let addr = b.ins().stack_addr(ptr, slot, 0);
        for (n, &i) in hoisted.iter().enumerate() {
            r[i] = Some(b.ins().load(F32X4, spill_flags(), addr, (16 * n) as i32));
        }
        r
    };

    // vec_head(j): j + 4 <= row_len ?
    b.switch_to_block(vec_head);
    let j = b.block_params(vec_head)[0];
    let j4 = b.ins().iadd_imm_s(j, 4);
    let fits = b.ins().icmp(IntCC::UnsignedLessThanOrEqual, j4, row_len);
    b.ins().brif(
        fits,
        vec_body,
        &jump_args(&[j]),
        tail_head,
        &jump_args(&[j]),
    );

    // vec_body(j): four elements.
    b.switch_to_block(vec_body);
    let j = b.block_params(vec_body)[0];
    let hregs = reload(b);
    let jb = b.ins().ishl_imm_u(j, 2);
    let v = element_result(b, f, &lv, &row_ptr, &hregs, jb, false, &math)?;
    let a = b.ins().iadd(out_row, jb);
    b.ins().store(out_flags(), v, a, 0);
    let j4 = b.ins().iadd_imm_s(j, 4);
    b.ins().jump(vec_head, &jump_args(&[j4]));

    // tail_head(j): j < row_len ?
    b.switch_to_block(tail_head);
    let j = b.block_params(tail_head)[0];
    let more = b.ins().icmp(IntCC::UnsignedLessThan, j, row_len);
    b.ins().brif(
        more,
        tail_body,
        &jump_args(&[j]),
        row_next,
        &jump_args(&[r]),
    );

    // tail_body(j): one element, computed in lane 0 of the same vector code.
    b.switch_to_block(tail_body);
    let j = b.block_params(tail_body)[0];
    let hregs = reload(b);
    let jb = b.ins().ishl_imm_u(j, 2);
    let v = element_result(b, f, &lv, &row_ptr, &hregs, jb, true, &math)?;
    let s = b.ins().extractlane(v, 0);
    let a = b.ins().iadd(out_row, jb);
    b.ins().store(out_flags(), s, a, 0);
    let j1 = b.ins().iadd_imm_s(j, 1);
    b.ins().jump(tail_head, &jump_args(&[j1]));

    // row_next(r): r + 1.
    b.switch_to_block(row_next);
    let r = b.block_params(row_next)[0];
    let r1 = b.ins().iadd_imm_s(r, 1);
    b.ins().jump(row_head, &jump_args(&[r1]));

    b.switch_to_block(exit);
    b.ins().return_(&[]);
    Ok(())
}

/// Which hoisted registers (levels 0 and 1) the column loops read: operands of per-element
/// instructions, and the result itself when it does not vary per element.
fn hoisted_needed(f: &FusedElementwise, lv: &[u8], result: usize) -> Vec<bool> {
    let mut need = vec![false; f.program.len()];
    for (i, ins) in f.program.iter().enumerate() {
        if lv[i] == 2 {
            for r in ins.operands() {
                if let Some(n) = need.get_mut(r as usize) {
                    *n = lv[r as usize] < 2;
                }
            }
        }
    }
    if lv[result] < 2 {
        need[result] = true;
    }
    need
}

/// The per-element registers at column offset `jb` (bytes), on top of the hoisted ones; returns
/// the result register.
#[allow(clippy::too_many_arguments)]
fn element_result(
    b: &mut FunctionBuilder,
    f: &FusedElementwise,
    lv: &[u8],
    row_ptr: &[Option<Value>],
    hoisted: &[Option<Value>],
    jb: Value,
    single: bool,
    math: &Math,
) -> Result<Value, JitError> {
    let leaf = operand_values(b, f, row_ptr, jb, single);
    let mut regs = hoisted.to_vec();
    emit(b, f, lv, 2, &leaf, &mut regs, math)?;
    regs.last()
        .copied()
        .flatten()
        .ok_or(JitError::Program(FusedError::Empty))
}

/// The f32x4 value of every full or last-axis operand at column offset `jb` (bytes): four
/// elements, or one splatted when `single`. Other operands are `None` (they are hoisted).
fn operand_values(
    b: &mut FunctionBuilder,
    f: &FusedElementwise,
    row_ptr: &[Option<Value>],
    jb: Value,
    single: bool,
) -> Vec<Option<Value>> {
    // Only operands the program reads are loaded.
    let mut used = vec![false; f.forms.len()];
    for ins in &f.program {
        if let Instr::Input(k) = ins {
            if let Some(u) = used.get_mut(*k as usize) {
                *u = true;
            }
        }
    }
    (0..f.forms.len())
        .map(|k| {
            let p = row_ptr[k].filter(|_| used[k])?;
            let a = b.ins().iadd(p, jb);
            Some(if single {
                let s = b.ins().load(F32, load_flags(), a, 0);
                b.ins().splat(F32X4, s)
            } else {
                b.ins().load(F32X4, load_flags(), a, 0)
            })
        })
        .collect()
}

/// Emits, on f32x4 values, the instructions of level `level` (see [`levels`]); registers of
/// lower levels are already in `regs`.
fn emit(
    b: &mut FunctionBuilder,
    f: &FusedElementwise,
    lv: &[u8],
    level: u8,
    leaves: &[Option<Value>],
    regs: &mut [Option<Value>],
    m: &Math,
) -> Result<(), JitError> {
    for (i, ins) in f.program.iter().enumerate() {
        let reg = |regs: &[Option<Value>], r: u32| -> Result<Value, JitError> {
            regs.get(r as usize).copied().flatten().ok_or_else(|| {
                JitError::Program(FusedError::UndefinedRegister {
                    index: i,
                    instr: ins.to_string(),
                    reg: r,
                })
            })
        };
        if lv[i] != level {
            continue;
        }
        let v = match *ins {
            Instr::Input(k) => {
                leaves
                    .get(k as usize)
                    .copied()
                    .flatten()
                    .ok_or(JitError::Program(FusedError::OperandIndex {
                        index: i,
                        operand: k,
                        forms: f.forms.len(),
                    }))?
            }
            Instr::Const(c) => m.splat(b, c),
            Instr::Unary(u, r) => {
                let x = reg(regs, r)?;
                match u {
                    Unary::Neg => b.ins().fneg(x),
                    Unary::Abs => b.ins().fabs(x),
                    Unary::Sqrt => b.ins().sqrt(x),
                    Unary::Reciprocal => {
                        let one = m.splat(b, 1.0);
                        b.ins().fdiv(one, x)
                    }
                    Unary::Exp => m.exp(b, x),
                    Unary::Log => m.log(b, x),
                    Unary::Tanh => m.tanh(b, x),
                    Unary::Sigmoid => m.sigmoid(b, x),
                    Unary::Relu => m.relu(b, x),
                    Unary::Erf => m.erf(b, x),
                    u => {
                        return Err(JitError::Program(FusedError::NotFusible {
                            index: i,
                            op: u.name(),
                        }))
                    }
                }
            }
            Instr::Binary(op, x, y) => {
                let (x, y) = (reg(regs, x)?, reg(regs, y)?);
                match op {
                    Binary::Add => b.ins().fadd(x, y),
                    Binary::Sub => b.ins().fsub(x, y),
                    Binary::Mul => b.ins().fmul(x, y),
                    Binary::Div => b.ins().fdiv(x, y),
                    Binary::Max => b.ins().fmax(x, y),
                    Binary::Min => b.ins().fmin(x, y),
                }
            }
            Instr::Powi(r, n) => {
                let x = reg(regs, r)?;
                m.powi(b, x, n)
            }
            Instr::Powf(r, e) => {
                let x = reg(regs, r)?;
                m.powf(b, x, e)?
            }
        };
        regs[i] = Some(v);
    }
    Ok(())
}
