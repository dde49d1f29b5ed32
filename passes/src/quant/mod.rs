//! Quantisation passes: weights stored in fewer bits, with the conversion
//! back written into the graph so the interpreter still defines the result.

mod cast_weights;

pub use cast_weights::CastWeights;
