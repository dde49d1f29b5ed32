//! `parse(print(g)) == g` over random well-typed graphs, and printing is a
//! fixpoint. Graphs are grown op by op from a pool of values: each step picks
//! an op family, operands and parameters; ops the type rules reject are
//! skipped, so every graph that comes out is well typed by construction.

use optc_ir::ops::{
    Arange, ArgMax, BinaryKind, BitCast, Cast, CompareKind, Concat, Constant, Embedding, Expand, Full,
    Gather, Gelu, GeluApprox, IndexSelect, LayerNorm, Linear, MatMul, Op, Reduce, ReduceKind, Reshape,
    RmsNorm, Rope, Scalar, ScaledDotProductAttention, Slice, Softmax, Split, Squeeze, Transpose, Triangular,
    UnaryKind, Unsqueeze, Where,
};
use optc_ir::{parse, parse_type, print, verify, DType, Dim, GraphBuilder, Tensor, Value};
use proptest::prelude::*;

/// One growth step: op family, two operand picks, two parameters.
type Step = (u8, usize, usize, i8, i8);

fn pick(pool: &[Value], i: usize) -> Value {
    pool[i % pool.len()]
}

fn make_op(b: &GraphBuilder, pool: &[Value], step_inputs: &[Value], s: Step) -> Option<(Op, Vec<Value>)> {
    let (fam, i, j, p, q) = s;
    let x = pick(pool, i);
    let y = pick(pool, j);
    let rank = b.ty(x).rank() as i64;
    let axis = if rank > 0 {
        -1 - (p.unsigned_abs() as i64 % rank)
    } else {
        0
    };
    let op = match fam % 30 {
        0 => Op::Unary(UnaryKind::ALL[p.unsigned_abs() as usize % UnaryKind::ALL.len()]),
        1 => Op::Gelu(Gelu {
            approximate: if p > 0 { GeluApprox::Tanh } else { GeluApprox::None },
        }),
        2 => {
            let kind = BinaryKind::ALL[p.unsigned_abs() as usize % BinaryKind::ALL.len()];
            if kind.is_bitwise() {
                // Bitwise ops want integer operands; the pool always has `ids`.
                let ints: Vec<Value> = pool.iter().copied().filter(|v| b.ty(*v).dtype.is_int()).collect();
                return Some((Op::Binary(kind), vec![pick(&ints, i), pick(&ints, j)]));
            }
            return Some((Op::Binary(kind), vec![x, y]));
        }
        3 => {
            return Some((
                Op::Compare(CompareKind::ALL[p.unsigned_abs() as usize % 6]),
                vec![x, y],
            ))
        }
        4 => {
            // The condition is the latest bool value, if any.
            let cond = *pool.iter().rev().find(|v| b.ty(**v).dtype == DType::Bool)?;
            return Some((Op::Where(Where), vec![cond, x, y]));
        }
        5 if q % 3 == 0 => {
            // bitcast to a dtype of the same width (there is always one: itself).
            let bits = b.ty(x).dtype.bits();
            let same: Vec<DType> = DType::ALL.iter().copied().filter(|d| d.bits() == bits).collect();
            Op::BitCast(BitCast {
                to: same[p.unsigned_abs() as usize % same.len()],
            })
        }
        5 => Op::Cast(Cast {
            to: DType::ALL[p.unsigned_abs() as usize % DType::ALL.len()],
        }),
        6 => Op::Reduce(Reduce {
            kind: ReduceKind::ALL[q.unsigned_abs() as usize % ReduceKind::ALL.len()],
            axes: if p % 3 == 0 { vec![] } else { vec![axis] },
            keepdims: q > 0,
        }),
        7 if q % 3 == 0 => Op::CumSum(optc_ir::ops::CumSum { axis }),
        7 if q % 3 == 1 && p % 2 == 0 => Op::CumProd(optc_ir::ops::CumProd { axis }),
        7 if q % 3 == 1 => {
            let op = Op::TopK(optc_ir::ops::TopK {
                axis,
                k: 1,
                largest: q > 0,
                sorted: p > 0,
            });
            return Some((op, vec![x]));
        }
        7 => Op::ArgMax(ArgMax {
            axis,
            keepdims: q > 0,
        }),
        8 => Op::Softmax(Softmax { axis, log: q > 0 }),
        9 => return Some((Op::MatMul(MatMul), vec![x, y])),
        10 => return Some((Op::Linear(Linear), vec![x, y])),
        11 => {
            // Flatten the last two dims (symbolic products included).
            let d = b.ty(x).shape.dims().to_vec();
            if d.len() < 2 {
                return None;
            }
            let mut out = d[..d.len() - 2].to_vec();
            out.push(&d[d.len() - 2] * &d[d.len() - 1]);
            Op::Reshape(Reshape { shape: out })
        }
        12 => Op::Transpose(Transpose {
            perm: (0..rank).rev().collect(),
        }),
        13 => Op::Unsqueeze(Unsqueeze {
            axes: vec![axis.min(0)],
        }),
        14 => Op::Squeeze(Squeeze { axes: vec![axis] }),
        15 => {
            let mut d = vec![Dim::constant(2)];
            d.extend(
                b.ty(x)
                    .shape
                    .dims()
                    .iter()
                    .map(|d| if d.is(1) { Dim::sym("S") } else { d.clone() }),
            );
            Op::Expand(Expand { shape: d })
        }
        16 => Op::Slice(Slice {
            axis,
            start: (p % 3) as i64,
            end: if q % 2 == 0 { None } else { Some(-1) },
            step: 1,
        }),
        17 => return Some((Op::Concat(Concat { axis }), vec![x, x, y])),
        18 => {
            let d = b.ty(x).shape.dims().last()?.clone();
            let half = d.as_const().filter(|n| n % 2 == 0)? / 2;
            Op::Split(Split {
                axis: -1,
                sizes: vec![half.into(), half.into()],
            })
        }
        19 if q % 4 == 1 => {
            // Element-wise indexing: `ids` indexes itself or a value of its shape.
            let ids = pool[2];
            let data = if b.ty(x).shape == b.ty(ids).shape { x } else { ids };
            let axis = -1 - (p.unsigned_abs() as i64 % 2);
            if p % 2 == 0 {
                return Some((
                    Op::GatherElements(optc_ir::ops::GatherElements { axis }),
                    vec![data, ids],
                ));
            }
            let reduction = optc_ir::ops::ScatterReduction::ALL[q.unsigned_abs() as usize % 5];
            let op = Op::ScatterElements(optc_ir::ops::ScatterElements { axis, reduction });
            return Some((op, vec![data, ids, data]));
        }
        19 => return Some((Op::Gather(Gather { axis }), vec![x, y])),
        20 => Op::Triangular(Triangular {
            upper: p > 0,
            k: q as i64,
        }),
        21 => {
            let op = Op::Arange(Arange {
                start: Dim::constant(p as i64 % 4),
                end: if q > 0 { Dim::sym("S") } else { Dim::constant(9) },
                step: 1,
                dtype: DType::I64,
            });
            return Some((op, vec![]));
        }
        22 => {
            return Some((
                Op::Full(Full {
                    shape: vec![Dim::sym("B"), Dim::constant(3)],
                    value: if p > 0 {
                        Scalar::Float(p as f64 / 7.0)
                    } else if q > 0 {
                        Scalar::Float(f64::NEG_INFINITY)
                    } else {
                        Scalar::Int(p as i64)
                    },
                    dtype: if p > 0 { DType::BF16 } else { DType::F32 },
                }),
                vec![],
            ))
        }
        23 => {
            let value = Tensor::from_f32(DType::F32, &[2], &[p as f32 / 3.0, f32::from(q) * 1e-7]);
            return Some((Op::Constant(Constant { value }), vec![]));
        }
        24 => return Some((Op::Embedding(Embedding), vec![x, y])),
        25 => {
            let eps = (p.unsigned_abs() as f64 + 1.0) * 1e-6;
            if q > 0 {
                Op::RmsNorm(RmsNorm { axis: -1, eps })
            } else {
                Op::LayerNorm(LayerNorm { axis: -1, eps })
            }
        }
        26 => return Some((Op::Rope(Rope { interleaved: p > 0 }), vec![x, y, y])),
        27 => return Some((Op::IndexSelect(IndexSelect { axis }), vec![x, y])),
        28 if q > 0 => return Some((Op::SwiGlu(optc_ir::ops::SwiGlu), vec![x, x])),
        28 => {
            let op = Op::AddRmsNorm(optc_ir::ops::AddRmsNorm { axis: -1, eps: 1e-6 });
            return Some((op, vec![x, x]));
        }
        29 if p % 2 == 0 => {
            // conv / pooling over the 1-d image input.
            let find = |t: &str| {
                let ty = parse_type(t).ok()?;
                step_inputs.iter().copied().find(|v| *b.ty(*v) == ty)
            };
            let img = find("f32[B, 3, 6]")?;
            let window = optc_ir::ops::Window {
                kernel: vec![2],
                strides: vec![1 + (q.unsigned_abs() as i64 % 2)],
                dilations: vec![1],
                pads: vec![(p.unsigned_abs() as i64) % 2, 1],
            };
            let op = match q.unsigned_abs() % 4 {
                0 => {
                    let w = find("f32[4, 3, 2]")?;
                    return Some((Op::Conv(optc_ir::ops::Conv { window, group: 1 }), vec![img, w]));
                }
                1 => optc_ir::ops::PoolKind::Max,
                2 => optc_ir::ops::PoolKind::Avg {
                    count_include_pad: p > 0,
                },
                _ => optc_ir::ops::PoolKind::Lp { p: 2.0 },
            };
            let pool = optc_ir::ops::Pool {
                kind: op,
                window,
                ceil_mode: q > 0,
            };
            return Some((Op::Pool(pool), vec![img]));
        }
        _ if q < -100 => {
            // paged_attention over a step graph's inputs.
            let find = |t: &str| {
                let ty = parse_type(t).ok()?;
                step_inputs.iter().copied().find(|v| *b.ty(*v) == ty)
            };
            let (tok, kv, cache) = ("f32[T, 4, 8]", "f32[T, 2, 8]", "f32[NB, 4, 2, 8]");
            let names = [
                tok,
                kv,
                kv,
                cache,
                cache,
                "i64[T]",
                "i64[Q+1]",
                "i64[Q]",
                "i64[Q, M]",
                "i64[T]",
            ];
            let args = names.iter().map(|t| find(t)).collect::<Option<Vec<_>>>()?;
            let op = Op::PagedAttention(optc_ir::ops::PagedAttention {
                scale: (p > 0).then_some(0.5),
                window: (q % 2 == 0).then_some(3),
            });
            return Some((op, args));
        }
        _ => {
            return Some((
                Op::Attention(ScaledDotProductAttention {
                    causal: p > 0,
                    scale: if q > 0 { Some(q as f64 / 11.0) } else { None },
                }),
                vec![x, y, y],
            ))
        }
    };
    Some((op, vec![x]))
}

fn build(steps: &[Step], locs: &[String]) -> optc_ir::Graph {
    let mut b = GraphBuilder::new("random");
    let mut pool = vec![
        b.input("x", parse_type("f32[B, S, 8]").unwrap()),
        b.input("odd name", parse_type("f32[S, 8]").unwrap()),
        b.input("ids", parse_type("i64[B, S]").unwrap()),
        b.input("m", parse_type("f32[2, 4]").unwrap()),
        b.weight("w", "model.w.weight", parse_type("f32[8, 8]").unwrap()),
        b.weight("emb", "embed \"quoted\"", parse_type("f32[16, 8]").unwrap()),
    ];
    // A step graph's operands, for paged_attention (kept out of the pool so
    // the other ops' operand picks are as before).
    let mut step_inputs = Vec::new();
    for (name, ty) in [
        ("pq", "f32[T, 4, 8]"),
        ("pk", "f32[T, 2, 8]"),
        ("pcache", "f32[NB, 4, 2, 8]"),
        ("positions", "i64[T]"),
        ("starts", "i64[Q+1]"),
        ("ctx", "i64[Q]"),
        ("tables", "i64[Q, M]"),
        ("img", "f32[B, 3, 6]"),
        ("cw", "f32[4, 3, 2]"),
    ] {
        step_inputs.push(b.input(name, parse_type(ty).unwrap()));
    }
    for (k, s) in steps.iter().enumerate() {
        let loc = locs.get(k % locs.len().max(1)).cloned().filter(|_| s.4 % 2 == 0);
        b.set_loc(loc.clone());
        if s.0 % 31 == 30 {
            // Weights declared between ops must not change the canonical order.
            let w = b.weight(
                format!("w{k}"),
                format!("layers.{k}.weight"),
                parse_type("f32[8]").unwrap(),
            );
            pool.push(w);
            continue;
        }
        if let Some((op, args)) = make_op(&b, &pool, &step_inputs, *s) {
            if let Ok(vals) = b.op(op, &args) {
                pool.extend(vals);
            }
        }
    }
    let n = pool.len();
    b.output("last", pool[n - 1]);
    b.output("first", pool[0]);
    if n > 7 {
        b.output("mid", pool[n / 2]);
    }
    b.finish().expect("builder-made graphs verify")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn print_parse_round_trip(
        steps in prop::collection::vec((any::<u8>(), any::<usize>(), any::<usize>(), any::<i8>(), any::<i8>()), 1..48),
        locs in prop::collection::vec("[ -~]{0,12}|\\PC{0,6}", 0..4),
    ) {
        let g = build(&steps, &locs);
        let text = print(&g);
        let back = parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        verify(&back).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert!(back == g, "round trip changed the graph:\n{}", text);
        prop_assert_eq!(print(&back), text);
    }
}

#[test]
fn the_generator_reaches_every_op() {
    // Guards the property test's coverage: a fixed sweep of steps must make
    // graphs that use every op family at least once.
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0u64..400 {
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let steps: Vec<Step> = (0..40)
            .map(|_| {
                (
                    next() as u8,
                    next() as usize,
                    next() as usize,
                    next() as i8,
                    next() as i8,
                )
            })
            .collect();
        let g = build(&steps, &["a".into()]);
        seen.extend(g.op_counts().into_keys());
    }
    let missing: Vec<&str> = Op::names().into_iter().filter(|n| !seen.contains(n)).collect();
    assert!(missing.is_empty(), "ops never generated: {missing:?}");
}
