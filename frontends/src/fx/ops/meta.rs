//! Nodes with no tensor result: size queries and symbolic-int arithmetic
//! (their values are the expressions torch recorded in `sym_int_values`,
//! which the importer reads directly), and runtime asserts torch already
//! proved for the export's symbol ranges.

use optc_ir::Value;

use super::Lower;
use crate::fx::import::Cx;
use crate::fx::schema::Node;

fn nothing(_: &mut Cx, _: &Node) -> Result<Vec<Value>, String> {
    Ok(Vec::new())
}

pub const TABLE: &[(&str, Lower)] = &[
    ("aten.sym_size.int", nothing),
    ("aten.sym_numel.default", nothing),
    ("aten.sym_stride.int", nothing),
    ("aten.sym_storage_offset.default", nothing),
    ("aten._assert_tensor_metadata.default", nothing),
    ("aten._assert_scalar.default", nothing),
    ("aten.sym_constrain_range.default", nothing),
    ("aten.sym_constrain_range_for_size.default", nothing),
    ("_operator.add", nothing),
    ("_operator.sub", nothing),
    ("_operator.mul", nothing),
    ("_operator.floordiv", nothing),
    ("_operator.mod", nothing),
    ("_operator.neg", nothing),
    ("_operator.eq", nothing),
    ("_operator.ne", nothing),
    ("_operator.lt", nothing),
    ("_operator.le", nothing),
    ("_operator.gt", nothing),
    ("_operator.ge", nothing),
    ("torch.sym_max", nothing),
    ("torch.sym_min", nothing),
    ("torch.sym_not", nothing),
];
