"""bitsandbytes peers for `cargo xtask bench --peers`: CPU NF4 quantize and dequantize, and one AdamW8bit step,
timed in-process.

numpy_peers.py imports this module and hands it the "nf4" workloads:
    {"kind": "nf4", "name": "nf4/quantize" | "nf4/dequantize", "shape": "<dtype>/<n>",
     "op": "quantize" | "dequantize", "dtype": "f32" | "f16" | "bf16", "n": n, "blocksize": 64}
They mirror benches/nf4.rs: `quantize` reads n values of dtype and writes the packed codes and the f32 block
scales (no double quantization: compress_statistics=False); `dequantize` writes n values of dtype. The calls are
bitsandbytes' public API as a user makes them, so each call allocates its outputs (bitsandbytes registers no CPU
kernel for `dequantize_4bit(out=...)`), and the first-touch page faults of a fresh output of tens of MB are a
large part of a dequantize call's time, where rankfold's bench writes into one reused buffer. In bitsandbytes
0.50 the CPU quantize runs the generic torch code and the CPU dequantize runs the native library's kernel when it
loaded; `describe` says which.

torch and bitsandbytes are imported only when a workload needs them, so a Python with numpy alone still serves
the numpy peers; `load` returns None (after a note on stderr) when either is missing.
"""

import contextlib
import copy
import sys


class Bnb:
    """torch and bitsandbytes, imported, with torch's intra-op pool set to `threads`."""

    def __init__(self, torch, bnb, threads):
        self.torch = torch
        self.bnb = bnb
        self.threads = threads
        torch.set_num_threads(threads)
        self.dtypes = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}

    def describe(self):
        """One line: versions, threads and whether the native CPU library loaded."""
        try:
            from bitsandbytes.cextension import ErrorHandlerMockBNBNativeLibrary, lib

            # bitsandbytes registers its native CPU kernels exactly when the library is not this stand-in.
            missing = isinstance(lib, ErrorHandlerMockBNBNativeLibrary)
            native = "native library not loaded: generic torch code" if missing else "native library loaded"
        except Exception as e:  # The check is informative only; a failure to tell is reported, not fatal.
            native = f"native CPU library unknown ({type(e).__name__})"
        return "bitsandbytes {} (torch {}, {} threads, {})".format(
            self.bnb.__version__, self.torch.__version__, self.torch.get_num_threads(), native
        )


def load(threads, log):
    """Imports torch and bitsandbytes, or returns None after a note when either is missing or fails to import."""
    try:
        # Some bitsandbytes builds print notices at import; stdout carries the JSON answer, so they go to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            import torch
            import bitsandbytes
            import bitsandbytes.functional  # noqa: F401 (the API that the workloads call)
    except Exception as e:
        log(f"note: skipping the bitsandbytes peers: cannot import torch and bitsandbytes ({type(e).__name__}: {e})")
        return None
    return Bnb(torch, bitsandbytes, threads)


def data(torch, n, dtype, seed):
    """n values spread over [-1.5, 1.5) like benches/nf4.rs, in dtype."""
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(n, generator=g) - 0.5) * 3.0).to(dtype)


def nf4(b, w, quick, median_seconds, rotate_bytes):
    """Median seconds of one bitsandbytes call for the workload `w`, or None when its dtype is not supported."""
    torch, F = b.torch, b.bnb.functional
    dtype = b.dtypes.get(w["dtype"])
    if dtype is None:
        return None
    n, blocksize = w["n"], w["blocksize"]

    def quantize(x):
        return F.quantize_4bit(x, blocksize=blocksize, quant_type="nf4", compress_statistics=False)

    if w["op"] == "quantize":
        # The inputs rotate through enough copies to exceed the last-level cache, as the GEMM operands do.
        in_bytes = n * torch.empty((), dtype=dtype).element_size()
        copies = min(16, max(1, -(-rotate_bytes // max(1, in_bytes))))
        xs = [data(torch, n, dtype, seed) for seed in range(copies)]

        def call(i):
            quantize(xs[i % copies])

    elif w["op"] == "dequantize":
        q, state = quantize(data(torch, n, dtype, 0))
        # The packed codes and block scales rotate too; each copy gets its own absmax tensor.
        in_bytes = q.numel() * q.element_size() + state.absmax.numel() * 4
        copies = min(16, max(1, -(-rotate_bytes // max(1, in_bytes))))
        pairs = [(q, state)]
        for _ in range(copies - 1):
            s = copy.copy(state)
            s.absmax = state.absmax.clone()
            pairs.append((q.clone(), s))

        def call(i):
            qi, si = pairs[i % copies]
            F.dequantize_4bit(qi, si)

    else:
        return None
    # One call of either op over 16 M values takes tens to hundreds of milliseconds on two threads.
    return median_seconds(call, 1, 0.1 if quick else 0.5, 3 if quick else 7)


def adamw8bit(b, w, quick, median_seconds):
    """Median seconds of one `bnb.optim.AdamW8bit` step on the CPU over `tensors` f32 tensors [rows, cols] with
    uniform values and gradients (as benches/optim.rs), its states allocated by a first step."""
    torch = b.torch
    g = torch.Generator().manual_seed(0)
    params = []
    for _ in range(w["tensors"]):
        p = (torch.rand(w["rows"], w["cols"], generator=g) * 2 - 1).requires_grad_(True)
        p.grad = (torch.rand(w["rows"], w["cols"], generator=g) * 2 - 1) * 1e-2
        params.append(p)
    opt = b.bnb.optim.AdamW8bit(params)
    opt.step()
    return median_seconds(lambda _: opt.step(), 1, 0.2 if quick else 1.0, 3 if quick else 5)
