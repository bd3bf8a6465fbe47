"""Train one module: seeded, dynamically padded batches, a progress bar, resumable after an interruption.

Built on accelerate, so ``accelerate launch`` runs the same loop on several GPUs (data-parallel).
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .modules import kind_of, read_state, save_module, load_module


def pad_collate(pad_token_id: int) -> Callable[[list[dict]], dict]:
    """Collate rows of unequal length: pad to the longest row in the batch (dynamic padding).

    input_ids are padded with the pad token, attention masks with 0, token-level labels with -100
    (ignored by the loss), scalar labels are stacked.
    """
    fill = {"input_ids": pad_token_id, "attention_mask": 0, "labels": -100,
            "decoder_input_ids": pad_token_id, "decoder_attention_mask": 0}

    def collate(rows: list[dict]) -> dict:
        out = {}
        for key in rows[0]:
            vals = [r[key] for r in rows]
            if isinstance(vals[0], (list, tuple)):
                width = max(len(v) for v in vals)
                pad = fill.get(key, 0)
                out[key] = torch.tensor([list(v) + [pad] * (width - len(v)) for v in vals])
            else:
                out[key] = torch.tensor(vals)
        return out

    return collate


def batch_order(n_examples: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """The index of every example of every step, fixed by the seed (epochs of fresh permutations).

    Fixing the whole order up front is what makes a resumed run identical to an uninterrupted one.
    """
    if n_examples == 0:
        raise ValueError("no training examples")
    rng = np.random.default_rng(seed)
    need = steps * batch_size
    order: list[int] = []
    while len(order) < need:
        order.extend(rng.permutation(n_examples).tolist())
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


@dataclass
class TrainResult:
    """What a training run did."""

    steps: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0


def _save_checkpoint(ckpt: Path, model, optimizer, scheduler, step: int, losses: list[float]) -> None:
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_module(tmp / "module.safetensors", read_state(model), kind_of(model))
    rng = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():  # dropout on the GPU draws from the CUDA generators
        rng["cuda_rng"] = torch.cuda.get_rng_state_all()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **rng},
               tmp / "optim.pt")
    (tmp / "progress.json").write_text(json.dumps({"step": step, "losses": losses}))
    shutil.rmtree(ckpt, ignore_errors=True)
    tmp.replace(ckpt)  # the previous checkpoint is replaced only once the new one is complete


def _load_checkpoint(ckpt: Path, model, optimizer, scheduler) -> tuple[int, list[float]]:
    from .modules import write_state

    state, _, _ = load_module(ckpt / "module.safetensors")
    write_state(model, state)
    extra = torch.load(ckpt / "optim.pt", weights_only=True)  # never unpickle arbitrary objects
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["torch_rng"])
    if "cuda_rng" in extra and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(extra["cuda_rng"])
    progress = json.loads((ckpt / "progress.json").read_text())
    return progress["step"], progress["losses"]


def train_module(model, examples: Sequence[dict], *, steps: int, lr: float, batch_size: int, seed: int,
                 pad_token_id: int, weight_decay: float = 0.0, warmup_ratio: float = 0.06,
                 checkpoint_dir: str | Path | None = None, checkpoint_every: int = 100,
                 desc: str = "train", progress: bool = True,
                 stop_after: int | None = None) -> TrainResult:
    """Train the module attached to `model` (see modules.attach) on tokenised `examples`, in place.

    Every example is a dict of lists/scalars the model's forward takes (labels included); batches are
    padded per batch. With `checkpoint_dir`, progress is saved every `checkpoint_every` steps and a
    re-run continues from the last checkpoint. `stop_after` interrupts after that many steps (used to
    test resumption).
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    kind_of(model)  # fail early if no module is attached
    # Train where the model is (a smoke model on the CPU stays there even when a GPU exists); only a
    # multi-process launch moves it, to each process's own device. accelerate's state is a per-process
    # singleton, so letting it place models would move every later model to the first one's device.
    accelerator = Accelerator(device_placement=False)
    if accelerator.num_processes > 1:
        model.to(accelerator.device)
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    random.seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * steps), steps)
    start, losses = 0, []
    ckpt = Path(checkpoint_dir) / "checkpoint" if checkpoint_dir else None
    if ckpt is not None and ckpt.exists():
        start, losses = _load_checkpoint(ckpt, model, optimizer, scheduler)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    collate = pad_collate(pad_token_id)
    order = batch_order(len(examples), steps, batch_size * accelerator.num_processes, seed)
    t0 = time.perf_counter()
    wrapped.train()
    bar = tqdm(total=steps, initial=start, desc=desc, disable=not progress or not accelerator.is_main_process,
               dynamic_ncols=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    for step in range(start, steps):
        idx = order[step][rank::world]  # each process takes its share of the global batch
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx]).items()}
        loss = wrapped(**batch).loss
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        done = step + 1
        if ckpt is not None and (done % checkpoint_every == 0 or done == steps) and accelerator.is_main_process:
            _save_checkpoint(ckpt, model, optimizer, scheduler, done, losses)
        if stop_after is not None and done - start >= stop_after and done < steps:
            bar.close()
            model.eval()
            return TrainResult(done, losses, time.perf_counter() - t0, start)
    bar.close()
    model.eval()
    if not all(math.isfinite(x) for x in losses):
        raise FloatingPointError(f"{desc}: the loss became NaN/Inf; lower the learning rate")
    return TrainResult(steps, losses, time.perf_counter() - t0, start)
