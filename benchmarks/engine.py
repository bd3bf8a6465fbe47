"""(1) Time per λ point: pemnb's engine (``pemnb.sweep.sweep`` with ``pemnb.sweep.pair``: compose two
state dicts, copy the result into the live model with a ``StateWriter``) vs peft's
``add_weighted_adapter`` + ``set_adapter`` (+ ``delete_adapter``, so adapters do not pile up).

Both sides produce the same rank-r module (peft's ``linear`` combination), checked on logits. The
evaluation step is EXCLUDED from the headline timing (the engine is timed as a whole ``sweep`` call
with an evaluation that does nothing, so its set-up and the restore at the end are included, spread
over the grid). Two more rows: the general path (``merge_methods.compose`` + ``modules.write_state``
per point, with every check repeated per point), and both sides with the same SST-2 evaluation
(EvalBatches), to show what the saving is worth in a real sweep.
"""
from __future__ import annotations

import numpy as np
import torch

from pemnb import data, merge_methods as M
from pemnb import sweep as SW
from pemnb.backbones import load_backbone
from pemnb.evaluate import EvalBatches
from pemnb.modules import attach, canonical_key, read_state, write_state

from .common import median_seconds, peak_rss_mib

BACKBONE, R, ALPHA = "minilm-l6", 8, 16


def _random_states(model, seeds=(1, 2)):
    states = []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        states.append({k: 0.05 * torch.randn(v.shape, generator=g) for k, v in read_state(model).items()})
    return states


def _peft_model(states):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    model, _ = load_backbone(BACKBONE, "classification", 2, seed=0, device="cpu")
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["query", "value"])
    model = get_peft_model(model, cfg, adapter_name="m1")
    model.add_adapter("m2", cfg)
    with torch.no_grad():
        for name, layer in model.named_modules():
            if isinstance(layer, LoraLayer):
                t = canonical_key(name)
                for adapter, state in zip(("m1", "m2"), states):
                    layer.lora_A[adapter].weight.copy_(state[f"{t}.lora_A.weight"])
                    layer.lora_B[adapter].weight.copy_(state[f"{t}.lora_B.weight"])
    model.eval()
    return model


def run(n_eval: int = 64, grid_points: int = 11, repeat: int = 3) -> dict:
    torch.manual_seed(0)
    base, tok = load_backbone(BACKBONE, "classification", 2, seed=0, device="cpu")
    engine = attach(base, "lora", r=R, alpha=ALPHA, init_seed=0, with_head=False)
    engine.eval()
    s1, s2 = _random_states(engine)
    peft_model = _peft_model([s1, s2])
    grid = np.linspace(0, 1, grid_points).round(6).tolist()

    ds = data.subsample(data.load("glue/sst2", "validation"), n_eval, seed=0)
    batches = EvalBatches(data.tokenize_classification(ds, "glue/sst2", tok, 128), tok.pad_token_id, 64)

    writer = SW.StateWriter(engine)  # built once per model, like peft's adapters below

    def engine_sweep(method="linear", evaluate=None):
        compose = SW.pair(method, s1, s2)
        return lambda: SW.sweep(engine, compose, grid, evaluate or (lambda m: {}), progress=False, writer=writer)

    def general_point(lam):
        write_state(engine, M.compose("linear", [s1, s2], [lam, 1 - lam]))

    def peft_point(lam, evaluate=False):
        peft_model.add_weighted_adapter(["m1", "m2"], [lam, 1 - lam], "mix", combination_type="linear")
        peft_model.set_adapter("mix")
        if evaluate:
            batches.logits(peft_model)
        peft_model.set_adapter("m1")
        peft_model.delete_adapter("mix")

    # Same module on both sides: compare logits at one λ.
    SW.StateWriter(engine)(SW.pair("linear", s1, s2)(0.3))
    peft_model.add_weighted_adapter(["m1", "m2"], [0.3, 0.7], "mix", combination_type="linear")
    peft_model.set_adapter("mix")
    max_diff = float(np.abs(batches.logits(engine) - batches.logits(peft_model)).max())
    peft_model.set_adapter("m1")
    peft_model.delete_adapter("mix")
    # pair() is the pure functions, batched: same tensors bit for bit.
    same_bits = all(torch.equal(SW.pair(m, s1, s2)(lam)[k], M.compose(m, [s1, s2], [lam, 1 - lam])[k])
                    for m in ("linear", "paper") for lam in grid for k in s1)

    def loop(point, **kw):
        return lambda: [point(lam, **kw) for lam in grid]

    t_engine = median_seconds(engine_sweep(), repeat) / len(grid)
    t_engine_paper = median_seconds(engine_sweep("paper"), repeat) / len(grid)
    t_general = median_seconds(loop(general_point), repeat) / len(grid)
    t_peft = median_seconds(loop(peft_point), repeat) / len(grid)
    t_engine_eval = median_seconds(engine_sweep(evaluate=lambda m: {"n": len(batches.logits(m))}), 1) / len(grid)
    t_peft_eval = median_seconds(loop(peft_point, evaluate=True), 1) / len(grid)
    mem_engine = peak_rss_mib(engine_sweep())
    mem_peft = peak_rss_mib(loop(peft_point))
    return {
        "backbone": BACKBONE, "lora": f"r={R}, alpha={ALPHA}, query+value", "grid_points": len(grid),
        "repeat": repeat, "n_eval": n_eval, "max_abs_logit_diff": max_diff,
        "engine_s_per_point": t_engine, "engine_paper_s_per_point": t_engine_paper,
        "general_s_per_point": t_general, "ratio_general": t_peft / t_general, "pair_equals_compose": same_bits,
        "peft_s_per_point": t_peft, "ratio": t_peft / t_engine,
        "engine_with_eval_s": t_engine_eval, "peft_with_eval_s": t_peft_eval,
        "ratio_with_eval": t_peft_eval / t_engine_eval,
        "engine_peak_mib": mem_engine, "peft_peak_mib": mem_peft,
    }


if __name__ == "__main__":
    print(run())
