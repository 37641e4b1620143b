//! The BERT encoder (`Bert`, Hugging Face's `BertModel` without the pooler): its config, the forward pass with a
//! padding mask, mean pooling into sentence embeddings, `BertClassifier` (mean pooling + a trainable linear head),
//! and loading from Hugging Face folders. Its tokenizer is `crate::wordpiece::WordPiece`.

mod config;
mod load;
mod model;

pub use config::BertConfig;
pub use model::{
    l2_normalize, mean_pool, Bert, BertAttention, BertClassifier, BertEmbeddings, BertLayer,
};
