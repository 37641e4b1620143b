"""PyTorch + PEFT peer of benches/train_step.rs for `cargo xtask bench --peers`: one LoRA training step.

numpy_peers.py imports this module and hands it the "train_step" workload:
    {"kind": "train_step", "name": "train_step/lora_f32", "shape": "<batch>x<seq>", "batch": B, "seq": T}
The step is the bench's, as a transformers + PEFT user writes it: a randomly initialized LlamaForCausalLM (6
layers, hidden 512, 8 heads and 8 KV heads, intermediate 1376, vocab 8192, untied embeddings, f32, transformers'
default attention), LoRA r = 8, alpha = 16, no dropout on q_proj and v_proj through `get_peft_model`, AdamW (lr
1e-4) over the adapter's tensors; random tokens, each row's targets its tokens shifted by one (the last wrapping
around), the mean cross-entropy over all B·T positions; forward, backward, optimizer step, zero_grad.
The model shape must stay equal to `model_config()` in benches/train_step.rs.

Run alone, it prints the median step time: `python train_step_peers.py [threads] [steps]`.
"""

import contextlib
import statistics
import sys
import time

# The model of benches/train_step.rs.
CONFIG = dict(
    vocab_size=8192,
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=6,
    num_attention_heads=8,
    num_key_value_heads=8,
    head_dim=64,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    max_position_embeddings=2048,
)
RANK, ALPHA, LR = 8, 16, 1e-4


class Peft:
    """torch, transformers and peft, imported, with torch's intra-op pool set to `threads`."""

    def __init__(self, torch, transformers, peft, threads):
        self.torch, self.transformers, self.peft = torch, transformers, peft
        torch.set_num_threads(threads)

    def describe(self):
        """One line: versions and threads."""
        return "torch {} + transformers {} + peft {} ({} threads)".format(
            self.torch.__version__, self.transformers.__version__, self.peft.__version__, self.torch.get_num_threads()
        )


def load(threads, log):
    """Imports torch, transformers and peft, or returns None after a note when one is missing."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            import peft
            import torch
            import transformers
    except Exception as e:
        log(f"note: skipping the PyTorch+PEFT peer: cannot import torch, transformers and peft ({type(e).__name__}: {e})")
        return None
    return Peft(torch, transformers, peft, threads)


def step_seconds(p, batch, seq, steps, warmup=2, cpu=None):
    """The median wall time of `steps` training steps after `warmup` untimed ones (the first allocates AdamW's
    moments). When `cpu` is a list, the process's CPU seconds per timed step are appended to it (a measure that
    other processes on a shared machine disturb less than wall time)."""
    torch, transformers, peft = p.torch, p.transformers, p.peft
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**CONFIG)
    model = transformers.LlamaForCausalLM(cfg).to(torch.float32)
    lora = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = peft.get_peft_model(model, lora)
    model.train()
    opt = torch.optim.AdamW([t for t in model.parameters() if t.requires_grad], lr=LR)
    tokens = torch.randint(0, CONFIG["vocab_size"], (batch, seq))
    targets = torch.roll(tokens, shifts=-1, dims=1)

    def step():
        logits = model(input_ids=tokens).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, CONFIG["vocab_size"]), targets.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(warmup):
        step()
    times = []
    c0 = time.process_time()
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if cpu is not None:
        cpu.append((time.process_time() - c0) / steps)
    return statistics.median(times)


def train_step(p, w, quick):
    """Seconds per step for a "train_step" workload."""
    return step_seconds(p, w["batch"], w["seq"], 3 if quick else 10)


if __name__ == "__main__":
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    p = load(threads, lambda m: print(m, file=sys.stderr))
    if p is None:
        sys.exit(1)
    cpu = []
    s = step_seconds(p, 8, 128, steps, cpu=cpu)
    print(f"{p.describe()}: {s * 1e3:.1f} ms per step (median), {8 * 128 / s:.0f} tokens/s, CPU {cpu[0] * 1e3:.0f} ms per step")
