"""Scale profiles: frozen presets that fix models, data sizes, steps, λ grids and seeds.

`smoke` runs in seconds on tiny random models (tests, CI), `small` uses real pretrained models that ship
inside PyPI wheels (the default), `paper` uses the paper's backbones and Table 8 hyperparameters.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

DEVICE_ENV = "PEMNB_DEVICE"
PROFILE_ENV = "PEMNB_PROFILE"
OVERRIDES_ENV = "PEMNB_PROFILE_OVERRIDES"
DEFAULT_PROFILE = "small"


def inclusive_grid(start: float, stop: float, step: float) -> tuple[float, ...]:
    """Inclusive λ grid, rounded so 0.1*3 prints as 0.3."""
    n = int(round((stop - start) / step))
    return tuple(round(start + i * step, 6) for i in range(n + 1))


def frozen(value: Any) -> Any:
    """A read-only deep copy: mappings become read-only mappings, lists and tuples tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(frozen(v) for v in value)
    return value


def plain(value: Any) -> Any:
    """The JSON-serialisable view of a :func:`frozen` value: dicts and lists."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Profile:
    """One scale preset. Chapter-specific settings live in `chapters[<chapter>]`."""

    name: str
    encoder: str                      # backbone id for classification scenarios (see backbones.py)
    decoder: str                      # backbone id for generation scenarios
    seq2seq: str | None               # the paper's T5 backbone where the profile has one
    train_size: int                   # examples per module
    eval_size: int | None             # examples per evaluation set (None = all)
    steps: int                        # optimisation steps per module
    batch_size: int
    max_length: int                   # tokens per example
    lr: Mapping[str, float]           # learning rate per module kind
    lora_r: int
    lora_alpha: int
    lam_grid: tuple[float, ...]
    seed: int
    device: str = "auto"
    # Weight dtype of frozen backbones marked `half` (LLaMA-7B; see backbones.frozen_dtype): "bf16" at
    # paper, fp16 on GPUs without bf16. Full fine-tunes and every other backbone stay float32.
    dtype: str = "float32"
    # Examples per forward/backward pass: a training batch larger than this accumulates gradients over
    # ceil(batch / micro_batch) passes (same gradient as one pass; see train.train_module). None = the
    # whole batch at once. Chapters set their own in their settings ("micro_batch").
    micro_batch: int | None = None
    # Compute precision of classifier benches: True runs evaluation and training under bfloat16
    # autocast (pemnb.precision; weights and optimizer stay float32), "auto" does so where the hardware
    # computes bfloat16 natively. On at `small`, where pemnb.precision.bf16_agreement measured it to keep
    # chapter 01's predictions (see the Performance page).
    autocast_bf16: bool | str = False
    # Learning rate of the fresh classification head a LoRA or (IA)³ module trains beside it (peft's
    # modules_to_save); None = the module's own rate, as peft and the paper's code do.
    head_lr: float | None = None
    chapters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "lr", frozen(self.lr))
        object.__setattr__(self, "chapters", frozen(self.chapters))

    def chapter(self, name: str) -> Mapping[str, Any]:
        """Settings of one chapter (empty mapping when the profile sets none)."""
        return self.chapters.get(name, MappingProxyType({}))

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable view (used in cache keys and provenance)."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def describe(self, own_settings: bool = False) -> str:
        """The lines every notebook prints at its top, so each page records its scale.

        `own_settings`: the chapter sets its own sizes, steps and rates (and prints them next), so only
        what it takes from the profile is shown: the profile, backbones, seed and compute.
        """
        if own_settings:
            keep = ("profile", "encoder", "decoder", "seed", "compute", "dtype")
            shared = [x for x in self.describe().splitlines() if x.split(" ")[0] in keep]
            head = [f"head lr      : {self.head_lr:g} (a classification head trained beside LoRA/(IA)³)"
                    ] if self.head_lr is not None else []
            return "\n".join(shared + head + ["sizes, steps, rates: this chapter's own settings, below"])
        lines = [
            f"profile      : {self.name}",
            f"encoder      : {self.encoder}",
            f"decoder      : {self.decoder}" + (f"   (paper seq2seq: {self.seq2seq})" if self.seq2seq else ""),
            f"train size   : {self.train_size} examples per module",
            f"eval size    : {self.eval_size if self.eval_size is not None else 'full split'}",
            f"steps        : {self.steps} (batch {self.batch_size}, max length {self.max_length}"
            + (f", micro-batch {self.micro_batch}" if self.micro_batch else "") + ")",
            f"lr           : " + ", ".join(f"{k}={v:g}" for k, v in self.lr.items())
            + (f"; classification head beside LoRA/(IA)³: {self.head_lr:g}" if self.head_lr is not None else ""),
            f"LoRA         : r={self.lora_r}, alpha={self.lora_alpha}",
            f"λ grid       : {len(self.lam_grid)} points from {self.lam_grid[0]} to {self.lam_grid[-1]}",
            f"seed         : {self.seed}",
            *([f"compute      : bfloat16 autocast (evaluation and training; weights float32)"
               + (" where the hardware has it" if self.autocast_bf16 == "auto" else "")]
              if self.autocast_bf16 else []),
        ] + ([f"dtype        : {self.dtype} (frozen LLaMA-7B weights; trained weights fp32)"]
             if self.dtype != "float32" else [])
        return "\n".join(lines)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        encoder="smoke-bert",
        decoder="smoke-llama",
        seq2seq="smoke-t5",
        train_size=64,
        eval_size=64,
        steps=8,
        batch_size=16,
        max_length=64,
        lr={"lora": 5e-3, "ia3": 1e-2, "fft": 1e-3},
        lora_r=4,
        lora_alpha=8,
        lam_grid=inclusive_grid(0.0, 1.0, 0.5),
        seed=0,
        device="cpu",
    ),
    "small": Profile(
        name="small",
        encoder="minilm-l6",
        decoder="smollm2-135m",
        seq2seq=None,
        train_size=1000,
        eval_size=872,
        steps=300,
        batch_size=16,
        max_length=128,
        lr={"lora": 1e-3, "ia3": 8e-3, "fft": 5e-5},
        lora_r=8,
        lora_alpha=16,
        lam_grid=inclusive_grid(0.0, 1.0, 0.1),
        seed=0,
        # bfloat16 autocast where the CPU/GPU has it: on chapter 01's rows it kept 99.9% of the
        # predictions (all kinds) at 2.2-3.0x the evaluation speed (the Performance page, rows 5a/5b).
        autocast_bf16="auto",
        # At LoRA's rate chapter 01's STS-B head barely moves (Pearson 0.00-0.12 at 300 steps); with the
        # head at 2e-2 the same LoRA module reaches 0.79 (README, "How a budget is chosen").
        head_lr=2e-2,
    ),
    "paper": Profile(
        name="paper",
        encoder="roberta-base",
        decoder="gpt2-large",
        seq2seq="t5-base",
        train_size=1000,
        eval_size=None,
        steps=2000,
        batch_size=16,
        max_length=128,
        # Table 8, distribution generalization: the middle of each tuned range.
        lr={"lora": 1e-3, "ia3": 8e-3, "fft": 2e-5},
        lora_r=8,
        lora_alpha=16,
        lam_grid=inclusive_grid(0.0, 1.0, 0.02),
        seed=0,
        dtype="bf16",
    ),
}


def load_profile(name: str | None = None, **overrides: Any) -> Profile:
    """The named profile (default: $PEMNB_PROFILE, else `small`), with per-call overrides applied.

    >>> load_profile("smoke", steps=2).steps
    2
    """
    name = name or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE
    # $PEMNB_PROFILE_OVERRIDES: a JSON object of profile fields, for the notebooks (which call
    # load_profile() bare), e.g. '{"chapters": {"05_instruction_detox": {"test_source": "offline"}}}'.
    # Per-call overrides win; chapter settings merge chapter by chapter.
    overrides = {**env_overrides(name), **overrides}
    # $PEMNB_DEVICE (e.g. "cuda", "cpu") overrides every profile's device unless the call names one:
    # it puts the smoke profile on a GPU to check GPU code paths, or keeps `small` on the CPU.
    if os.environ.get(DEVICE_ENV) and "device" not in overrides:
        overrides = {**overrides, "device": os.environ[DEVICE_ENV]}
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)} "
                         f"(set ${PROFILE_ENV} or pass name=)")
    base = PROFILES[name]
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Profile)}
    if unknown:
        raise TypeError(f"unknown profile field(s) {sorted(unknown)}")
    return dataclasses.replace(base, **overrides) if overrides else base


def env_overrides(name: str) -> dict[str, Any]:
    """The profile fields $PEMNB_PROFILE_OVERRIDES sets (lists as tuples; `chapters` merged onto the
    profile's own chapter settings); {} when it is unset."""
    import json

    raw = os.environ.get(OVERRIDES_ENV, "").strip()
    if not raw:
        return {}
    try:
        out = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"${OVERRIDES_ENV} is not valid JSON: {e}") from None
    if not isinstance(out, dict):
        raise ValueError(f"${OVERRIDES_ENV} must be a JSON object of profile fields, got {type(out).__name__}")
    out = {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}
    if "chapters" in out and name in PROFILES:
        own = PROFILES[name].chapters
        out["chapters"] = {**{k: dict(v) for k, v in own.items()},
                           **{k: {**dict(own.get(k, {})), **v} for k, v in out["chapters"].items()}}
    return out
