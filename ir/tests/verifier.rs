//! One test per kind of malformed graph, each asserting the verifier's
//! message. Broken graphs come from text (which may express cycles and wrong
//! types) or from the raw `Graph` API.

use optc_ir::ops::{BinaryKind, Op, UnaryKind};
use optc_ir::{parse, parse_type, verify, Graph, Value};

fn verify_text(text: &str) -> String {
    let g = parse(text).unwrap_or_else(|e| panic!("{e}"));
    verify(&g).expect_err("graph should be rejected").to_string()
}

fn ty(s: &str) -> optc_ir::TensorType {
    parse_type(s).unwrap()
}

#[test]
fn accepts_a_well_formed_graph() {
    let g = parse("graph g(%x: f32[S]) -> (%y: f32[S]) {\n  %0: f32[S] = neg(%x)\n  return %0\n}").unwrap();
    verify(&g).unwrap();
}

#[test]
fn cycle() {
    let msg = verify_text(
        "graph g(%x: f32[2]) -> (%y: f32[2]) {\n  %0: f32[2] = add(%x, %1)\n  %1: f32[2] = neg(%0)\n  return %1\n}",
    );
    assert_eq!(msg, "graph has a cycle through %0 = add");
}

#[test]
fn missing_operand() {
    let mut g = Graph::new("g");
    let x = g.add_input("x", ty("f32[2]"));
    let n = g.add_op(Op::Binary(BinaryKind::Add), &[], vec![ty("f32[2]")], None);
    g.add_edge(x, n, 1);
    g.add_output("y", Value::of(n), ty("f32[2]"));
    assert_eq!(
        verify(&g).unwrap_err().to_string(),
        "%0 = add: operand 0 is missing"
    );
}

#[test]
fn operand_slot_filled_twice() {
    let mut g = Graph::new("g");
    let x = g.add_input("x", ty("f32[2]"));
    let n = g.add_op(Op::Unary(UnaryKind::Neg), &[x], vec![ty("f32[2]")], None);
    g.add_edge(x, n, 0);
    g.add_output("y", Value::of(n), ty("f32[2]"));
    assert_eq!(
        verify(&g).unwrap_err().to_string(),
        "%0 = neg: operand slot 0 is filled twice"
    );
}

#[test]
fn reads_an_output_that_does_not_exist() {
    let mut g = Graph::new("g");
    let x = g.add_input("x", ty("f32[2]"));
    let a = g.add_op(Op::Unary(UnaryKind::Neg), &[x], vec![ty("f32[2]")], None);
    let b = g.add_op(
        Op::Unary(UnaryKind::Neg),
        &[Value { node: a, index: 3 }],
        vec![ty("f32[2]")],
        None,
    );
    g.add_output("y", Value::of(b), ty("f32[2]"));
    assert_eq!(
        verify(&g).unwrap_err().to_string(),
        "%1 = neg: reads output 3 of %0 = neg, which defines 1"
    );
}

#[test]
fn input_with_operands() {
    let mut g = Graph::new("g");
    let x = g.add_input("x", ty("f32[2]"));
    let y = g.add_input("y", ty("f32[2]"));
    g.add_edge(x, y.node, 0);
    g.add_output("o", y, ty("f32[2]"));
    assert_eq!(
        verify(&g).unwrap_err().to_string(),
        "input %y must not have operands"
    );
}

#[test]
fn op_type_rule_rejects_operands() {
    let msg = verify_text(
        "graph g(%a: f32[2], %b: f32[3]) -> (%y: f32[3]) {\n  %0: f32[3] = add(%a, %b) loc(\"layer.0\")\n  return %0\n}",
    );
    assert_eq!(
        msg,
        "%0 = add (layer.0): add: shapes [2] and [3] do not broadcast"
    );
    let msg = verify_text(
        "graph g(%a: f32[2], %b: i64[2]) -> (%y: f32[2]) {\n  %0: f32[2] = mul(%a, %b)\n  return %0\n}",
    );
    assert_eq!(
        msg,
        "%0 = mul: mul needs operands of one dtype, got f32[2] and i64[2] (insert a cast)"
    );
}

#[test]
fn invalid_attribute_values() {
    let msg = verify_text(
        "graph g(%a: f32[2, 3]) -> (%y: f32[3, 2]) {\n  %0: f32[3, 2] = transpose(%a) {perm = [0, 0]}\n  return %0\n}",
    );
    assert_eq!(msg, "%0 = transpose: transpose: axis 0 is listed twice");
    let msg = verify_text(
        "graph g(%a: f32[2, 3]) -> (%y: f32[2, 3]) {\n  %0: f32[2, 3] = softmax(%a) {axis = 2}\n  return %0\n}",
    );
    assert_eq!(msg, "%0 = softmax: softmax: axis 2 is out of range for rank 2");
    let msg = verify_text(
        "graph g(%a: f32[4]) -> (%y: f32[4]) {\n  %0: f32[4] = slice(%a) {axis = 0, start = 0, step = 0}\n  return %0\n}",
    );
    assert_eq!(msg, "%0 = slice: slice: step must not be 0");
}

#[test]
fn declared_type_differs_from_inferred() {
    let msg =
        verify_text("graph g(%a: f32[B, S]) -> (%y: f32[B, T]) {\n  %0: f32[B, T] = exp(%a)\n  return %0\n}");
    // T is also unbound, but the symbol check names it first.
    assert_eq!(
        msg,
        "symbol T used by %0 = exp is not bound by any graph input (inputs bind: B, S)"
    );
    let msg = verify_text(
        "graph g(%a: f32[B, S]) -> (%y: bf16[B, S]) {\n  %0: bf16[B, S] = exp(%a)\n  return %0\n}",
    );
    assert_eq!(
        msg,
        "%0 = exp declares bf16[B, S] but its operands give f32[B, S]"
    );
    let msg = verify_text(
        "graph g(%a: f32[4]) -> (%y: f32[2]) {\n  %0: f32[2], %1: f32[2], %2: f32[0] = split(%a) {axis = 0, sizes = [2, 2]}\n  return %0\n}",
    );
    assert_eq!(
        msg,
        "%0, %1, %2 = split declares f32[2], f32[2], f32[0] but its operands give f32[2], f32[2]"
    );
}

#[test]
fn output_not_defined() {
    let mut g = Graph::new("g");
    let x = g.add_input("x", ty("f32[2]"));
    let n = g.add_op(Op::Unary(UnaryKind::Neg), &[x], vec![ty("f32[2]")], None);
    g.add_output("y", Value::of(n), ty("f32[2]"));
    g.remove_node(n);
    assert_eq!(
        verify(&g).unwrap_err().to_string(),
        "output %y is not defined by any node"
    );
}

#[test]
fn output_type_differs_from_its_value() {
    let msg = verify_text("graph g(%x: f32[2]) -> (%y: f32[3]) {\n  %0: f32[2] = neg(%x)\n  return %0\n}");
    assert_eq!(msg, "output %y is declared f32[3] but its value is f32[2]");
}

#[test]
fn no_outputs() {
    let msg = verify_text("graph g(%x: f32[2]) -> () {\n  return\n}");
    assert_eq!(msg, "graph has no outputs");
}

#[test]
fn unbound_symbol_in_an_attribute() {
    let msg = verify_text(
        "graph g(%x: f32[S]) -> (%y: f32[K]) {\n  %0: f32[K] = full() {shape = [K], value = 0.0, dtype = f32}\n  return %0\n}",
    );
    assert_eq!(
        msg,
        "symbol K used by %0 = full is not bound by any graph input (inputs bind: S)"
    );
    // A symbol only inside a product cannot be solved from an input dim.
    let msg =
        verify_text("graph g(%x: f32[B*S]) -> (%y: f32[B*S]) {\n  %0: f32[B*S] = neg(%x)\n  return %0\n}");
    assert_eq!(
        msg,
        "symbol B used by input %x is not bound by any graph input (inputs bind: none)"
    );
}

#[test]
fn symbolic_weight_shape() {
    let msg = verify_text(
        "graph g(%x: f32[S, 4]) -> (%y: f32[S, 4]) {\n  weight @w: f32[S, 4] = \"w\"\n  %0: f32[S, 4] = add(%x, @w)\n  return %0\n}",
    );
    assert_eq!(
        msg,
        "weight @w has shape f32[S, 4], but weight shapes must be constant"
    );
}

#[test]
fn duplicate_names() {
    let mut g = Graph::new("g");
    let x = g.add_input("x", ty("f32[2]"));
    g.add_input("x", ty("f32[2]"));
    g.add_output("y", x, ty("f32[2]"));
    assert_eq!(verify(&g).unwrap_err().to_string(), "input name %x is used twice");
    let mut g = Graph::new("g");
    let x = g.add_input("x", ty("f32[2]"));
    g.add_output("y", x, ty("f32[2]"));
    g.add_output("y", x, ty("f32[2]"));
    assert_eq!(
        verify(&g).unwrap_err().to_string(),
        "output name %y is used twice"
    );
}

#[test]
fn negative_dims() {
    let msg = verify_text("graph g(%x: f32[2]) -> (%y: f32[2]) {\n  %0: f32[-2] = neg(%x)\n  return %x\n}");
    assert_eq!(msg, "%0 = neg has type f32[-2], whose dim -2 is negative");
    let msg = verify_text(
        "graph g(%x: f32[2]) -> (%y: f32[2]) {\n  %0: f32[3], %1: f32[-1] = split(%x) {axis = 0, sizes = [3, -1]}\n  return %x\n}",
    );
    assert_eq!(msg, "%0, %1 = split has type f32[-1], whose dim -1 is negative");
}

#[test]
fn symbols_only_inside_products_of_inputs_are_unbound() {
    let msg = verify_text("graph g(%x: f32[B*S]) -> (%y: f32[B*S]) {\n  return %x\n}");
    assert_eq!(
        msg,
        "symbol B used by input %x is not bound by any graph input (inputs bind: none)"
    );
}

#[test]
fn symbol_names_must_be_printable() {
    let mut g = Graph::new("g");
    let t = optc_ir::TensorType::new(
        optc_ir::DType::F32,
        optc_ir::Shape(vec![optc_ir::Dim::sym("f32")]),
    );
    let x = g.add_input("x", t.clone());
    g.add_output("y", x, t);
    assert_eq!(
        verify(&g).unwrap_err().to_string(),
        "symbol name \"f32\" (in input %x) cannot be written in the text form"
    );
}
