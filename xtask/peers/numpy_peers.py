"""Peers for `cargo xtask bench --peers`: f32 GEMM and AdamW in numpy, NF4 in bitsandbytes, timed in-process.

Reads a JSON request on stdin (written by xtask/src/peers.rs):
    {"quick": bool, "threads": int, "workloads": [
        {"kind": "gemm", "name": "matmul/f32", "shape": "MxNxK", "m": M, "n": N, "k": K},
        {"kind": "adamw", "name": "adamw/f32", "shape": "TxRxC", "tensors": T, "rows": R, "cols": C},
        {"kind": "nf4", "name": "nf4/quantize", "shape": "bf16/N", "op": "quantize", "dtype": "bf16", "n": N,
         "blocksize": 64},
        {"kind": "train_step", "name": "train_step/lora_f32", "shape": "BxT", "batch": B, "seq": T}]}
and prints on stdout
    {"numpy": version, "blas": "one line", "bnb": "one line" or null, "peft": "one line" or null,
     "results": [{"name", "shape", "seconds", "library": "numpy" | "bnb" | "peft"}]}
where seconds is the median time of one call over several timed repeats after a warm-up. Progress and the BLAS
line also go to stderr. xtask sets the BLAS and OpenMP thread counts in the environment before this starts.
The nf4 workloads run in bitsandbytes (bnb_peers.py, beside this file) when torch and bitsandbytes import, and
are skipped with a note on stderr when they do not, so a Python with numpy alone still serves the rest; the
train_step workload runs in PyTorch + PEFT (train_step_peers.py) under the same rule.

The workloads mirror benches/matmul.rs and benches/optim.rs: GEMM operands rotate through enough copies to exceed
a 32 MiB last-level cache, and AdamW uses the same hyperparameters. AdamW is as fused as numpy allows: every op is
in place or into one preallocated temporary per tensor: 13 elementwise passes per tensor and step.
"""

import json
import statistics
import sys
import time

import numpy as np

import bnb_peers
import train_step_peers

ROTATE_BYTES = 64 << 20

# The hyperparameters of benches/optim.rs.
LR, BETA1, BETA2, EPS, WEIGHT_DECAY = 1e-3, 0.9, 0.999, 1e-8, 0.01


def log(msg):
    print(f"numpy_peers: {msg}", file=sys.stderr, flush=True)


def blas_line(threads):
    """Which BLAS library, version and kernel (core type) numpy uses, from threadpoolctl when it is installed."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return f"BLAS unknown (threadpoolctl not installed), {threads} threads requested"
    parts = []
    for pool in threadpool_info():
        if pool.get("user_api") != "blas":
            continue
        parts.append(
            "{} {} (kernel {}), {} threads".format(
                pool.get("internal_api", "?"),
                pool.get("version", "?"),
                pool.get("architecture", "?"),
                pool.get("num_threads", "?"),
            )
        )
    return "BLAS " + ("; ".join(parts) if parts else "not found by threadpoolctl")


def median_seconds(call, min_calls, min_seconds, repeats):
    """Median seconds per call: one warm-up call, then `repeats` timed batches of enough calls to last
    `min_seconds` (at least `min_calls` each)."""
    t0 = time.perf_counter()
    call(0)
    once = max(time.perf_counter() - t0, 1e-9)
    per_batch = max(min_calls, int(min_seconds / once))
    times, i = [], 1
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(per_batch):
            call(i)
            i += 1
        times.append((time.perf_counter() - t0) / per_batch)
    return statistics.median(times)


def gemm(w, quick, rng):
    m, n, k = w["m"], w["n"], w["k"]
    copies = min(64, max(1, -(-ROTATE_BYTES // (4 * (m * k + k * n)))))
    ops = [
        (rng.uniform(-1, 1, (m, k)).astype(np.float32), rng.uniform(-1, 1, (k, n)).astype(np.float32))
        for _ in range(copies)
    ]

    def call(i):
        a, b = ops[i % copies]
        # A fresh output per call, as rankfold's matmul allocates one.
        np.matmul(a, b)

    return median_seconds(call, 1, 0.05 if quick else 0.2, 3 if quick else 7)


class AdamW:
    """PyTorch's AdamW (decoupled weight decay, bias-corrected moments, eps outside the square root)."""

    def __init__(self, params):
        self.params = params
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.tmp = [np.empty_like(p) for p in params]
        self.t = 0

    def step(self, grads):
        self.t += 1
        bc1 = 1.0 - BETA1**self.t
        bc2 = 1.0 - BETA2**self.t
        # step·m/(sqrt(v)/sqrt(bc2) + eps) = (step·sqrt(bc2))·m/(sqrt(v) + eps·sqrt(bc2)), one pass fewer.
        scale = np.float32(LR / bc1 * np.sqrt(bc2))
        eps = np.float32(EPS * np.sqrt(bc2))
        for p, g, m, v, tmp in zip(self.params, grads, self.m, self.v, self.tmp):
            p *= np.float32(1.0 - LR * WEIGHT_DECAY)
            # m = β1·m + (1-β1)·g, written as m += (1-β1)·(g - m).
            np.subtract(g, m, out=tmp)
            tmp *= np.float32(1.0 - BETA1)
            m += tmp
            # v = β2·v + (1-β2)·g².
            np.multiply(g, g, out=tmp)
            tmp *= np.float32(1.0 - BETA2)
            v *= np.float32(BETA2)
            v += tmp
            # p -= scale · m / (sqrt(v) + eps).
            np.sqrt(v, out=tmp)
            tmp += eps
            np.divide(m, tmp, out=tmp)
            tmp *= scale
            p -= tmp


def adamw(w, quick, rng):
    shape = (w["rows"], w["cols"])
    params = [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(w["tensors"])]
    grads = [rng.uniform(-1e-2, 1e-2, shape).astype(np.float32) for _ in range(w["tensors"])]
    opt = AdamW(params)
    return median_seconds(lambda _: opt.step(grads), 1, 0.2 if quick else 1.0, 3 if quick else 5)


def main():
    req = json.load(sys.stdin)
    rng = np.random.default_rng(0)
    blas = blas_line(req["threads"])
    log(blas)
    # bitsandbytes is imported once, on the first nf4 workload; False until then, None when it is missing.
    bnb = False
    # torch, transformers and peft likewise, on the first train_step workload.
    peft = False
    results = []
    for w in req["workloads"]:
        if w["kind"] in ("nf4", "adamw8bit"):
            if bnb is False:
                bnb = bnb_peers.load(req["threads"], log)
                if bnb is not None:
                    log(bnb.describe())
            if bnb is None:
                continue
            if w["kind"] == "nf4":
                seconds = bnb_peers.nf4(bnb, w, req["quick"], median_seconds, ROTATE_BYTES)
            else:
                seconds = bnb_peers.adamw8bit(bnb, w, req["quick"], median_seconds)
            if seconds is None:
                log(f"skipping {w['name']} {w['shape']}: bitsandbytes has no such op or dtype")
                continue
            library = "bnb"
        elif w["kind"] == "train_step":
            if peft is False:
                peft = train_step_peers.load(req["threads"], log)
                if peft is not None:
                    log(peft.describe())
            if peft is None:
                continue
            seconds = train_step_peers.train_step(peft, w, req["quick"])
            library = "peft"
        elif w["kind"] in ("gemm", "adamw"):
            seconds = {"gemm": gemm, "adamw": adamw}[w["kind"]](w, req["quick"], rng)
            library = "numpy"
        else:
            log(f"skipping unknown workload kind {w['kind']!r}")
            continue
        log(f"{library} {w['name']} {w['shape']}: {seconds * 1e3:.3f} ms")
        results.append({"name": w["name"], "shape": w["shape"], "seconds": seconds, "library": library})
    described = bnb.describe() if bnb else None
    peft_line = peft.describe() if peft else None
    json.dump(
        {"numpy": np.__version__, "blas": blas, "bnb": described, "peft": peft_line, "results": results}, sys.stdout
    )
    print()


if __name__ == "__main__":
    main()
