"""Compute precision: an opt-in bfloat16 autocast for evaluation and training, and the check that says
whether it changes a chapter's predictions.

Weights, module states and the optimizer stay float32; under autocast the matrix products (linear
layers, attention) run in bfloat16, which CPUs with AVX-512 BF16 / AMX and recent GPUs do natively.
Turned on by a profile's ``autocast_bf16`` (see :mod:`pemnb.profiles`); :func:`bf16_agreement` is the
check that a profile may turn it on for a chapter.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch


def autocast_bf16(device, enabled: bool = True):
    """A context computing in bfloat16 on `device`'s kind (cpu, cuda); a no-op when not `enabled`."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bool(enabled))


def bf16_agreement(model, batches, repeat: int = 3) -> dict:
    """How bfloat16 autocast changes `model`'s evaluation on `batches` (a :class:`pemnb.evaluate.EvalBatches`,
    e.g. a chapter's own evaluation rows): {rows, agreement (share of equal predictions, argmax of the
    logits; None for a one-output regression head), max_abs_logit_diff, fp32_s, bf16_s, speedup}.

    Times are medians of `repeat` evaluations per side after one untimed evaluation of each, the two
    sides alternated so that a change in the machine's load hits both.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    saved = getattr(batches, "autocast_bf16", False)
    times = {False: [], True: []}
    logits = {}
    try:
        for bf16 in (False, True):       # warm-up, and the logits compared
            batches.autocast_bf16 = bf16
            logits[bf16] = batches.logits(model)
        for _ in range(repeat):
            for bf16 in (False, True):
                batches.autocast_bf16 = bf16
                t0 = time.perf_counter()
                batches.logits(model)
                times[bf16].append(time.perf_counter() - t0)
    finally:
        batches.autocast_bf16 = saved
    full, half = logits[False], logits[True]
    agree = None if full.shape[1] == 1 else float((full.argmax(1) == half.argmax(1)).mean())
    fp32_s, bf16_s = statistics.median(times[False]), statistics.median(times[True])
    return {"rows": int(full.shape[0]), "agreement": agree, "max_abs_logit_diff": float(np.abs(full - half).max()),
            "fp32_s": fp32_s, "bf16_s": bf16_s, "speedup": fp32_s / bf16_s}


def native_bf16(device) -> bool:
    """Whether `device` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with AVX-512
    BF16 or AMX (Linux /proc/cpuinfo flags). Elsewhere bfloat16 is emulated and slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve(setting, device) -> bool:
    """A profile's ``autocast_bf16`` (True, False or "auto") for `device`: "auto" is on where the
    hardware computes bfloat16 natively (:func:`native_bf16`)."""
    if setting == "auto":
        return native_bf16(device)
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"autocast_bf16 must be True, False or 'auto', got {setting!r}")
