//! rankfold-train: the data sets (`data`): JSONL readers, SFT formatting with completion-only labels, the IMDB
//! reviews, padding, masks, packing and seeded batch order; and the trainer core (`trainer`): AdamW with a
//! warmup-cosine schedule, accumulation, clipping, JSONL metrics, atomic checkpoints and bit-identical resume.

pub mod data;
pub mod run;
pub mod trainer;
mod error;

pub use error::{Error, Result};
