//! Running a plan: feed checks, the step loop, liveness-based freeing and buffer reuse, and taps.

use crate::cpu::error::{KernelError, RuntimeError};
use crate::cpu::kernel::{ExecCx, Inputs};
use crate::cpu::plan::Plan;
use crate::cpu::pool::BufferPool;
use crate::cpu::tensor::HostTensor;
use ortho_ir::{DType, Dim, ValueId};
use std::collections::HashMap;
use std::time::{Duration, Instant};

enum Val<'a> {
    Empty,
    Ref(&'a HostTensor),
    Owned(HostTensor),
}

/// Time spent per op type in one run (see [`Plan::run_profiled`]).
#[derive(Debug, Default, Clone)]
pub struct Profile {
    /// (op type, total time, calls), slowest first.
    pub ops: Vec<(String, Duration, usize)>,
    pub total: Duration,
}

impl Plan {
    /// Runs the graph on `feeds` (name, tensor) and returns the graph outputs in order.
    pub fn run(
        &self,
        feeds: &[(&str, HostTensor)],
    ) -> Result<Vec<(String, HostTensor)>, RuntimeError> {
        self.execute(feeds, &[], &mut |_, _| {}, None)
    }

    /// Like [`Plan::run`], and calls `observe_fn(v, tensor)` for every value in `observe` as soon
    /// as it is computed (graph inputs and constants first), so a caller can stream statistics
    /// (calibration) without the plan keeping every activation alive. The tensor is only
    /// borrowed: copy what must be kept.
    pub fn run_with(
        &self,
        feeds: &[(&str, HostTensor)],
        observe: &[ValueId],
        observe_fn: &mut dyn FnMut(ValueId, &HostTensor),
    ) -> Result<Vec<(String, HostTensor)>, RuntimeError> {
        for v in observe {
            if !self.slot_of.contains_key(v) {
                return Err(RuntimeError::Graph(format!(
                    "observed value {v:?} is not a value of the main graph"
                )));
            }
        }
        self.execute(feeds, observe, observe_fn, None)
    }

    /// Runs once and reports where the time went, per op type.
    pub fn run_profiled(
        &self,
        feeds: &[(&str, HostTensor)],
    ) -> Result<(Vec<(String, HostTensor)>, Profile), RuntimeError> {
        let mut prof: HashMap<String, (Duration, usize)> = HashMap::new();
        let t0 = Instant::now();
        let out = self.execute(feeds, &[], &mut |_, _| {}, Some(&mut prof))?;
        let mut ops: Vec<(String, Duration, usize)> =
            prof.into_iter().map(|(k, (d, n))| (k, d, n)).collect();
        ops.sort_by(|a, b| b.1.cmp(&a.1));
        Ok((
            out,
            Profile {
                ops,
                total: t0.elapsed(),
            },
        ))
    }

    fn check_feeds<'f>(
        &'f self,
        feeds: &'f [(&str, HostTensor)],
    ) -> Result<Vec<(usize, &'f HostTensor)>, RuntimeError> {
        let expected = || {
            self.inputs
                .iter()
                .map(|i| {
                    format!(
                        "{} {}{}",
                        i.name,
                        i.dtype,
                        i.dims.as_ref().map(|d| dims_text(d)).unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut by_name: HashMap<&str, &HostTensor> = HashMap::new();
        for (name, t) in feeds {
            if !self.inputs.iter().any(|i| i.name == *name) {
                return Err(RuntimeError::UnknownInput {
                    name: name.to_string(),
                    expected: expected(),
                });
            }
            if by_name.insert(name, t).is_some() {
                return Err(RuntimeError::Graph(format!("input '{name}' is fed twice")));
            }
        }
        let mut syms: HashMap<&str, (usize, &str)> = HashMap::new();
        let mut out = Vec::with_capacity(self.inputs.len());
        for spec in &self.inputs {
            let t = match (by_name.get(spec.name.as_str()), &spec.default) {
                (Some(t), _) => *t,
                (None, Some(d)) => d,
                (None, None) => {
                    return Err(RuntimeError::MissingInput {
                        name: spec.name.clone(),
                        expected: expected(),
                    })
                }
            };
            if spec.dtype != DType::Undefined && t.dtype() != spec.dtype {
                return Err(RuntimeError::InputDType {
                    name: spec.name.clone(),
                    expected: spec.dtype.to_string(),
                    got: t.dtype().to_string(),
                });
            }
            if let Some(dims) = &spec.dims {
                let bad = || RuntimeError::InputShape {
                    name: spec.name.clone(),
                    expected: dims_text(dims),
                    got: format!("{:?}", t.shape()),
                };
                if dims.len() != t.rank() {
                    return Err(bad());
                }
                for (d, &n) in dims.iter().zip(t.shape()) {
                    match d {
                        Dim::Fixed(f) if *f >= 0 && *f as usize != n => return Err(bad()),
                        Dim::Sym(s) => match syms.get(s.as_str()) {
                            Some((m, other)) if *m != n => {
                                return Err(RuntimeError::InputShape {
                                    name: spec.name.clone(),
                                    expected: format!(
                                        "{} with \"{s}\" = {m} as in input '{other}'",
                                        dims_text(dims)
                                    ),
                                    got: format!("{:?}", t.shape()),
                                })
                            }
                            Some(_) => {}
                            None => {
                                syms.insert(s, (n, spec.name.as_str()));
                            }
                        },
                        _ => {}
                    }
                }
            }
            out.push((spec.slot, t));
        }
        Ok(out)
    }

    fn execute(
        &self,
        feeds: &[(&str, HostTensor)],
        observe: &[ValueId],
        observe_fn: &mut dyn FnMut(ValueId, &HostTensor),
        mut profile: Option<&mut HashMap<String, (Duration, usize)>>,
    ) -> Result<Vec<(String, HostTensor)>, RuntimeError> {
        let fed = self.check_feeds(feeds)?;
        let mut observed = vec![false; self.nslots];
        for v in observe {
            if let Some(&s) = self.slot_of.get(v) {
                observed[s] = true;
            }
        }
        let mut vals: Vec<Val<'_>> = (0..self.nslots).map(|_| Val::Empty).collect();
        for (s, c) in self.consts.iter().enumerate() {
            if let Some(c) = c {
                vals[s] = Val::Ref(c);
            }
        }
        for (s, t) in fed {
            vals[s] = Val::Ref(t);
        }
        for (s, v) in vals.iter().enumerate() {
            if let (true, Val::Ref(t), Some(id)) = (observed[s], v, self.value_of_slot[s]) {
                observe_fn(id, t);
            }
        }
        // The pool is shared between runs; a concurrent run gets a fresh one.
        let mut pool = self
            .pool
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_else(|_| BufferPool::new());
        let result = self.steps_loop(&mut vals, &mut pool, &observed, observe_fn, &mut profile);
        let outputs = result.and_then(|()| {
            let mut outs = Vec::with_capacity(self.outputs.len());
            for (name, s) in &self.outputs {
                let t = match std::mem::replace(&mut vals[*s], Val::Empty) {
                    Val::Owned(t) => t,
                    Val::Ref(t) => t.clone(),
                    Val::Empty => {
                        return Err(RuntimeError::Graph(format!(
                            "output '{name}' was not computed"
                        )))
                    }
                };
                outs.push((name.clone(), t));
            }
            Ok(outs)
        });
        for v in vals {
            if let Val::Owned(t) = v {
                pool.recycle(t.into_parts().1);
            }
        }
        if let Ok(mut p) = self.pool.lock() {
            *p = pool;
        }
        outputs
    }

    fn steps_loop<'a>(
        &'a self,
        vals: &mut [Val<'a>],
        pool: &mut BufferPool,
        observed: &[bool],
        observe_fn: &mut dyn FnMut(ValueId, &HostTensor),
        profile: &mut Option<&mut HashMap<String, (Duration, usize)>>,
    ) -> Result<(), RuntimeError> {
        let missing = |step: &str, s: usize| {
            RuntimeError::Graph(format!("{step}: operand slot {s} has no value"))
        };
        for step in &self.steps {
            let t0 = profile.as_ref().map(|_| Instant::now());
            // Operands that die here are handed over by value; the others are borrowed.
            let mut owned: Vec<Option<HostTensor>> = Vec::with_capacity(step.inputs.len());
            for (i, s) in step.inputs.iter().enumerate() {
                let mut o = None;
                if let (Some(s), true) = (s, step.donate[i]) {
                    if matches!(vals[*s], Val::Owned(_)) {
                        if let Val::Owned(t) = std::mem::replace(&mut vals[*s], Val::Empty) {
                            o = Some(t);
                        }
                    }
                }
                owned.push(o);
            }
            let outs = {
                let mut ins = Inputs::with_capacity(step.inputs.len());
                for (s, o) in step.inputs.iter().zip(owned) {
                    match (s, o) {
                        (_, Some(t)) => ins.push_owned(t),
                        (None, None) => ins.push_ref(None),
                        (Some(s), None) => match &vals[*s] {
                            Val::Ref(t) => ins.push_ref(Some(t)),
                            Val::Owned(t) => ins.push_ref(Some(t)),
                            Val::Empty => return Err(missing(&step.desc, *s)),
                        },
                    }
                }
                let mut cx = ExecCx {
                    pool: &mut *pool,
                    threads: self.threads,
                };
                let r = step.kernel.run(&mut cx, &mut ins);
                let leftovers = ins.into_leftovers();
                for b in leftovers {
                    pool.recycle(b);
                }
                r.map_err(|error| RuntimeError::Kernel {
                    node: step.desc.clone(),
                    error,
                })?
            };
            let n_outs = outs.len();
            let mut outs = outs.into_iter();
            for (i, s) in step.outputs.iter().enumerate() {
                match (s, outs.next()) {
                    (Some(s), Some(t)) => {
                        if observed[*s] {
                            if let Some(id) = self.value_of_slot[*s] {
                                observe_fn(id, &t);
                            }
                        }
                        vals[*s] = Val::Owned(t);
                    }
                    (Some(_), None) => {
                        return Err(RuntimeError::Kernel {
                            node: step.desc.clone(),
                            error: KernelError::invalid(format!(
                                "result {i} is used but the kernel produced only {n_outs}"
                            )),
                        })
                    }
                    (None, Some(t)) => pool.recycle(t.into_parts().1),
                    (None, None) => {}
                }
            }
            for t in outs {
                pool.recycle(t.into_parts().1);
            }
            for &s in &step.free {
                if let Val::Owned(t) = std::mem::replace(&mut vals[s], Val::Empty) {
                    pool.recycle(t.into_parts().1);
                }
            }
            if let (Some(p), Some(t0)) = (profile.as_mut(), t0) {
                let e = p.entry(step.op.clone()).or_default();
                e.0 += t0.elapsed();
                e.1 += 1;
            }
        }
        Ok(())
    }
}

fn dims_text(d: &[Dim]) -> String {
    let parts: Vec<String> = d
        .iter()
        .map(|x| match x {
            Dim::Fixed(n) => n.to_string(),
            Dim::Sym(s) => s.clone(),
            Dim::Unknown => "?".into(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}
