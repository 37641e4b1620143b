//! Batching: packing language-modelling sequences, padding to a rectangle with masks and labels, and the seeded
//! order in which examples are visited each epoch. Batches hold host vectors in row-major `[batch, seq_len]`
//! order; [`Batch::tensors`] turns them into tensors (U32 ids, U8 masks as `nn_ops::padding_mask` makes them,
//! I64 labels).

use rankfold_tensor::{Device, Rng, Tensor};

use super::sft::{ClassExample, Example, IGNORE};
use crate::{Error, Result};

/// Packs examples end to end into sequences of exactly `seq_len` tokens (the last one shorter unless `drop_last`).
/// A document that does not fit continues in the next sequence. Inside a sequence each document (or part of one)
/// gets its own `segment_ids` value, counting from 0, so attention can be kept within documents; the first
/// position of every segment gets the label [`IGNORE`], since predicting it would mean predicting one document from
/// another (or, at position 0, from nothing).
pub fn pack(examples: &[Example], seq_len: usize, drop_last: bool) -> Result<Vec<Example>> {
    if seq_len == 0 {
        return Err(Error::Config("packing needs seq_len > 0".into()));
    }
    check_examples(examples.iter())?;
    let mut out = Vec::new();
    let mut cur = Example::default();
    let mut segment = 0u32;
    for ex in examples {
        let mut start = 0;
        while start < ex.len() {
            if cur.len() == seq_len {
                out.push(std::mem::take(&mut cur));
                segment = 0;
            }
            let take = (seq_len - cur.len()).min(ex.len() - start);
            let seg = if cur.is_empty() { 0 } else { segment + 1 };
            cur.input_ids
                .extend_from_slice(&ex.input_ids[start..start + take]);
            cur.labels
                .extend_from_slice(&ex.labels[start..start + take]);
            let first = cur.labels.len() - take;
            cur.labels[first] = IGNORE;
            cur.segment_ids.extend(std::iter::repeat_n(seg, take));
            segment = seg;
            start += take;
        }
    }
    if !cur.is_empty() && (cur.len() == seq_len || !drop_last) {
        out.push(cur);
    }
    Ok(out)
}

/// Which side padding goes on: right for training, left for batched generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PadSide {
    /// Tokens first, then padding.
    #[default]
    Right,
    /// Padding first, then tokens.
    Left,
}

/// How a batch is made rectangular.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Padding {
    /// The token id written at padded positions (masked out, label [`IGNORE`]).
    pub pad_id: u32,
    /// Where padding goes.
    pub side: PadSide,
    /// Sequences longer than this are cut to their first `max_len` tokens.
    pub max_len: Option<usize>,
}

/// A padded batch of token sequences, each vector row-major `[batch, seq_len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Number of rows.
    pub batch: usize,
    /// Length of every row (the longest sequence, after truncation).
    pub seq_len: usize,
    /// Token ids, `pad_id` at padding.
    pub input_ids: Vec<u32>,
    /// 1 at real tokens, 0 at padding.
    pub attention_mask: Vec<u8>,
    /// Per-position labels; [`IGNORE`] at padding.
    pub labels: Vec<i64>,
    /// Document index inside each row (from packing); 0 at padding.
    pub segment_ids: Vec<u32>,
    /// Position of each token inside its segment (restarting at 0 at each segment); 0 at padding.
    pub position_ids: Vec<u32>,
    /// Real tokens per row.
    pub lengths: Vec<usize>,
}

/// The tensors of a [`Batch`].
#[derive(Debug)]
pub struct BatchTensors {
    /// `[batch, seq_len]` U32 token ids.
    pub input_ids: Tensor,
    /// `[batch, seq_len]` U8, 1 at real tokens.
    pub attention_mask: Tensor,
    /// `[batch, seq_len]` I64 labels.
    pub labels: Tensor,
    /// `[batch, seq_len]` U32 positions.
    pub position_ids: Tensor,
}

impl Batch {
    /// Builds the tensors of this batch on `device`.
    pub fn tensors(&self, device: Device) -> Result<BatchTensors> {
        let shape = (self.batch, self.seq_len);
        Ok(BatchTensors {
            input_ids: Tensor::from_slice(&self.input_ids, shape, device)?,
            attention_mask: Tensor::from_slice(&self.attention_mask, shape, device)?,
            labels: Tensor::from_slice(&self.labels, shape, device)?,
            position_ids: Tensor::from_slice(&self.position_ids, shape, device)?,
        })
    }

    /// Positions that take a loss.
    pub fn trained_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE).count()
    }
}

/// Checks `examples` is non-empty and returns the padded row length.
fn row_len(lengths: impl Iterator<Item = usize>, padding: &Padding) -> Result<(usize, usize)> {
    let (mut n, mut longest) = (0, 0);
    for l in lengths {
        n += 1;
        longest = longest.max(padding.max_len.map_or(l, |m| l.min(m)));
    }
    if n == 0 {
        return Err(Error::Config("cannot make a batch of no examples".into()));
    }
    Ok((n, longest))
}

/// The offset of a row's first real token: 0 on the right, the padding length on the left.
fn offset(side: PadSide, seq_len: usize, len: usize) -> usize {
    match side {
        PadSide::Right => 0,
        PadSide::Left => seq_len - len,
    }
}

/// Checks every example's labels and segment ids are as long as its token ids (the fields are public, so a
/// caller can build inconsistent ones).
fn check_examples<'a>(examples: impl Iterator<Item = &'a Example>) -> Result<()> {
    for (i, ex) in examples.enumerate() {
        if ex.labels.len() != ex.len() || ex.segment_ids.len() != ex.len() {
            return Err(Error::Config(format!(
                "example {i} has {} token ids but {} labels and {} segment ids",
                ex.len(),
                ex.labels.len(),
                ex.segment_ids.len()
            )));
        }
    }
    Ok(())
}

/// Pads `examples` into one batch.
pub fn collate(examples: &[&Example], padding: &Padding) -> Result<Batch> {
    check_examples(examples.iter().copied())?;
    let (batch, seq_len) = row_len(examples.iter().map(|e| e.len()), padding)?;
    let cells = batch * seq_len;
    let mut b = Batch {
        batch,
        seq_len,
        input_ids: vec![padding.pad_id; cells],
        attention_mask: vec![0; cells],
        labels: vec![IGNORE; cells],
        segment_ids: vec![0; cells],
        position_ids: vec![0; cells],
        lengths: Vec::with_capacity(batch),
    };
    for (r, ex) in examples.iter().enumerate() {
        let len = ex.len().min(seq_len);
        let base = r * seq_len + offset(padding.side, seq_len, len);
        let mut pos = 0u32;
        for j in 0..len {
            if j > 0 && ex.segment_ids[j] != ex.segment_ids[j - 1] {
                pos = 0;
            }
            b.input_ids[base + j] = ex.input_ids[j];
            b.attention_mask[base + j] = 1;
            b.labels[base + j] = ex.labels[j];
            b.segment_ids[base + j] = ex.segment_ids[j];
            b.position_ids[base + j] = pos;
            pos += 1;
        }
        b.lengths.push(len);
    }
    Ok(b)
}

/// A padded batch of classification examples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassBatch {
    /// Number of rows.
    pub batch: usize,
    /// Length of every row.
    pub seq_len: usize,
    /// Token ids, `pad_id` at padding, row-major `[batch, seq_len]`.
    pub input_ids: Vec<u32>,
    /// 1 at real tokens, 0 at padding.
    pub attention_mask: Vec<u8>,
    /// One class per row.
    pub labels: Vec<usize>,
    /// Real tokens per row.
    pub lengths: Vec<usize>,
}

/// Pads classification examples into one batch.
pub fn collate_class(examples: &[&ClassExample], padding: &Padding) -> Result<ClassBatch> {
    let (batch, seq_len) = row_len(examples.iter().map(|e| e.input_ids.len()), padding)?;
    let cells = batch * seq_len;
    let mut b = ClassBatch {
        batch,
        seq_len,
        input_ids: vec![padding.pad_id; cells],
        attention_mask: vec![0; cells],
        labels: Vec::with_capacity(batch),
        lengths: Vec::with_capacity(batch),
    };
    for (r, ex) in examples.iter().enumerate() {
        let len = ex.input_ids.len().min(seq_len);
        let base = r * seq_len + offset(padding.side, seq_len, len);
        b.input_ids[base..base + len].copy_from_slice(&ex.input_ids[..len]);
        b.attention_mask[base..base + len].fill(1);
        b.labels.push(ex.label);
        b.lengths.push(len);
    }
    Ok(b)
}

/// The order of `n` examples in epoch `epoch`: a shuffle determined by `seed` and `epoch` alone (each epoch its
/// own permutation), or `0..n` when `shuffle` is off.
pub fn epoch_order(n: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        // The epoch is mixed in with an odd constant; Rng::new then scrambles the seed through SplitMix64.
        Rng::new(seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03)).shuffle(&mut order);
    }
    order
}

/// Batches of example indices for one epoch, in the seeded order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loader {
    /// Examples per batch.
    pub batch_size: usize,
    /// The seed of the per-epoch shuffles.
    pub seed: u64,
    /// Whether to shuffle at all.
    pub shuffle: bool,
    /// Whether to drop a last batch smaller than `batch_size`.
    pub drop_last: bool,
}

impl Loader {
    /// A shuffling loader that keeps the last short batch.
    pub fn new(batch_size: usize, seed: u64) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::Config("batch_size must be > 0".into()));
        }
        Ok(Loader {
            batch_size,
            seed,
            shuffle: true,
            drop_last: false,
        })
    }

    /// The index batches of epoch `epoch` over `n` examples.
    pub fn epoch(&self, n: usize, epoch: u64) -> Vec<Vec<usize>> {
        let order = epoch_order(n, self.seed, epoch, self.shuffle);
        order
            .chunks(self.batch_size.max(1))
            .filter(|c| !self.drop_last || c.len() == self.batch_size)
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// The padded token batches of epoch `epoch`.
    pub fn batches(
        &self,
        examples: &[Example],
        padding: &Padding,
        epoch: u64,
    ) -> Result<Vec<Batch>> {
        self.epoch(examples.len(), epoch)
            .iter()
            .map(|idx| {
                collate(
                    &idx.iter().map(|&i| &examples[i]).collect::<Vec<_>>(),
                    padding,
                )
            })
            .collect()
    }

    /// The padded classification batches of epoch `epoch`.
    pub fn class_batches(
        &self,
        examples: &[ClassExample],
        padding: &Padding,
        epoch: u64,
    ) -> Result<Vec<ClassBatch>> {
        self.epoch(examples.len(), epoch)
            .iter()
            .map(|idx| {
                collate_class(
                    &idx.iter().map(|&i| &examples[i]).collect::<Vec<_>>(),
                    padding,
                )
            })
            .collect()
    }
}
