//! Data sets for training: JSONL readers (`jsonl`), tokenization into labelled examples with ChatML (`sft`), the
//! IMDB reviews (`imdb`), and packing, padding and seeded order (`batch`).

pub mod batch;
pub mod imdb;
pub mod jsonl;
pub mod sft;

pub use batch::{
    collate, collate_class, epoch_order, pack, Batch, BatchTensors, ClassBatch, Loader, PadSide,
    Padding,
};
pub use jsonl::{LabeledText, Message, PromptCompletion};
pub use sft::{
    chatml_example, chatml_text, class_example, lm_example, prompt_completion_example,
    ClassExample, Example, PromptFormat, Tokenize, IGNORE,
};
