"""(1) Time per λ point, the evaluation excluded: pemnb's engine vs what a competent peft user writes.

Every side composes two LoRA modules with peft's ``linear`` rule at each λ of the grid and puts the
result into a live model; all sides give the same model (checked on logits). Set-up is inside the timed
part on the pemnb side (``pair()`` and the ``StateWriter`` are built by every timed call and spread
over the grid); the peft sides keep one live adapter and the modules in peft's key layout, prepared
once outside the timing, as a user would have them. The sides:

- engine: ``pemnb.sweep.sweep`` with ``pair("linear", θ₁, θ₂)`` (checks once per sweep, batched
  ``_foreach`` arithmetic, one batched copy into the parameters with ``write_state``'s checks);
- ``load_state_dict``: the composed tensors (a dict comprehension over peft's keys) loaded into the one
  live adapter with ``model.load_state_dict(composed, strict=False)``;
- ``set_peft_model_state_dict``: the same through peft's loader (keys without the adapter name);
- ``add_weighted_adapter``: peft's own composition, a new adapter per λ (+ ``set_adapter``, and
  ``delete_adapter`` so adapters do not pile up);
- unchecked ``copy_`` loop: the composed tensors copied into parameters looked up once, no checks — the
  floor, to show what the engine's checks cost;
- general path: ``merge_methods.compose`` + ``modules.write_state`` per point (every check per point).

Row (1b) adds the same SST-2 evaluation to the engine and the ``load_state_dict`` side.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from pemnb import data, merge_methods as M
from pemnb import sweep as SW
from pemnb.backbones import load_backbone
from pemnb.evaluate import EvalBatches, classify
from pemnb.modules import attach, canonical_key, read_state, write_state

from .common import alternate, peak_rss_mib

BACKBONE, R, ALPHA = "minilm-l6", 8, 16


def _random_states(model, seeds=(1, 2)):
    states = []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        states.append({k: 0.05 * torch.randn(v.shape, generator=g) for k, v in read_state(model).items()})
    return states


def _peft_model(states, names):
    """A peft model with one adapter per state (LoRA r, α on query/value), factors copied in."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    model, _ = load_backbone(BACKBONE, "classification", 2, seed=0, device="cpu")
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["query", "value"])
    model = get_peft_model(model, cfg, adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, cfg)
    with torch.no_grad():
        for layer_name, layer in model.named_modules():
            if isinstance(layer, LoraLayer):
                t = canonical_key(layer_name)
                for adapter, state in zip(names, states):
                    layer.lora_A[adapter].weight.copy_(state[f"{t}.lora_A.weight"])
                    layer.lora_B[adapter].weight.copy_(state[f"{t}.lora_B.weight"])
    model.eval()
    return model


def _linear_coefficients(keys, w):
    """peft's ``linear`` split of weight w over a key's factor: sign(w)√|w| on A, √|w| on B."""
    root = math.sqrt(abs(w))
    return [math.copysign(root, w) if ".lora_A." in k else root for k in keys]


def run(n_eval: int = 64, grid_points: int = 11, repeat: int = 5, repeat_eval: int = 3) -> dict:
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    torch.manual_seed(0)
    base, tok = load_backbone(BACKBONE, "classification", 2, seed=0, device="cpu")
    engine = attach(base, "lora", r=R, alpha=ALPHA, init_seed=0, with_head=False)
    engine.eval()
    s1, s2 = _random_states(engine)
    grid = np.linspace(0, 1, grid_points).round(6).tolist()
    ds = data.subsample(data.load("glue/sst2", "validation"), n_eval, seed=0)
    batches = EvalBatches(data.tokenize_classification(ds, "glue/sst2", tok, 128), tok.pad_token_id, 64)
    evaluate = functools.partial(classify, batches=batches, task="glue/sst2")

    # --- the peft user's side: one live adapter, the two modules in peft's key layout (prepared once)
    live = _peft_model([s1], ["default"])
    lora_params = {n: p for n, p in live.named_parameters() if ".lora_" in n}
    peft_key = {canonical_key(n.replace(".default", "")): n for n in lora_params}   # canonical → live name
    keys = [peft_key[k] for k in s1]
    first, second = [s1[k] for k in s1], [s2[k] for k in s1]
    saved_keys = list(get_peft_model_state_dict(live))            # keys without the adapter name
    saved_of = {n.replace(".default", ""): n for n in keys}
    saved_order = [keys.index(saved_of[k]) for k in saved_keys]
    weighted = _peft_model([s1, s2], ["m1", "m2"])
    params_in_order = [lora_params[k] for k in keys]

    def composed(lam):  # what a user writes: peft's linear rule as a dict comprehension
        c1, c2 = _linear_coefficients(keys, lam), _linear_coefficients(keys, 1 - lam)
        return [a * x + b * y for a, x, b, y in zip(c1, first, c2, second)]

    def point_load_state_dict(lam):
        live.load_state_dict(dict(zip(keys, composed(lam))), strict=False)

    def point_set_peft(lam):
        values = composed(lam)
        set_peft_model_state_dict(live, {k: values[i] for k, i in zip(saved_keys, saved_order)})

    @torch.no_grad()
    def point_copy(lam):
        for p, v in zip(params_in_order, composed(lam)):
            p.copy_(v)

    def point_weighted(lam):
        weighted.add_weighted_adapter(["m1", "m2"], [lam, 1 - lam], "mix", combination_type="linear")
        weighted.set_adapter("mix")
        weighted.set_adapter("m1")
        weighted.delete_adapter("mix")

    def point_general(lam):
        write_state(engine, M.compose("linear", [s1, s2], [lam, 1 - lam]))

    def engine_sweep(ev=None):
        with SW.restored(engine) as writer:  # as a chapter sweeps: the live module given back after
            return SW.sweep(SW.pair("linear", s1, s2), grid, SW.in_place(engine, ev or (lambda m: {}), writer),
                            progress=False)

    def loop(point):
        return lambda: [point(lam) for lam in grid]

    def loop_eval(point, model):
        return lambda: [(point(lam), evaluate(model)) for lam in grid]

    # --- checks: every side gives the engine's model (logits at λ = 0.3), pair = compose bit for bit
    SW.StateWriter(engine)(SW.pair("linear", s1, s2)(0.3))
    want = batches.logits(engine)
    diffs = {}
    for name, point in (("load_state_dict", point_load_state_dict), ("set_peft_model_state_dict", point_set_peft),
                        ("copy_loop", point_copy)):
        point(0.3)
        diffs[name] = float(np.abs(batches.logits(live) - want).max())
    weighted.add_weighted_adapter(["m1", "m2"], [0.3, 0.7], "mix", combination_type="linear")
    weighted.set_adapter("mix")
    diffs["add_weighted_adapter"] = float(np.abs(batches.logits(weighted) - want).max())
    weighted.set_adapter("m1")
    weighted.delete_adapter("mix")
    same_bits = all(torch.equal(SW.pair(m, s1, s2)(lam)[k], M.compose(m, [s1, s2], [lam, 1 - lam])[k])
                    for m in ("linear", "paper") for lam in grid for k in s1)

    t = alternate({"engine": engine_sweep, "load_state_dict": loop(point_load_state_dict),
                   "set_peft_model_state_dict": loop(point_set_peft), "add_weighted_adapter": loop(point_weighted),
                   "copy_loop": loop(point_copy), "general": loop(point_general)}, repeat)
    t = {k: v / len(grid) for k, v in t.items()}
    te = alternate({"engine": lambda: engine_sweep(evaluate),
                    "load_state_dict": loop_eval(point_load_state_dict, live)}, repeat_eval)
    te = {k: v / len(grid) for k, v in te.items()}
    return {
        "backbone": BACKBONE, "lora": f"r={R}, alpha={ALPHA}, query+value", "tensors": len(s1),
        "parameters": int(sum(v.numel() for v in s1.values())), "grid_points": len(grid), "repeat": repeat,
        "repeat_eval": repeat_eval, "n_eval": n_eval, "max_abs_logit_diff": diffs, "pair_equals_compose": same_bits,
        "s_per_point": t, "s_per_point_with_eval": te,
        "engine_peak_mib": peak_rss_mib(engine_sweep), "load_state_dict_peak_mib": peak_rss_mib(loop(point_load_state_dict)),
    }


if __name__ == "__main__":
    print(run())
