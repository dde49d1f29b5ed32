//! The weight store: safetensors files are mapped and read back exactly,
//! views materialise only on demand and check their shapes up front, and bad
//! files or names give errors that name them.

use optc_ir::weights::{to_safetensors, write_safetensors};
use optc_ir::{DType, Tensor, View, WeightError, WeightStore};

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("optc-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn sample() -> Vec<(String, Tensor)> {
    vec![
        (
            "a".into(),
            Tensor::from_f32(DType::F32, &[2, 3], &[1., 2., 3., 4., 5., 6.]),
        ),
        (
            "b".into(),
            Tensor::from_f32(DType::BF16, &[2, 2], &[0.5, -1.5, 3.0, 1e-3]),
        ),
        (
            "ids".into(),
            Tensor::from_i64(DType::I64, &[3], &[-1, 0, 1 << 40]),
        ),
        ("h".into(), Tensor::from_f32(DType::F16, &[1], &[65504.0])),
    ]
}

#[test]
fn safetensors_round_trip_through_a_mapped_file() {
    let path = tmp("round.safetensors");
    write_safetensors(&path, &sample()).unwrap();
    let mut store = WeightStore::new();
    let names = store.open_safetensors(&path).unwrap();
    assert_eq!(names, vec!["a", "b", "h", "ids"]);
    for (name, t) in sample() {
        assert_eq!(store.get(&name).unwrap(), t, "{name}");
        assert_eq!(store.info(&name).unwrap(), (t.dtype(), t.shape().to_vec()));
    }
    // bf16 widens to f32 exactly.
    let b = store.get_f32("b").unwrap();
    assert_eq!(b.dtype(), DType::F32);
    assert_eq!(
        b.to_f32_vec(),
        vec![0.5, -1.5, 3.0, half::bf16::from_f32(1e-3).to_f32()]
    );
}

#[test]
fn views_slice_concat_and_cast_lazily() {
    let mut store = WeightStore::new();
    for (n, t) in sample() {
        store.insert(n, t).unwrap();
    }
    store
        .add_view(
            "a_rows1",
            View::Slice {
                source: "a".into(),
                axis: 0,
                start: 1,
                end: 2,
            },
        )
        .unwrap();
    store
        .add_view(
            "a_cols",
            View::Slice {
                source: "a".into(),
                axis: 1,
                start: 1,
                end: 3,
            },
        )
        .unwrap();
    store
        .add_view(
            "aa",
            View::Concat {
                sources: vec!["a".into(), "a_rows1".into()],
                axis: 0,
            },
        )
        .unwrap();
    store
        .add_view(
            "a16",
            View::Cast {
                source: "aa".into(),
                dtype: DType::BF16,
            },
        )
        .unwrap();
    assert_eq!(store.info("aa").unwrap(), (DType::F32, vec![3, 3]));
    assert_eq!(store.get("a_cols").unwrap().to_f32_vec(), vec![2., 3., 5., 6.]);
    assert_eq!(
        store.get("aa").unwrap().to_f32_vec(),
        vec![1., 2., 3., 4., 5., 6., 4., 5., 6.]
    );
    let c = store.get("a16").unwrap();
    assert_eq!((c.dtype(), c.shape()), (DType::BF16, &[3usize, 3][..]));
}

/// A transpose view is the interpreter's `transpose` of its source, for
/// every element width (odd sizes cross the copy's 32 × 32 tiles; 4-bit
/// codes take the interpreter's path), and rejects what is not a matrix.
#[test]
fn transpose_views_match_the_interpreter() {
    use optc_ir::ops::{EvalCx, OpImpl, Transpose};
    let (rows, cols) = (45, 70);
    let vals: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37).sin()).collect();
    let ints: Vec<i64> = (0..rows * cols).map(|i| (i as i64 % 15) - 7).collect();
    let tensors = [
        Tensor::from_f32(DType::F32, &[rows, cols], &vals),
        Tensor::from_f32(DType::BF16, &[rows, cols], &vals),
        Tensor::from_f32(DType::F16, &[1, cols], &vals[..cols]),
        Tensor::from_i64(DType::I64, &[rows, cols], &ints),
        Tensor::from_i64(DType::I8, &[rows, cols], &ints),
        Tensor::from_i64(DType::I4, &[rows, cols], &ints),
    ];
    let bindings = Default::default();
    let cx = EvalCx { bindings: &bindings };
    let mut store = WeightStore::new();
    for (i, t) in tensors.iter().enumerate() {
        store.insert(format!("w{i}"), t.clone()).unwrap();
        let name = format!("w{i}.T");
        store
            .add_view(
                &name,
                View::Transpose {
                    source: format!("w{i}"),
                },
            )
            .unwrap();
        let want = Transpose { perm: vec![1, 0] }.eval(&[t], &cx).unwrap().remove(0);
        let shape = want.shape().to_vec();
        assert_eq!(store.info(&name).unwrap(), (t.dtype(), shape), "{name}");
        assert_eq!(store.get(&name).unwrap(), want, "{name} ({})", t.dtype());
    }
    store
        .insert("v", Tensor::from_i64(DType::I64, &[3], &[1, 2, 3]))
        .unwrap();
    let e = store
        .add_view("v.T", View::Transpose { source: "v".into() })
        .unwrap_err();
    assert_eq!(e.to_string(), "view 'v.T': transpose of v [3], which is not 2-D");
}

#[test]
fn bad_views_are_rejected_when_added() {
    let mut store = WeightStore::new();
    for (n, t) in sample() {
        store.insert(n, t).unwrap();
    }
    let e = store
        .add_view(
            "x",
            View::Slice {
                source: "a".into(),
                axis: 1,
                start: 2,
                end: 4,
            },
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "view 'x': slice 2..4 on axis 1 does not fit a [2, 3]"
    );
    let e = store
        .add_view(
            "y",
            View::Concat {
                sources: vec!["a".into(), "b".into()],
                axis: 0,
            },
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "view 'y': b bf16[2, 2] does not join a f32[2, 3] on axis 0"
    );
    let e = store
        .add_view(
            "z",
            View::Cast {
                source: "nope".into(),
                dtype: DType::F32,
            },
        )
        .unwrap_err();
    assert_eq!(e.to_string(), "no weight named 'nope' in the store");
    assert!(matches!(
        store.insert("a", Tensor::scalar_f32(0.0)),
        Err(WeightError::Duplicate(_))
    ));
}

#[test]
fn malformed_files_name_the_file() {
    let path = tmp("garbage.safetensors");
    std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}").unwrap();
    let e = WeightStore::new().open_safetensors(&path).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}: not a valid safetensors file", path.display())),
        "{e}"
    );
    let missing = tmp("missing.safetensors");
    let e = WeightStore::new().open_safetensors(&missing).unwrap_err();
    assert!(e.to_string().starts_with(&missing.display().to_string()), "{e}");
    // Truncated data: header says more bytes than the file has.
    let mut bytes = to_safetensors(&sample()).unwrap();
    bytes.truncate(bytes.len() - 4);
    let path = tmp("short.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let e = WeightStore::new().open_safetensors(&path).unwrap_err();
    assert!(e.to_string().contains("not a valid safetensors file"), "{e}");
}

#[test]
fn packed_types_cannot_be_written_as_safetensors() {
    let t = Tensor::from_i64(DType::I4, &[2], &[1, -1]);
    let e = to_safetensors(&[("q".into(), t)]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot write 'q' as safetensors: i4 has no safetensors dtype"
    );
}

/// `get_le_bytes` gives exactly the bytes of `get` for every kind of
/// entry: mapped (borrowed from the file), owned, axis-0 concats of mapped
/// tensors (joined bytes), and other views (materialised).
#[test]
fn le_bytes_equal_the_materialised_tensors_bytes() {
    let path = tmp("bytes.safetensors");
    let extra = vec![
        (
            "c".to_string(),
            Tensor::from_f32(DType::F32, &[1, 3], &[7., 8., 9.]),
        ),
        (
            "d".to_string(),
            Tensor::from_f32(DType::BF16, &[3, 2], &[1.0, 2.0, -3.0, 0.25, 8.0, 9.5]),
        ),
    ];
    let mut all = sample();
    all.extend(extra);
    write_safetensors(&path, &all).unwrap();
    let mut store = WeightStore::new();
    store.open_safetensors(&path).unwrap();
    store
        .insert("owned", Tensor::from_i64(DType::I64, &[2], &[5, -6]))
        .unwrap();
    let views = [
        (
            "ac0",
            View::Concat {
                sources: vec!["a".into(), "c".into()],
                axis: 0,
            },
        ),
        (
            "bd0",
            View::Concat {
                sources: vec!["b".into(), "d".into()],
                axis: 0,
            },
        ),
        (
            "ac1",
            View::Concat {
                sources: vec!["c".into(), "c".into()],
                axis: 1,
            },
        ),
        (
            "nested",
            View::Concat {
                sources: vec!["ac0".into(), "c".into()],
                axis: 0,
            },
        ),
        (
            "sl",
            View::Slice {
                source: "a".into(),
                axis: 1,
                start: 1,
                end: 3,
            },
        ),
        (
            "cast",
            View::Cast {
                source: "a".into(),
                dtype: DType::BF16,
            },
        ),
    ];
    for (name, v) in views {
        store.add_view(name, v).unwrap();
    }
    let names: Vec<String> = store.names().map(str::to_string).collect();
    for name in names {
        let want = store.get(&name).unwrap().to_le_bytes();
        let got = store.get_le_bytes(&name).unwrap();
        assert_eq!(&*got, &want[..], "{name}");
    }
    // Mapped tensors are borrowed, not copied.
    assert!(matches!(
        store.get_le_bytes("a").unwrap(),
        std::borrow::Cow::Borrowed(_)
    ));
    assert!(matches!(store.get_le_bytes("nope"), Err(WeightError::Unknown(_))));
}
