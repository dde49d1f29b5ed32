//! Property: the default pipeline never changes what a graph computes. Random
//! graphs mix the things the cleanup passes rewrite (duplicates, no-op casts
//! and reshapes, transpose pairs, multiplications by one, foldable
//! constants, dead code) with things they must leave alone.

use std::collections::BTreeMap;

use optc_ir::ops::{Arange, BinaryKind, Cast, Constant, Op, Slice, Softmax, UnaryKind};
use optc_ir::{parse_type, run, DType, Dim, GraphBuilder, Tensor, Value, WeightStore};
use optc_passes::check::max_abs_error;
use optc_passes::{PassManager, PassRegistry, Pipeline};
use proptest::prelude::*;

fn build(steps: &[(u8, usize, usize)]) -> optc_ir::Graph {
    let mut b = GraphBuilder::new("p");
    let x = b.input("x", parse_type("f32[2, 3, 4]").unwrap());
    let mut pool: Vec<Value> = vec![x];
    let c = |b: &mut GraphBuilder, v: f32| {
        b.op1(
            Op::Constant(Constant {
                value: Tensor::from_f32(DType::F32, &[], &[v]),
            }),
            &[],
        )
        .unwrap()
    };
    for &(kind, i, j) in steps {
        let a = pool[i % pool.len()];
        let o = pool[j % pool.len()];
        let v = match kind % 12 {
            0 => b.unary(UnaryKind::Tanh, a),
            1 => b.unary(UnaryKind::Neg, a),
            2 => {
                let one = c(&mut b, 1.0);
                b.mul(a, one)
            }
            3 => {
                let two = c(&mut b, 2.0);
                b.mul(two, a)
            }
            4 => b.add(a, o),
            5 => b.op1(Op::Cast(Cast { to: DType::F32 }), &[a]),
            6 => b
                .reshape(a, vec![Dim::constant(6), Dim::constant(4)])
                .and_then(|r| b.reshape(r, vec![Dim::constant(2), Dim::constant(3), Dim::constant(4)])),
            7 => b
                .transpose(a, vec![2, 0, 1])
                .and_then(|t| b.transpose(t, vec![1, 2, 0])),
            8 => b.op1(Op::Softmax(Softmax { axis: -1, log: false }), &[a]),
            9 => {
                // A foldable constant chain broadcast into the value.
                let r = b
                    .op1(
                        Op::Arange(Arange {
                            start: Dim::constant(0),
                            end: Dim::constant(4),
                            step: 1,
                            dtype: DType::I64,
                        }),
                        &[],
                    )
                    .unwrap();
                let f = b.cast(r, DType::F32).unwrap();
                let s = b.unary(UnaryKind::Sin, f).unwrap();
                b.add(a, s)
            }
            10 => b.op1(
                Op::Slice(Slice {
                    axis: 2,
                    start: -1,
                    end: None,
                    step: -1,
                }),
                &[a],
            ),
            _ => b.binary(BinaryKind::Sub, a, o),
        };
        if let Ok(v) = v {
            pool.push(v);
        }
    }
    let last = *pool.last().unwrap();
    b.output("y", last);
    b.output("z", pool[pool.len() / 2]);
    b.finish().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn default_pipeline_keeps_results(steps in prop::collection::vec((any::<u8>(), any::<usize>(), any::<usize>()), 1..30)) {
        let before = build(&steps);
        let mut g = before.clone();
        let mut w = WeightStore::new();
        let pm = PassManager::new(&PassRegistry::builtin(), &Pipeline::default_pipeline()).unwrap();
        pm.run(&mut g, &mut w).unwrap();
        let x: Vec<f32> = (0..24).map(|i| (i as f32 * 0.37).sin()).collect();
        let inputs = BTreeMap::from([("x".to_string(), Tensor::from_f32(DType::F32, &[2, 3, 4], &x))]);
        let a = run(&before, &inputs, &w).unwrap();
        let b = run(&g, &inputs, &w).unwrap();
        prop_assert_eq!(max_abs_error(&a, &b), 0.0);
        prop_assert!(g.node_count() <= before.node_count());
        // Nothing the rules remove survives.
        let counts = g.op_counts();
        prop_assert_eq!(counts.get("cast"), None);
        prop_assert_eq!(counts.get("reshape"), None);
        prop_assert_eq!(counts.get("transpose"), None);
        prop_assert_eq!(counts.get("arange"), None);
    }
}
