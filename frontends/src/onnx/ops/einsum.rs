//! `Einsum`, decomposed into IR ops: repeated labels of one operand become
//! a diagonal (transpose, reshape, gather), labels only one operand has and
//! the output lacks are summed out, and operands are folded left to right,
//! each pair as one batched matmul of `[batch, free, contracted]` views.
//! The result is transposed to the output's label order.

use std::collections::BTreeMap;

use optc_ir::ops::{Gather, MatMul, Reduce, ReduceKind as K};
use optc_ir::{DType, Dim, Op, Tensor};

use super::super::import::{Cx, NodeCx, NodeError, Val};
use super::shape::{expand_to, product, transpose_to};
use super::{Handler, R};

pub(crate) static OPS: &[(&str, Handler)] = &[("Einsum", einsum)];

/// Labels of ellipsis dims are `ELLIPSIS + position` (letters are their
/// ASCII codes), so they never clash with a letter.
const ELLIPSIS: u32 = 1000;

/// The largest extent a diagonal is taken over (its index list is built
/// at import time).
const DIAG_LIMIT: i64 = 1 << 24;

/// One operand term as written: its letters, and where `...` stood.
struct Term {
    letters: Vec<u32>,
    ellipsis_at: Option<usize>,
}

/// Parses one comma-separated term (`ij`, `...ii`, `b...`).
fn parse_term(s: &str) -> Result<Term, NodeError> {
    let mut letters = Vec::new();
    let mut ellipsis_at = None;
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("...") {
            if ellipsis_at.is_some() {
                return Err(format!("term '{s}' has two ellipses").into());
            }
            ellipsis_at = Some(letters.len());
            rest = r;
            continue;
        }
        let c = rest.chars().next().unwrap_or(' ');
        if !c.is_ascii_alphabetic() {
            return Err(format!("term '{s}' has '{c}', which is not a letter or '...'").into());
        }
        letters.push(c as u32);
        rest = &rest[1..];
    }
    Ok(Term { letters, ellipsis_at })
}

/// The labels of a term once its ellipsis covers `e` dims of the
/// `total`-dim broadcast ellipsis (dims align at the right, as numpy's).
fn labels_of(t: &Term, e: usize, total: usize) -> Vec<u32> {
    let at = t.ellipsis_at.unwrap_or(t.letters.len());
    let mut v = t.letters[..at].to_vec();
    v.extend((total - e..total).map(|k| ELLIPSIS + k as u32));
    v.extend(&t.letters[at..]);
    v
}

/// A value with one label per axis.
struct Operand {
    v: Val,
    labels: Vec<u32>,
}

fn einsum(cx: &mut Cx, n: &NodeCx) -> R {
    let eq: String = n
        .opt_string("equation")?
        .ok_or("required attribute 'equation' is missing")?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let inputs = cx.inputs_from(n, 0)?;
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let terms: Vec<Term> = lhs.split(',').map(parse_term).collect::<Result<_, _>>()?;
    if terms.len() != inputs.len() {
        return Err(format!(
            "equation '{eq}' has {} operand terms but {} inputs were given",
            terms.len(),
            inputs.len()
        )
        .into());
    }
    // Ellipsis extents: each operand's, and the broadcast total.
    let mut ell = Vec::new();
    for (t, x) in terms.iter().zip(&inputs) {
        let r = x.rank();
        let e = match t.ellipsis_at {
            Some(_) if r >= t.letters.len() => r - t.letters.len(),
            None if r == t.letters.len() => 0,
            _ => {
                return Err(format!(
                    "term of {} labels does not fit an operand of rank {r}",
                    t.letters.len()
                )
                .into())
            }
        };
        ell.push(e);
    }
    let total = ell.iter().copied().max().unwrap_or(0);
    let mut ops: Vec<Operand> = terms
        .iter()
        .zip(inputs)
        .zip(&ell)
        .map(|((t, v), &e)| Operand {
            labels: labels_of(t, e, total),
            v,
        })
        .collect();
    let out: Vec<u32> = match rhs {
        Some(r) => {
            let t = parse_term(r)?;
            if t.ellipsis_at.is_none() && total > 0 {
                return Err("the output has no '...' but the operands have ellipsis dims".into());
            }
            labels_of(&t, total, total)
        }
        None => {
            // Implicit: ellipsis dims, then letters used once, sorted.
            let mut count: BTreeMap<u32, usize> = BTreeMap::new();
            for t in &terms {
                for &l in &t.letters {
                    *count.entry(l).or_default() += 1;
                }
            }
            let mut v: Vec<u32> = (0..total).map(|k| ELLIPSIS + k as u32).collect();
            v.extend(count.into_iter().filter(|&(_, c)| c == 1).map(|(l, _)| l));
            v
        }
    };
    for (i, l) in out.iter().enumerate() {
        if out[..i].contains(l) {
            return Err(format!("output label '{}' appears twice", label_name(*l)).into());
        }
        if !ops.iter().any(|o| o.labels.contains(l)) {
            return Err(format!("output label '{}' is in no operand", label_name(*l)).into());
        }
    }
    for o in &mut ops {
        diagonals(cx, o)?;
    }
    let sizes = label_sizes(&ops)?;
    // Sum out what no other operand and not the output has.
    for i in 0..ops.len() {
        let lonely: Vec<u32> = ops[i]
            .labels
            .iter()
            .copied()
            .filter(|l| {
                !out.contains(l)
                    && ops
                        .iter()
                        .enumerate()
                        .all(|(j, o)| j == i || !o.labels.contains(l))
            })
            .collect();
        sum_out(cx, &mut ops[i], &lonely)?;
    }
    let mut it = ops.into_iter();
    let mut acc = it.next().ok_or("Einsum needs at least one input")?;
    let rest: Vec<Operand> = it.collect();
    for (k, b) in rest.iter().enumerate() {
        let needed = |l: &u32| out.contains(l) || rest[k + 1..].iter().any(|o| o.labels.contains(l));
        acc = pair(cx, acc, b, &needed, &sizes)?;
    }
    let extra: Vec<u32> = acc.labels.iter().copied().filter(|l| !out.contains(l)).collect();
    sum_out(cx, &mut acc, &extra)?;
    let perm: Vec<i64> = out
        .iter()
        .map(|l| acc.labels.iter().position(|x| x == l).map(|p| p as i64))
        .collect::<Option<_>>()
        .ok_or("an output label was lost")?;
    Ok(vec![transpose_to(cx, &acc.v, perm)?])
}

fn label_name(l: u32) -> String {
    if l >= ELLIPSIS {
        format!("...[{}]", l - ELLIPSIS)
    } else {
        char::from_u32(l).map(String::from).unwrap_or_default()
    }
}

/// Replaces each label repeated within one operand by its diagonal.
fn diagonals(cx: &mut Cx, o: &mut Operand) -> Result<(), NodeError> {
    loop {
        let Some((p, q)) = (0..o.labels.len())
            .flat_map(|p| (p + 1..o.labels.len()).map(move |q| (p, q)))
            .find(|&(p, q)| o.labels[p] == o.labels[q])
        else {
            return Ok(());
        };
        let dims = o.v.dims().to_vec();
        if dims[p] != dims[q] {
            return Err(format!(
                "label '{}' has extents {} and {} in one operand",
                label_name(o.labels[p]),
                dims[p],
                dims[q]
            )
            .into());
        }
        let e = match dims[p].as_const() {
            Some(e) if (0..=DIAG_LIMIT).contains(&e) => e,
            _ => {
                return Err(NodeError::Unsupported(format!(
                    "an Einsum diagonal over the extent {} (optc needs a static one up to {DIAG_LIMIT})",
                    dims[p]
                )))
            }
        };
        let keep: Vec<usize> = (0..dims.len()).filter(|&i| i != p && i != q).collect();
        let mut perm: Vec<i64> = keep.iter().map(|&i| i as i64).collect();
        perm.extend([p as i64, q as i64]);
        let t = transpose_to(cx, &o.v, perm)?;
        let mut flat: Vec<Dim> = keep.iter().map(|&i| dims[i].clone()).collect();
        flat.push(Dim::constant(e * e));
        let t = cx.reshape(&t, flat)?;
        let idx: Vec<i64> = (0..e).map(|i| i * (e + 1)).collect();
        let idx = cx.konst(Tensor::from_i64(DType::I64, &[e as usize], &idx));
        let axis = keep.len() as i64;
        o.v = cx.op(Op::Gather(Gather { axis }), &[t, idx])?;
        let l = o.labels[p];
        o.labels = keep.iter().map(|&i| o.labels[i]).collect();
        o.labels.push(l);
    }
}

/// Each label's extent over all operands; an extent of 1 broadcasts.
fn label_sizes(ops: &[Operand]) -> Result<BTreeMap<u32, Dim>, NodeError> {
    let mut m: BTreeMap<u32, Dim> = BTreeMap::new();
    for o in ops {
        for (l, d) in o.labels.iter().zip(o.v.dims()) {
            match m.get(l) {
                None => {
                    m.insert(*l, d.clone());
                }
                Some(have) if have == d || d.is(1) => {}
                Some(have) if have.is(1) => {
                    m.insert(*l, d.clone());
                }
                Some(have) => {
                    return Err(format!(
                        "label '{}' has extents {have} and {d} in different operands",
                        label_name(*l)
                    )
                    .into())
                }
            }
        }
    }
    Ok(m)
}

/// Sums the listed labels out of an operand.
fn sum_out(cx: &mut Cx, o: &mut Operand, labels: &[u32]) -> Result<(), NodeError> {
    let axes: Vec<i64> = o
        .labels
        .iter()
        .enumerate()
        .filter(|(_, l)| labels.contains(l))
        .map(|(i, _)| i as i64)
        .collect();
    if axes.is_empty() {
        return Ok(());
    }
    o.v = cx.op(
        Op::Reduce(Reduce {
            kind: K::Sum,
            axes,
            keepdims: false,
        }),
        std::slice::from_ref(&o.v),
    )?;
    o.labels.retain(|l| !labels.contains(l));
    Ok(())
}

/// Brings an operand to the given label order, broadcasting extent-1 dims
/// of shared labels, and views it as `[groups...]` (each group flattened).
fn arrange(
    cx: &mut Cx,
    o: &Operand,
    order: &[&[u32]],
    sizes: &BTreeMap<u32, Dim>,
    keep_first: bool,
) -> Result<Val, NodeError> {
    let all: Vec<u32> = order.iter().flat_map(|g| g.iter().copied()).collect();
    let perm: Vec<i64> = all
        .iter()
        .map(|l| o.labels.iter().position(|x| x == l).map(|p| p as i64))
        .collect::<Option<_>>()
        .ok_or("a label was lost")?;
    let t = transpose_to(cx, &o.v, perm)?;
    let full: Vec<Dim> = all.iter().map(|l| sizes[l].clone()).collect();
    let t = expand_to(cx, &t, full)?;
    // The first group (batch) stays as separate dims; the rest flatten.
    let mut shape: Vec<Dim> = Vec::new();
    for (gi, g) in order.iter().enumerate() {
        let d: Vec<Dim> = g.iter().map(|l| sizes[l].clone()).collect();
        if gi == 0 && keep_first {
            shape.extend(d);
        } else {
            shape.push(product(&d)?);
        }
    }
    cx.reshape(&t, shape)
}

/// Multiplies two operands, contracting the shared labels `needed` rejects
/// and keeping the shared ones it accepts as batch dims.
fn pair(
    cx: &mut Cx,
    mut a: Operand,
    b: &Operand,
    needed: &dyn Fn(&u32) -> bool,
    sizes: &BTreeMap<u32, Dim>,
) -> Result<Operand, NodeError> {
    let mut b = Operand {
        v: b.v.clone(),
        labels: b.labels.clone(),
    };
    // Labels only one side has and nothing later needs: sum them first.
    let a_only: Vec<u32> = a
        .labels
        .iter()
        .copied()
        .filter(|l| !b.labels.contains(l) && !needed(l))
        .collect();
    sum_out(cx, &mut a, &a_only)?;
    let b_only: Vec<u32> = b
        .labels
        .iter()
        .copied()
        .filter(|l| !a.labels.contains(l) && !needed(l))
        .collect();
    sum_out(cx, &mut b, &b_only)?;
    let shared = |l: &u32| a.labels.contains(l) && b.labels.contains(l);
    let batch: Vec<u32> = a
        .labels
        .iter()
        .copied()
        .filter(|l| shared(l) && needed(l))
        .collect();
    let contr: Vec<u32> = a
        .labels
        .iter()
        .copied()
        .filter(|l| shared(l) && !needed(l))
        .collect();
    let a_free: Vec<u32> = a.labels.iter().copied().filter(|l| !shared(l)).collect();
    let b_free: Vec<u32> = b.labels.iter().copied().filter(|l| !shared(l)).collect();
    let av = arrange(cx, &a, &[&batch, &a_free, &contr], sizes, true)?;
    let bv = arrange(cx, &b, &[&batch, &contr, &b_free], sizes, true)?;
    let y = cx.op(Op::MatMul(MatMul), &[av, bv])?;
    let mut labels = batch.clone();
    labels.extend(&a_free);
    labels.extend(&b_free);
    let dims: Vec<Dim> = labels.iter().map(|l| sizes[l].clone()).collect();
    let v = cx.reshape(&y, dims)?;
    Ok(Operand { v, labels })
}
