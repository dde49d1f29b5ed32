//! Quantisation passes: weights stored in fewer bits, with the conversion
//! back written into the graph so the interpreter still defines the result.

mod cast_weights;
pub mod int8;

pub use cast_weights::CastWeights;
pub use int8::QuantizeInt8;
