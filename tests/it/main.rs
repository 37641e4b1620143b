//! The one integration-test binary of rankfold (one binary links once; modules below are its parts).

// Shared helpers: tolerances, random tensors, f64 finite differences.
mod common;
// Backward of every differentiable op against f64 central finite differences (proptest).
mod grad;
// Matmul against a naive loop at awkward shapes, transposed and broadcast operands.
mod matmul;
// Forward numerics: softmax / cross-entropy stability, reductions, masks, RoPE conventions, casts, memory.
mod ops;
// safetensors round trips for every dtype and error reporting.
mod io;
// A tiny causal transformer LM built from these ops learns to reverse sequences.
mod train;
// The runtimes GPU-path kernel tests loop over (ptxsim; CUDA with RANKFOLD_GPU_CHECK=1) and shared comparisons.
mod gpu;
// AdamW8bit bit for bit against bitsandbytes' CPU AdamW8bit (fixtures), state size, save/load, non-finite gradients.
mod optim8;
// kernels/elementwise.cu against its CPU twin: every op, f32/bf16, strided and broadcast views.
mod elementwise;
// kernels/softmax.cu against its CPU twin: forward and backward, awkward row lengths, ±1e4 logits.
mod softmax;
// kernels/gemm.cu against its CPU twin: nt/nn, bf16/f32 out, edge tiles, unaligned K, alpha/beta.
mod gemm;
// ptxsim: small kernels against Rust references, planted bugs, counters.
mod ptxsim;
// NF4 against the committed bitsandbytes fixtures bit for bit; fast path vs twin; round trip; bnb files.
mod nf4;
// NF4 double quantization at real layer sizes (5k-700k blocks) and torch thread counts vs bitsandbytes digests.
mod nf4_sizes;
// kernels/nf4.cu on ptxsim against the NF4 twin: quantize/dequantize/double quantization bit for bit, GEMV, coalescing.
mod nf4_gpu;
// Loaders for the PEFT-saved reference adapters in tests/fixtures/peft (LoRA, rsLoRA, AdaLoRA, GLoRA).
mod peft_fixtures;
// GLoRA: every support shape vs the formulas, merge, finite differences, PEFT files, NF4 base, supernet, search.
mod adapters_glora;
// AdaLoRA: PEFT's pruned reference case (rank-0 layer), allocator-driven training vs the budget, merge, NF4, save/load.
mod adapters_adalora;
// LoRA, rsLoRA, LoRA-FA (activation memory), QLoRA: PEFT reference cases, merge, gradients, errors.
mod adapters_lora;
// GGUF reader: gguf-py fixtures bit for bit (every type), Q/K permutation, Llama names, NF4 on load, hostile headers.
mod gguf;
// Llama decoder: tiny HF models and PEFT LoRA/rsLoRA/AdaLoRA/GLoRA vs PyTorch logits, KV cache, generation, SmolLM2.
mod llama;
// rankfold-train data: JSONL readers and errors, ChatML labels, packing, padding, seeded order, IMDB splits.
mod data;
// Trainer core: resume bit for bit, accumulation vs whole batches, schedule in metrics, atomic checkpoints.
mod trainer;
// Recipes and runs: recipe errors, flags over files, gathered LM loss vs full logits, label accuracy, train → eval.
mod recipes;
// Byte-level BPE tokenizer vs HF tokenizers fixtures (small BPE, SmolLM2 from GGUF), round trips, errors.
mod tokenizer;
// BERT encoder and WordPiece: tiny BertModel vs PyTorch (padding, token types, prefixed names), tokenizers ids, MiniLM, LoRA classifier.
mod bert;
// The rankfold binary: forward / merge / inspect / generate on the PyTorch fixtures, errors, NF4 loading.
mod cli;
