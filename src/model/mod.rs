//! Everything about the π0 model that is not an engine: dimensions, checkpoint tensors,
//! the random-checkpoint generator, tokenization and pre/post-processing.

pub mod checkpoint;
pub mod config;
pub mod generate;
pub mod keys;
pub mod normalize;
pub mod preprocess;
pub mod tokenizer;
