//! Convolution and pooling: `Conv`, `MaxPool`, `AveragePool`, `LpPool` as
//! the IR `conv` / `*_pool` ops (explicit padding; `auto_pad` is resolved
//! here from the static input extents), and the global pools as reductions.

use optc_ir::ops::{Conv, Pool, PoolKind, Reduce, ReduceKind, Window};
use optc_ir::Op;

use super::super::import::{unsupported, Cx, NodeCx, NodeError, Val};
use super::{Handler, R};

pub(crate) static OPS: &[(&str, Handler)] = &[
    ("Conv", conv),
    ("MaxPool", |cx, n| pool(cx, n, "MaxPool")),
    ("AveragePool", |cx, n| pool(cx, n, "AveragePool")),
    ("LpPool", |cx, n| pool(cx, n, "LpPool")),
    ("GlobalAveragePool", |cx, n| global(cx, n, ReduceKind::Mean)),
    ("GlobalMaxPool", |cx, n| global(cx, n, ReduceKind::Max)),
];

/// The largest kernel extent, stride or dilation a window may have.
const WINDOW_LIMIT: i64 = 1 << 24;

/// Reads kernel, strides, dilations and pads (resolving `auto_pad`).
fn window(n: &NodeCx, x: &Val, kernel: Vec<i64>) -> Result<Window, NodeError> {
    let k = kernel.len();
    if x.rank() != k + 2 {
        return Err(format!("input {} does not fit a {k}-d kernel", x.ty).into());
    }
    let strides = n.opt_ints("strides")?.unwrap_or_else(|| vec![1; k]);
    let dilations = n.opt_ints("dilations")?.unwrap_or_else(|| vec![1; k]);
    // Bounded, so the window arithmetic below cannot overflow.
    let fits = |v: &[i64]| v.iter().all(|&e| (1..=WINDOW_LIMIT).contains(&e));
    if !fits(&strides) || !fits(&dilations) || !fits(&kernel) {
        return Err(NodeError::Invalid(format!(
            "kernel {kernel:?}, strides {strides:?} and dilations {dilations:?} must lie in 1..={WINDOW_LIMIT}"
        )));
    }
    let auto = n.string("auto_pad", "NOTSET")?;
    let pads = match auto.as_str() {
        "NOTSET" => n.opt_ints("pads")?.unwrap_or_else(|| vec![0; 2 * k]),
        "VALID" => vec![0; 2 * k],
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut p = vec![0; 2 * k];
            for i in 0..k {
                let d = x.dims()[i + 2]
                    .as_const()
                    .ok_or_else(|| NodeError::Unsupported("auto_pad on a symbolic extent".into()))?;
                let s = strides.get(i).copied().unwrap_or(1).max(1);
                let out = (d + s - 1) / s;
                let span = dilations.get(i).copied().unwrap_or(1) * (kernel[i] - 1) + 1;
                let total = ((out - 1) * s + span - d).max(0);
                let (lo, hi) = if auto == "SAME_UPPER" {
                    (total / 2, total - total / 2)
                } else {
                    (total - total / 2, total / 2)
                };
                p[i] = lo;
                p[k + i] = hi;
            }
            p
        }
        a => return Err(format!("auto_pad {a:?} is not defined").into()),
    };
    Ok(Window {
        kernel,
        strides,
        dilations,
        pads,
    })
}

/// A convolution's window (the kernel from `kernel_shape`, else W's spatial
/// extents) and group: shared by Conv and the integer convolutions.
pub(crate) fn conv_window(n: &NodeCx, x: &Val, w: &Val) -> Result<(Window, i64), NodeError> {
    let kernel = match n.opt_ints("kernel_shape")? {
        Some(k) => k,
        None => w
            .dims()
            .get(2..)
            .unwrap_or_default()
            .iter()
            .map(|d| {
                d.as_const()
                    .ok_or_else(|| NodeError::Invalid("kernel extents must be constant".into()))
            })
            .collect::<Result<_, _>>()?,
    };
    Ok((window(n, x, kernel)?, n.int("group", 1)?))
}

fn conv(cx: &mut Cx, n: &NodeCx) -> R {
    let (x, w) = (cx.input(n, 0)?, cx.input(n, 1)?);
    let (window, group) = conv_window(n, &x, &w)?;
    let mut args = vec![x, w];
    args.extend(cx.opt_input(n, 2)?);
    Ok(vec![cx.op(Op::Conv(Conv { window, group }), &args)?])
}

fn pool(cx: &mut Cx, n: &NodeCx, op: &str) -> R {
    let x = cx.input(n, 0)?;
    let kernel = n.opt_ints("kernel_shape")?.ok_or("kernel_shape is required")?;
    let window = window(n, &x, kernel)?;
    let ceil_mode = n.int("ceil_mode", 0)? != 0;
    let kind = match op {
        "MaxPool" => {
            if n.int("storage_order", 0)? != 0 {
                return unsupported("MaxPool storage_order=1 is not supported");
            }
            if n.node.output.get(1).is_some_and(|o| !o.is_empty()) {
                return unsupported("MaxPool's Indices output is not supported");
            }
            PoolKind::Max
        }
        "AveragePool" => PoolKind::Avg {
            count_include_pad: n.int("count_include_pad", 0)? != 0,
        },
        _ => PoolKind::Lp {
            p: n.int("p", 2)? as f64,
        },
    };
    Ok(vec![cx.op(
        Op::Pool(Pool {
            kind,
            window,
            ceil_mode,
        }),
        &[x],
    )?])
}

fn global(cx: &mut Cx, n: &NodeCx, kind: ReduceKind) -> R {
    let x = cx.input(n, 0)?;
    let axes: Vec<i64> = (2..x.rank() as i64).collect();
    Ok(vec![cx.op(
        Op::Reduce(Reduce {
            kind,
            axes,
            keepdims: true,
        }),
        &[x],
    )?])
}
