//! `TensorProto` ⇄ IR [`Tensor`]: typed data fields, little-endian
//! `raw_data`, and external data files next to the model.

use std::path::Path;

use optc_ir::{DType, Tensor};

use super::proto::{data_type as dt, TensorProto, DATA_LOCATION_EXTERNAL};

/// The IR dtype of an ONNX element type code.
pub fn dtype_of(code: i32) -> Result<DType, String> {
    Ok(match code {
        dt::FLOAT => DType::F32,
        dt::DOUBLE => DType::F64,
        dt::FLOAT16 => DType::F16,
        dt::BFLOAT16 => DType::BF16,
        dt::FLOAT8E4M3FN => DType::F8E4M3,
        dt::FLOAT8E5M2 => DType::F8E5M2,
        dt::FLOAT8E4M3FNUZ => DType::F8E4M3Fnuz,
        dt::FLOAT8E5M2FNUZ => DType::F8E5M2Fnuz,
        dt::FLOAT8E8M0 => DType::F8E8M0,
        dt::FLOAT4E2M1 => DType::F4E2M1,
        dt::UINT64 => DType::U64,
        dt::INT2 => DType::I2,
        dt::UINT2 => DType::U2,
        dt::INT8 => DType::I8,
        dt::UINT8 => DType::U8,
        dt::INT16 => DType::I16,
        dt::UINT16 => DType::U16,
        dt::INT32 => DType::I32,
        dt::UINT32 => DType::U32,
        dt::INT64 => DType::I64,
        dt::BOOL => DType::Bool,
        dt::INT4 => DType::I4,
        dt::UINT4 => DType::U4,
        other => {
            return Err(format!(
                "element type {} ({other}) is not supported",
                dt::name(other)
            ))
        }
    })
}

/// The ONNX element type code of an IR dtype.
pub fn code_of(d: DType) -> i32 {
    match d {
        DType::F32 => dt::FLOAT,
        DType::F64 => dt::DOUBLE,
        DType::F16 => dt::FLOAT16,
        DType::BF16 => dt::BFLOAT16,
        DType::F8E4M3 => dt::FLOAT8E4M3FN,
        DType::F8E5M2 => dt::FLOAT8E5M2,
        DType::F8E4M3Fnuz => dt::FLOAT8E4M3FNUZ,
        DType::F8E5M2Fnuz => dt::FLOAT8E5M2FNUZ,
        DType::F8E8M0 => dt::FLOAT8E8M0,
        DType::F4E2M1 => dt::FLOAT4E2M1,
        DType::U64 => dt::UINT64,
        DType::I2 => dt::INT2,
        DType::U2 => dt::UINT2,
        DType::I8 => dt::INT8,
        DType::U8 => dt::UINT8,
        DType::I16 => dt::INT16,
        DType::U16 => dt::UINT16,
        DType::I32 => dt::INT32,
        DType::U32 => dt::UINT32,
        DType::I64 => dt::INT64,
        DType::Bool => dt::BOOL,
        DType::I4 => dt::INT4,
        DType::U4 => dt::UINT4,
    }
}

fn shape_of(t: &TensorProto) -> Result<Vec<usize>, String> {
    let shape: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dim {d} in {:?}", t.dims)))
        .collect::<Result<_, _>>()?;
    let mut n: usize = 1;
    for &d in &shape {
        n = n
            .checked_mul(d)
            .filter(|&n| n < (1usize << 31))
            .ok_or_else(|| format!("dims {:?} give more than 2^31 elements", t.dims))?;
    }
    Ok(shape)
}

/// Reads the external-data file a tensor points at (`location`, `offset`,
/// `length`, relative to `base`, never outside it).
fn external_bytes(t: &TensorProto, base: Option<&Path>) -> Result<Vec<u8>, String> {
    let (mut location, mut offset, mut length) = (None, 0u64, None);
    for e in &t.external_data {
        match e.key.as_str() {
            "location" => location = Some(e.value.clone()),
            "offset" => {
                offset = e
                    .value
                    .parse()
                    .map_err(|_| format!("external data offset {:?} is not a number", e.value))?
            }
            "length" => {
                length = Some(
                    e.value
                        .parse::<u64>()
                        .map_err(|_| format!("external data length {:?} is not a number", e.value))?,
                )
            }
            _ => {}
        }
    }
    let location = location.ok_or("external data without a location")?;
    let rel = Path::new(&location);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!(
            "external data location {location:?} must be a relative path inside the model's folder"
        ));
    }
    let base = base
        .ok_or_else(|| format!("external data file {location:?} but the model was not read from a file"))?;
    let path = base.join(rel);
    let bytes = std::fs::read(&path).map_err(|e| format!("external data file {}: {e}", path.display()))?;
    let start = usize::try_from(offset).map_err(|_| "external data offset too large".to_string())?;
    let end = match length {
        Some(l) => start.checked_add(usize::try_from(l).map_err(|_| "external data length too large")?),
        None => Some(bytes.len()),
    }
    .ok_or("external data range overflows")?;
    if start > end || end > bytes.len() {
        return Err(format!(
            "external data {}: bytes {start}..{end} requested but the file has {}",
            path.display(),
            bytes.len()
        ));
    }
    Ok(bytes[start..end].to_vec())
}

/// Decodes one tensor. `base` is the folder of the model file, for external
/// data. The error says which field is inconsistent with the dims.
pub fn to_tensor(t: &TensorProto, base: Option<&Path>) -> Result<Tensor, String> {
    let dtype = dtype_of(t.data_type)?;
    let shape = shape_of(t)?;
    let n: usize = shape.iter().product();
    let count = |got: usize, field: &str| {
        if got == n {
            Ok(())
        } else {
            Err(format!(
                "{field} holds {got} values but dims {:?} need {n}",
                t.dims
            ))
        }
    };
    if t.data_location == DATA_LOCATION_EXTERNAL {
        let bytes = external_bytes(t, base)?;
        return Tensor::from_le_bytes(dtype, &shape, &bytes).map_err(|e| format!("external data: {e}"));
    }
    if !t.raw_data.is_empty() || n == 0 {
        return Tensor::from_le_bytes(dtype, &shape, &t.raw_data).map_err(|e| format!("raw_data: {e}"));
    }
    match dtype {
        DType::F32 => {
            count(t.float_data.len(), "float_data")?;
            Ok(Tensor::from_f32(dtype, &shape, &t.float_data))
        }
        DType::F64 => {
            count(t.double_data.len(), "double_data")?;
            Ok(Tensor::from_f64(dtype, &shape, &t.double_data))
        }
        DType::I64 => {
            count(t.int64_data.len(), "int64_data")?;
            Ok(Tensor::from_i64(dtype, &shape, &t.int64_data))
        }
        DType::U32 => {
            count(t.uint64_data.len(), "uint64_data")?;
            let v: Vec<i64> = t.uint64_data.iter().map(|&x| x as i64).collect();
            Ok(Tensor::from_i64(dtype, &shape, &v))
        }
        DType::U64 => {
            count(t.uint64_data.len(), "uint64_data")?;
            Ok(Tensor::from_u64(&shape, &t.uint64_data))
        }
        DType::F16
        | DType::BF16
        | DType::F8E4M3
        | DType::F8E5M2
        | DType::F8E4M3Fnuz
        | DType::F8E5M2Fnuz
        | DType::F8E8M0 => {
            // 16- and 8-bit floats keep their bit patterns in int32_data.
            count(t.int32_data.len(), "int32_data")?;
            let width = dtype.bits() / 8;
            let bytes: Vec<u8> = t
                .int32_data
                .iter()
                .flat_map(|&x| (x as u32).to_le_bytes().into_iter().take(width))
                .collect();
            Tensor::from_le_bytes(dtype, &shape, &bytes).map_err(|e| e.to_string())
        }
        DType::I4 | DType::U4 | DType::F4E2M1 | DType::I2 | DType::U2 => {
            // Packed: one int32 per byte, two (4-bit) or four (2-bit) elements per byte.
            if t.int32_data.len() != dtype.storage_bytes(n) {
                return Err(format!(
                    "int32_data holds {} packed bytes but dims {:?} need {}",
                    t.int32_data.len(),
                    t.dims,
                    dtype.storage_bytes(n)
                ));
            }
            let bytes: Vec<u8> = t.int32_data.iter().map(|&x| x as u8).collect();
            Tensor::from_le_bytes(dtype, &shape, &bytes).map_err(|e| e.to_string())
        }
        _ => {
            count(t.int32_data.len(), "int32_data")?;
            let v: Vec<i64> = t.int32_data.iter().map(|&x| x as i64).collect();
            Ok(Tensor::from_i64(dtype, &shape, &v))
        }
    }
}

/// Encodes a tensor with its data in `raw_data`.
pub fn from_tensor(name: &str, t: &Tensor) -> TensorProto {
    TensorProto {
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: code_of(t.dtype()),
        name: name.to_string(),
        raw_data: t.to_le_bytes(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_fields_and_raw_data_agree() {
        let t = Tensor::from_f32(DType::F32, &[2, 2], &[1.0, -2.0, 3.5, 0.0]);
        let raw = from_tensor("x", &t);
        assert_eq!(to_tensor(&raw, None).unwrap(), t);
        let typed = TensorProto {
            dims: vec![2, 2],
            data_type: dt::FLOAT,
            float_data: vec![1.0, -2.0, 3.5, 0.0],
            ..Default::default()
        };
        assert_eq!(to_tensor(&typed, None).unwrap(), t);
        let f16 = TensorProto {
            dims: vec![1],
            data_type: dt::FLOAT16,
            int32_data: vec![0x3c00],
            ..Default::default()
        };
        assert_eq!(to_tensor(&f16, None).unwrap().to_f32_vec(), vec![1.0]);
    }

    #[test]
    fn wrong_counts_are_errors() {
        let bad = TensorProto {
            dims: vec![3],
            data_type: dt::INT64,
            int64_data: vec![1, 2],
            ..Default::default()
        };
        assert!(to_tensor(&bad, None)
            .unwrap_err()
            .contains("int64_data holds 2 values but dims [3] need 3"));
        let raw = TensorProto {
            dims: vec![3],
            data_type: dt::FLOAT,
            raw_data: vec![0; 8],
            ..Default::default()
        };
        assert!(to_tensor(&raw, None).unwrap_err().contains("raw_data"));
        let neg = TensorProto {
            dims: vec![-1],
            data_type: dt::FLOAT,
            ..Default::default()
        };
        assert!(to_tensor(&neg, None).unwrap_err().contains("negative dim"));
    }
}
