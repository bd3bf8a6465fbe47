"""A classifier bench: one backbone with one module attached, to train modules and evaluate any state.

The backbone is loaded once; every evaluation writes a module state into the live model in place
(:func:`pemnb.modules.write_state`) and reuses tokenised, length-bucketed batches, so a λ sweep costs
one forward pass over the evaluation set per λ.
"""
from __future__ import annotations

import functools
from typing import Callable, Mapping

import torch

from . import arithmetic, data, precision
from .backbones import frozen_dtype, get_backbone, load_backbone
from .cache import TRAINING_CODE, Cache, code_version, fingerprint, state_fingerprint
from .evaluate import EvalBatches, classify
from .modules import attach, read_state, write_state, lora_scaling
from .profiles import Profile
from .sweep import WritesInPlace
from .train import train_module


def use_one_thread_for_tiny_models(backbone: str) -> None:
    """Smoke models are so small that a second thread only adds synchronisation (measured 5-20× slower
    forward passes on 2 busy cores), so they run on one."""
    if get_backbone(backbone).source == "config":
        torch.set_num_threads(1)


def is_main_process() -> bool:
    """True outside distributed runs, and on rank 0 inside one."""
    from accelerate import PartialState

    return PartialState().is_main_process


TRAIN_METHOD = "pemnb.classify:ClassifierBench.train"  # training code outside TRAINING_CODE's modules


class ClassifierBench(WritesInPlace):
    """Backbone + one attached module (`kind`) for a GLUE-style task."""

    def __init__(self, profile: Profile, task: str, kind: str, *, cache: Cache | None = None,
                 progress: bool = True):
        self.profile, self.task, self.kind, self.progress = profile, task, kind, progress
        self.spec = data.get_spec(task)
        self.cache = cache if cache is not None else Cache()
        # Evaluations are cached too, so re-running a chapter after an edit re-evaluates nothing it
        # has seen; keyed by this file's and evaluate's code as well as the training code.
        self.results = Cache(self.cache.root, namespace="results",
                             code_modules=TRAINING_CODE + ("pemnb.evaluate", "pemnb.classify"))
        use_one_thread_for_tiny_models(profile.encoder)
        self.dtype = frozen_dtype(profile.encoder, kind, profile.dtype)
        model, self.tokenizer = load_backbone(profile.encoder, "classification", self.spec.num_labels,
                                              seed=profile.seed, device=profile.device, dtype=self.dtype)
        self.model = attach(model, kind, r=profile.lora_r, alpha=profile.lora_alpha, init_seed=profile.seed)
        # The shared initialisation every module of this bench starts from (same LoRA A, same head).
        self.init_state = read_state(self.model)
        # bfloat16 autocast for evaluation and training: the profile's choice on this hardware.
        self.autocast_bf16 = precision.resolve(profile.autocast_bf16, next(self.model.parameters()).device)
        # The head's own rate applies where peft trains it beside the module; a full fine-tune trains
        # head and body at one rate.
        self.head_lr = profile.head_lr if kind != "fft" else None

    # ------------------------------------------------------------------------------------ data
    def examples(self, ds) -> list[dict]:
        return data.tokenize_classification(ds, self.task, self.tokenizer, self.profile.max_length)

    def batches(self, ds, batch_size: int = 64) -> EvalBatches:
        """Evaluation batches for `ds`, built once and reused for every state evaluated on it.

        They carry a `cache_key` (the rows' fingerprint), so evaluations on them are cached."""
        device = next(self.model.parameters()).device
        bf16 = self.autocast_bf16
        batches = EvalBatches(self.examples(ds), self.tokenizer.pad_token_id, batch_size, device, autocast_bf16=bf16)
        batches.cache_key = {"data": fingerprint(ds), "n": len(ds), "max_length": self.profile.max_length,
                             **({"autocast_bf16": True} if bf16 else {})}
        return batches

    # ------------------------------------------------------------------------------------ train
    def module_key(self, ds, tag: str, seed: int, steps: int, lr: float) -> dict:
        p = self.profile
        return {"what": "classifier-module", "task": self.task, "kind": self.kind, "tag": tag,
                "encoder": p.encoder, "max_length": p.max_length, "lora_r": p.lora_r,
                "lora_alpha": p.lora_alpha, "init_seed": p.seed, "seed": seed, "steps": steps, "lr": lr,
                "batch_size": p.batch_size, "data": fingerprint(ds), "n": len(ds),
                "code": code_version((TRAIN_METHOD,)),  # the method that calls the loop (the cache adds the loop)
                **({"autocast_bf16": True} if self.autocast_bf16 else {}),  # in the key only when on
                **({"head_lr": self.head_lr} if self.head_lr is not None else {})}

    def train(self, ds, *, tag: str, seed: int | None = None, steps: int | None = None,
              lr: float | None = None, weight_decay: float = 0.0) -> dict[str, torch.Tensor]:
        """Train a module on `ds` from the shared init (or fetch it from the cache); returns its state."""
        p = self.profile
        seed = p.seed if seed is None else seed
        steps = steps or p.steps
        lr = lr or p.lr[self.kind]
        parts = self.module_key(ds, tag, seed, steps, lr)
        if weight_decay:  # only in the key when used, so earlier modules stay valid
            parts["weight_decay"] = weight_decay
        if self.dtype != "float32":  # a module trained on half-precision weights is another module
            parts["dtype"] = self.dtype
        hit = self.cache.get_module(parts)
        if hit is not None:
            return hit[0]
        write_state(self.model, self.init_state)
        result = train_module(self.model, self.examples(ds), steps=steps, lr=lr, batch_size=p.batch_size,
                              seed=seed, pad_token_id=self.tokenizer.pad_token_id, weight_decay=weight_decay,
                              checkpoint_dir=self.cache.scratch(parts), desc=f"{self.kind} {tag}",
                              autocast_bf16=self.autocast_bf16, progress=self.progress, micro_batch_size=p.micro_batch,
                              head_lr=self.head_lr)
        state = read_state(self.model)
        self.forget_writer()  # training may have replaced parameter objects: look them up again
        if is_main_process():  # under `accelerate launch` every rank holds the same module; one writes it
            self.cache.put_module(parts, state, self.kind,
                                  {"losses": result.losses[-20:], "seconds": result.seconds, **parts})
            self.cache.drop_scratch(parts)  # the checkpoint (with optimizer state) is no longer needed
        return state

    # ------------------------------------------------------------------------------------ evaluate
    def evaluate(self, state: Mapping[str, torch.Tensor], batches: EvalBatches) -> dict[str, float]:
        """GLUE metrics of the model carrying module `state`, and the per-row ``predictions`` they come
        from (for bootstrap intervals; labels are ``batches.labels``). Cached when `batches` came from
        :meth:`batches`; batches built elsewhere are always evaluated."""
        def compute() -> dict:
            self.use(state)
            out = classify(self.model, batches, self.task, with_predictions=True)
            return {k: (v if k == "predictions" else float(v)) for k, v in out.items()}

        data_key = getattr(batches, "cache_key", None)
        if data_key is None:
            return compute()
        p = self.profile
        parts = {"what": "classifier-eval", "task": self.task, "kind": self.kind, "encoder": p.encoder,
                 "lora_r": p.lora_r, "lora_alpha": p.lora_alpha, "init_seed": p.seed,
                 "state": state_fingerprint(state), **data_key}
        return self.results.result(parts, compute)

    def evaluate_many(self, states: Mapping[str, Mapping[str, torch.Tensor]], batches: EvalBatches,
                      **labels) -> list[dict]:
        """Rows {module: name, metric…, **labels} for several named states."""
        return [{"module": name, **labels, **self.evaluate(state, batches)} for name, state in states.items()]

    def scorer(self, batches: EvalBatches) -> Callable[[Mapping[str, torch.Tensor]], dict[str, float]]:
        """The `score` of :func:`pemnb.sweep.sweep` for this bench on `batches`: :meth:`evaluate`
        (the state written into the live model in place, the result cached)."""
        return functools.partial(self._score, batches)

    def _score(self, batches: EvalBatches, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        return self.evaluate(state, batches)

    def scaling(self) -> float:
        """α/r of the LoRA module (for ΔW)."""
        return lora_scaling(self.model)

    def identity(self) -> dict[str, torch.Tensor]:
        """The state that leaves the backbone unchanged (head left at its shared init)."""
        return arithmetic.identity_like(self.init_state, self.kind)
