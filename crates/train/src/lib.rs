//! rankfold-train: what the trainer feeds on. So far the data sets (`data`): JSONL readers, SFT formatting with
//! completion-only labels, the IMDB reviews, padding, masks, packing and seeded batch order.

pub mod data;
mod error;

pub use error::{Error, Result};
