#!/usr/bin/env python3
"""Dense attention baseline on the GPU machine: PyTorch SDPA (cuDNN and FlashAttention backends).

The comparison point of issue 5 / DESIGN §6: one attention layer of Llama-3-8B shape (Hq 32,
Hkv 8, D 128, bf16), KV of one layer on the GPU, decode (one query token per sequence) at batch
1 and 8 and contexts up to 3M, and the prefill of one 32K chunk at the end of a 128K and a 1M
context (causal, lower-right aligned). Also measures the device-to-device copy bandwidth (bytes
read + written) that the kernels' achieved bandwidth is compared with.

Timing: CUDA events around each call after warm-up; the median of --reps calls. Inputs are
random (never zeros). Every backend/shape that fails (unsupported, out of memory) is recorded
with its error instead of a time. Run with the GPU machine's python3 (PyTorch 2.11):

  python3 tests/bench/sdpa_baseline.py --json $OUT/sdpa.json
"""

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}


def time_ms(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), times


def copy_bandwidth(gib, reps):
    n = int(gib * (1 << 30)) // 2
    src = torch.randn(n, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    ms, _ = time_ms(lambda: dst.copy_(src), 3, reps)
    bytes_moved = 2 * src.numel() * src.element_size()
    del src, dst
    torch.cuda.empty_cache()
    return {"bytes": bytes_moved, "median_ms": ms, "gb_per_s": bytes_moved / ms / 1e6}


def run_sdpa(q, k, v, backend, **kw):
    with sdpa_kernel(BACKENDS[backend]):
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)


def decode_case(batch, context, backend, args):
    hq, hkv, d = 32, 8, 128
    rec = {"kind": "decode", "backend": backend, "batch": batch, "context": context}
    try:
        q = torch.randn(batch, hq, 1, d, dtype=torch.bfloat16, device="cuda")
        k = torch.randn(batch, hkv, context, d, dtype=torch.bfloat16, device="cuda")
        v = torch.randn(batch, hkv, context, d, dtype=torch.bfloat16, device="cuda")
        reps = args.reps if context * batch <= (1 << 22) else max(5, args.reps // 4)
        ms, _ = time_ms(lambda: run_sdpa(q, k, v, backend), args.warmup, reps)
        kv_bytes = 2 * k.numel() * k.element_size()
        rec.update(median_ms=ms, kv_bytes=kv_bytes, gb_per_s=kv_bytes / ms / 1e6, reps=reps)
    except Exception as e:  # unsupported shape/backend, out of memory: recorded, not fatal
        rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    finally:
        q = k = v = None
        torch.cuda.empty_cache()
    return rec


def prefill_case(chunk, context, backend, args):
    from torch.nn.attention.bias import causal_lower_right

    hq, hkv, d = 32, 8, 128
    rec = {"kind": "prefill", "backend": backend, "chunk": chunk, "context": context}
    try:
        q = torch.randn(1, hq, chunk, d, dtype=torch.bfloat16, device="cuda")
        k = torch.randn(1, hkv, context, d, dtype=torch.bfloat16, device="cuda")
        v = torch.randn(1, hkv, context, d, dtype=torch.bfloat16, device="cuda")
        mask = causal_lower_right(chunk, context)
        ms, _ = time_ms(lambda: run_sdpa(q, k, v, backend, attn_mask=mask), 1, args.prefill_reps)
        # Causal, lower-right: query i of the chunk sees context - chunk + i + 1 keys.
        pairs = chunk * (context - chunk) + chunk * (chunk + 1) // 2
        flops = 4 * pairs * hq * d
        rec.update(median_ms=ms, flops=flops, tflop_per_s=flops / ms / 1e9, reps=args.prefill_reps)
    except Exception as e:
        rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    finally:
        q = k = v = None
        torch.cuda.empty_cache()
    return rec


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contexts", default="131072,262144,524288,1048576,2097152,3145728")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--prefill_contexts", default="131072,1048576")
    p.add_argument("--prefill_chunk", type=int, default=32768)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--prefill_reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json", default="")
    args = p.parse_args()

    t0 = time.time()
    props = torch.cuda.get_device_properties(0)
    out = {
        "device": props.name,
        "sms": props.multi_processor_count,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "copy": copy_bandwidth(4.0, 20),
        "cases": [],
    }
    print(f"device {props.name}; copy {out['copy']['gb_per_s']:.0f} GB/s", flush=True)
    for batch in [int(x) for x in args.batches.split(",")]:
        for context in [int(x) for x in args.contexts.split(",")]:
            for backend in BACKENDS:
                rec = decode_case(batch, context, backend, args)
                out["cases"].append(rec)
                what = rec.get("error") or f"{rec['median_ms']:.3f} ms ({rec['gb_per_s']:.0f} GB/s)"
                print(f"decode b={batch} ctx={context} {backend}: {what}", flush=True)
    for context in [int(x) for x in args.prefill_contexts.split(",")]:
        for backend in BACKENDS:
            rec = prefill_case(args.prefill_chunk, context, backend, args)
            out["cases"].append(rec)
            what = rec.get("error") or f"{rec['median_ms']:.1f} ms ({rec['tflop_per_s']:.0f} TFLOP/s)"
            print(f"prefill chunk={args.prefill_chunk} ctx={context} {backend}: {what}", flush=True)
    out["wall_s"] = time.time() - t0
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
