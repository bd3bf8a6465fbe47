"""Train one module: seeded, dynamically padded batches, a progress bar, resumable after an interruption.

Built on accelerate, so ``accelerate launch`` runs the same loop on several GPUs (data-parallel).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import precision
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


def steps_for_epochs(n_examples: int, epochs: float, batch_size: int) -> int:
    """Optimisation steps for `epochs` passes over `n_examples` at `batch_size`, at least one (the
    paper's Table 8 gives budgets in epochs; the training loop counts steps)."""
    if n_examples <= 0 or epochs <= 0 or batch_size <= 0:
        raise ValueError(f"need positive sizes, got n={n_examples}, epochs={epochs}, batch={batch_size}")
    return max(1, math.ceil(n_examples * epochs / batch_size))


def loss_units(example: dict, encoder_decoder: bool = False) -> int:
    """How many terms an example adds to the loss a transformers model averages over: 1 for a
    sequence label (classification, regression), its scored target tokens for an encoder-decoder,
    and for a decoder its scored tokens after the first (labels are shifted by one)."""
    labels = example["labels"]
    if not isinstance(labels, (list, tuple)):
        return 1
    scored = labels if encoder_decoder else labels[1:]
    return sum(1 for t in scored if t != -100)


def accumulation_steps(batch_size: int, micro_batch_size: int | None, processes: int = 1) -> int:
    """Forward/backward passes per optimisation step on each process."""
    share = math.ceil(batch_size / processes)
    return 1 if not micro_batch_size else math.ceil(share / micro_batch_size)


def accumulate_gradients(model, examples: Sequence[dict], batch: Sequence[int], *, collate, device,
                         micro_batch_size: int | None = None, encoder_decoder: bool = False,
                         accelerator=None, autocast_bf16: bool = False, scaler=None) -> float:
    """Backpropagate one global batch (indices into `examples`) in passes of ≤ `micro_batch_size` rows;
    returns the mean loss over this process's share. Gradients accumulate in `.grad`.

    Pass p's mean loss is weighted by units_p · processes / units_batch (:func:`loss_units`), so the
    summed gradient is the gradient of the whole batch's mean loss. Every process knows the whole
    batch (its order is fixed by the seed), so none needs to communicate the unit count; DDP's mean
    over processes supplies the 1 / processes. `scaler` (a GradScaler) scales the loss before each
    backward, for frozen fp16 weights whose small activation gradients would otherwise underflow.
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    total = sum(loss_units(examples[i], encoder_decoder) for i in batch)
    mine = list(batch)[rank::world]  # each process takes its share of the global batch
    size = micro_batch_size or len(mine)
    passes = [mine[i:i + size] for i in range(0, len(mine), size)]
    loss_sum, units_seen = 0.0, 0
    for n, part in enumerate(passes):
        units = sum(loss_units(examples[i], encoder_decoder) for i in part)
        if units == 0 and world == 1:  # nothing scored in this pass (the model's mean would be 0/0)
            continue
        inputs = {k: v.to(device) for k, v in collate([examples[i] for i in part]).items()}
        # Only the last pass synchronises gradients across processes (DDP all-reduces on backward).
        last = n == len(passes) - 1
        quiet = accelerator.no_sync(model) if (accelerator is not None and not last) else contextlib.nullcontext()
        with quiet:
            with precision.autocast_bf16(device, autocast_bf16):  # the forward only; backward follows its dtypes
                mean = model(**inputs).loss.float()
            scaled = mean * (units * world / total) if units else mean * 0.0
            if scaler is not None:
                scaled = scaler.scale(scaled)
            if accelerator is not None:
                accelerator.backward(scaled)
            else:
                scaled.backward()
        if units:
            loss_sum += float(mean.detach()) * units
            units_seen += units
    return loss_sum / units_seen if units_seen else float("nan")


@dataclass
class TrainResult:
    """What a training run did."""

    steps: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0


def default_checkpoint_every(steps: int) -> int:
    """Every 100 steps, or every tenth of a shorter run (so a short run killed midway loses little)."""
    return max(1, min(100, math.ceil(steps / 10)))


def _save_checkpoint(ckpt: Path, model, optimizer, scheduler, step: int, losses: list[float]) -> None:
    tmp, prev = ckpt.with_name(ckpt.name + ".tmp"), ckpt.with_name(ckpt.name + ".prev")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_module(tmp / "module.safetensors", read_state(model), kind_of(model))
    rng = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():  # dropout on the GPU draws from the CUDA generators
        rng["cuda_rng"] = torch.cuda.get_rng_state_all()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **rng},
               tmp / "optim.pt")
    (tmp / "progress.json").write_text(json.dumps({"step": step, "losses": losses}))
    # The previous checkpoint is replaced only once the new one is complete; killed between the two
    # renames, the run resumes from checkpoint.prev.
    if ckpt.exists():
        shutil.rmtree(prev, ignore_errors=True)
        os.replace(ckpt, prev)
    os.replace(tmp, ckpt)
    shutil.rmtree(prev, ignore_errors=True)


class DamagedCheckpoint(Exception):
    """A checkpoint file that cannot be read back (truncated, garbled, or of another run)."""


def _read_checkpoint(ckpt: Path, model, steps: int) -> tuple[dict, dict, dict]:
    """(module state, optimizer/scheduler/RNG states, progress) of a checkpoint folder, all checked
    before any of it touches the model; raises DamagedCheckpoint naming the file at fault."""
    from .modules import module_parameters

    def read(name, load):
        try:
            return load(ckpt / name)
        except Exception as e:  # safetensors, zip and JSON readers each raise their own kinds
            raise DamagedCheckpoint(f"{ckpt / name}: {type(e).__name__}: {e}") from None

    state, kind, _ = read("module.safetensors", load_module)
    extra = read("optim.pt", lambda p: torch.load(p, weights_only=True))  # never unpickle arbitrary objects
    progress = read("progress.json", lambda p: json.loads(p.read_text()))
    params = module_parameters(model)
    if kind != kind_of(model) or state.keys() != params.keys() or any(
            state[k].shape != params[k].shape for k in state):
        raise DamagedCheckpoint(f"{ckpt / 'module.safetensors'}: holds a module that does not fit this model")
    if not (isinstance(extra, dict) and {"optimizer", "scheduler", "torch_rng"} <= extra.keys()):
        raise DamagedCheckpoint(f"{ckpt / 'optim.pt'}: optimizer, scheduler or RNG state missing")
    step = progress.get("step") if isinstance(progress, dict) else None
    if not (isinstance(step, int) and 0 < step <= steps and len(progress.get("losses", ())) == step):
        raise DamagedCheckpoint(f"{ckpt / 'progress.json'}: step {step!r} does not fit a {steps}-step run")
    return state, extra, progress


def _resume(ckpt: Path, model, optimizer, scheduler, steps: int, discard: bool) -> tuple[int, list[float]]:
    """(step, losses) to continue from: the newest readable checkpoint written into model, optimizer,
    scheduler and RNG, or (0, []) without one. A damaged checkpoint is named in a warning and (when
    `discard`, i.e. on the process that writes checkpoints) deleted, never a crash; so is a temporary
    folder a killed writer left."""
    import warnings

    from .modules import write_state

    if discard:
        shutil.rmtree(ckpt.with_name(ckpt.name + ".tmp"), ignore_errors=True)
    for candidate in (ckpt, ckpt.with_name(ckpt.name + ".prev")):
        if not candidate.exists():
            continue
        try:
            state, extra, progress = _read_checkpoint(candidate, model, steps)
        except DamagedCheckpoint as e:
            warnings.warn(f"pemnb train: damaged checkpoint discarded ({e}); resuming from an older one "
                          "or from step 0", RuntimeWarning, stacklevel=3)
            if discard:
                shutil.rmtree(candidate, ignore_errors=True)
            continue
        write_state(model, state)
        optimizer.load_state_dict(extra["optimizer"])
        scheduler.load_state_dict(extra["scheduler"])
        torch.set_rng_state(extra["torch_rng"])
        if "cuda_rng" in extra and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(extra["cuda_rng"])
        return progress["step"], progress["losses"]
    return 0, []


def head_parameter_groups(model, lr: float, head_lr: float | None) -> list[dict]:
    """The optimizer's parameter groups: the trainable parameters at `lr`, except those of a head that
    peft trains beside the module (``modules_to_save``), which get `head_lr` when it is given.

    A fresh, randomly initialised head has to move much further than a LoRA factor does: at LoRA's
    rate, chapter 01's STS-B regression head stays near its initialisation and the Pearson stays near
    0 (see the README's "How a budget is chosen").
    """
    if lr <= 0 or (head_lr is not None and head_lr <= 0):
        raise ValueError(f"learning rates must be positive, got lr={lr}, head_lr={head_lr}")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head = [p for n, p in trainable if ".modules_to_save." in n] if head_lr is not None else []
    rest = [p for n, p in trainable if not (head_lr is not None and ".modules_to_save." in n)]
    return [{"params": rest, "lr": lr}] + ([{"params": head, "lr": head_lr}] if head else [])


def train_module(model, examples: Sequence[dict], *, steps: int, lr: float, batch_size: int, seed: int,
                 pad_token_id: int, weight_decay: float = 0.0, warmup_ratio: float = 0.06,
                 checkpoint_dir: str | Path | None = None, checkpoint_every: int | None = None,
                 checkpoint_seconds: float = 60.0, desc: str = "train", progress: bool = True,
                 stop_after: int | None = None, micro_batch_size: int | None = None,
                 autocast_bf16: bool = False, head_lr: float | None = None) -> TrainResult:
    """Train the module attached to `model` (see modules.attach) on tokenised `examples`, in place.

    Every example is a dict of lists/scalars the model's forward takes (labels included); batches are
    padded per batch. With `checkpoint_dir`, progress is saved every `checkpoint_every` steps (default:
    100, or a tenth of a shorter run) or every `checkpoint_seconds`, whichever comes first, and a re-run
    continues from the last checkpoint (a damaged one is discarded with a warning). `stop_after` interrupts after that many steps (used to
    test resumption).

    `batch_size` is the global batch of one optimisation step. It is shared out among the processes of
    an ``accelerate launch`` and cut into passes of at most `micro_batch_size` examples whose gradients
    accumulate; each pass's loss is weighted by its share of the batch's scored units (see
    :func:`loss_units`), so the gradient is the one-pass gradient of the whole batch whatever the
    number of processes and passes (to float rounding). `autocast_bf16` computes the forward passes in
    bfloat16 (:mod:`pemnb.precision`); parameters, gradients and the optimizer stay float32.

    `head_lr` is the learning rate of a classification head trained beside a LoRA or (IA)³ module
    (peft's ``modules_to_save`` copy, see :func:`head_parameter_groups`); None trains it at `lr`.
    """
    from accelerate import Accelerator
    from .progress import tqdm
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
    optimizer = torch.optim.AdamW(head_parameter_groups(model, lr, head_lr), lr=lr, weight_decay=weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * steps), steps)
    start, losses = 0, []
    ckpt = Path(checkpoint_dir) / "checkpoint" if checkpoint_dir else None
    if ckpt is not None:
        start, losses = _resume(ckpt, model, optimizer, scheduler, steps, discard=accelerator.is_main_process)
    every = checkpoint_every or default_checkpoint_every(steps)
    if every <= 0:
        raise ValueError(f"checkpoint_every must be positive, got {checkpoint_every}")
    last_save = time.monotonic()
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    collate = pad_collate(pad_token_id)
    if batch_size < accelerator.num_processes:
        raise ValueError(f"batch_size {batch_size} is smaller than the {accelerator.num_processes} processes "
                         "sharing it")
    if micro_batch_size is not None and micro_batch_size <= 0:
        raise ValueError(f"micro_batch_size must be positive, got {micro_batch_size}")
    order = batch_order(len(examples), steps, batch_size, seed)
    encoder_decoder = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
    t0 = time.perf_counter()
    wrapped.train()
    bar = tqdm(total=steps, initial=start, desc=desc, disable=not progress or not accelerator.is_main_process,
               dynamic_ncols=True)
    # Frozen fp16 weights (bf16-less GPUs, backbones.resolve_dtype): scale the loss so that gradients
    # flowing back through fp16 activations do not underflow; the trained weights themselves are fp32.
    scaler = torch.amp.GradScaler(device.type) if any(p.dtype == torch.float16 for p in model.parameters()) else None
    for step in range(start, steps):
        loss = accumulate_gradients(wrapped, examples, order[step], collate=collate, device=device,
                                    micro_batch_size=micro_batch_size, encoder_decoder=encoder_decoder,
                                    accelerator=accelerator, autocast_bf16=autocast_bf16, scaler=scaler)
        if scaler is not None:
            scaler.step(optimizer)  # unscales first; skips the step if a gradient overflowed
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        done = step + 1
        due = done % every == 0 or done == steps or time.monotonic() - last_save >= checkpoint_seconds
        if ckpt is not None and due and accelerator.is_main_process:
            _save_checkpoint(ckpt, model, optimizer, scheduler, done, losses)
            last_save = time.monotonic()
        if stop_after is not None and done - start >= stop_after and done < steps:
            bar.close()
            model.eval()
            return TrainResult(done, losses, time.perf_counter() - t0, start)
    bar.close()
    model.eval()
    if not all(math.isfinite(x) for x in losses):
        raise FloatingPointError(f"{desc}: the loss became NaN/Inf; lower the learning rate")
    return TrainResult(steps, losses, time.perf_counter() - t0, start)
