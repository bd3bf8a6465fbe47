"""Tiny random stand-ins for the paper's hub repositories, built from configs of the same classes.

``build(root)`` writes, under ``root/<owner>--<name>`` (the layout ``$PEMNB_HUB_DIR`` reads, see
:func:`pemnb.backbones.hub_source`):

- ``roberta-base``: RobertaForMaskedLM (the hub checkpoint's class) + a byte-level BPE RoBERTa tokenizer;
- ``t5-base`` / ``t5-small``: T5ForConditionalGeneration + a T5-style tokenizer (appends ``</s>``);
- ``gpt2-large``: GPT2LMHeadModel (Conv1D weights) + a byte-level BPE GPT-2 tokenizer (no pad token);
- ``huggyllama/llama-7b``: LlamaForCausalLM + a Metaspace BPE LLaMA tokenizer (adds ``<s>``, no pad);
- ``tloen/alpaca-lora-7b``: a LoRA adapter folder with Alpaca-LoRA's adapter_config.json (r 16, α 16,
  dropout 0.05 on q/k/v/o, old peft keys without an adapter name) and an fp16 ``adapter_model.bin``.

Tokenizers are trained in a second on the shipped data, so no file comes from the hub.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

# The adapter_config.json of tloen/alpaca-lora-7b, key for key.
ALPACA_LORA_CONFIG = {
    "base_model_name_or_path": "decapoda-research/llama-7b-hf",
    "bias": "none",
    "enable_lora": None,
    "fan_in_fan_out": False,
    "inference_mode": True,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "merge_weights": False,
    "modules_to_save": None,
    "peft_type": "LORA",
    "r": 16,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "task_type": "CAUSAL_LM",
}
TINY = dict(hidden=32, layers=2, heads=2, ffn=64)


def _corpus(data_root: Path, n: int = 3000) -> list[str]:
    """Lines of shipped text (GLUE, reviews, comments, Alpaca, WikiText) to train the tokenizers on."""
    lines = []
    for f in sorted(data_root.rglob("*.jsonl")):
        with open(f) as fh:
            for i, line in enumerate(fh):
                if i >= n // 12:
                    break
                row = json.loads(line)
                lines += [v for v in row.values() if isinstance(v, str) and v.strip()]
    # The chapters' answer words are single tokens in the paper's tokenizers (T5's "▁yes", GPT-2's
    # " positive", LLaMA's "▁maybe"): repeat them so the tiny vocabularies learn them whole too.
    return lines + ["yes no maybe positive negative Yes No"] * 2000


def _byte_bpe(corpus, specials, vocab=800):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def _metaspace(model_tok, corpus, trainer):
    from tokenizers import decoders, pre_tokenizers

    model_tok.pre_tokenizer = pre_tokenizers.Metaspace()
    model_tok.decoder = decoders.Metaspace()
    model_tok.train_from_iterator(corpus, trainer)
    return model_tok


def _gpt2_tokenizer(corpus):
    from transformers import GPT2TokenizerFast

    tok = _byte_bpe(corpus, ["<|endoftext|>"])
    return GPT2TokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                             unk_token="<|endoftext|>")


def _roberta_tokenizer(corpus):
    from tokenizers import processors
    from transformers import RobertaTokenizerFast

    tok = _byte_bpe(corpus, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")))
    return RobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


def _llama_tokenizer(corpus):
    from tokenizers import Tokenizer, models, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = _metaspace(Tokenizer(models.BPE(unk_token="<unk>")), corpus,
                     trainers.BpeTrainer(vocab_size=800, special_tokens=["<unk>", "<s>", "</s>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    # LLaMA's tokenizer: BOS on every encoding, no pad token (pemnb pads with EOS), no chat template.
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _t5_tokenizer(corpus):
    from tokenizers import Tokenizer, models, processors, trainers
    from transformers import PreTrainedTokenizerFast

    # A Metaspace BPE (T5's own is a Unigram model, whose tiny version splits "maybe"; what matters
    # here is T5's special tokens: pad 0, eos 1, and </s> appended to every encoding).
    tok = _metaspace(Tokenizer(models.BPE(unk_token="<unk>")), corpus,
                     trainers.BpeTrainer(vocab_size=800, special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


def _save(folder: Path, model, tok) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def build(root: str | Path, data_root: str | Path) -> Path:
    """Write every stand-in under `root` (once; a finished folder is reused) and return `root`."""
    import transformers as tf

    root = Path(root)
    if (root / ".complete").exists():
        return root
    torch.manual_seed(0)
    corpus = _corpus(Path(data_root))
    h = TINY
    rob = _roberta_tokenizer(corpus)
    _save(root / "roberta-base", tf.RobertaForMaskedLM(tf.RobertaConfig(
        vocab_size=len(rob), hidden_size=h["hidden"], num_hidden_layers=h["layers"], num_attention_heads=h["heads"],
        intermediate_size=h["ffn"], max_position_embeddings=514, pad_token_id=rob.pad_token_id,
        bos_token_id=rob.bos_token_id, eos_token_id=rob.eos_token_id)), rob)
    t5 = _t5_tokenizer(corpus)
    for name, layers in (("t5-base", 2), ("t5-small", 1)):
        _save(root / name, tf.T5ForConditionalGeneration(tf.T5Config(
            vocab_size=len(t5), d_model=h["hidden"], d_kv=16, d_ff=h["ffn"], num_layers=layers,
            num_decoder_layers=layers, num_heads=h["heads"], pad_token_id=t5.pad_token_id,
            eos_token_id=t5.eos_token_id, decoder_start_token_id=t5.pad_token_id)), t5)
    gpt = _gpt2_tokenizer(corpus)
    _save(root / "gpt2-large", tf.GPT2LMHeadModel(tf.GPT2Config(
        vocab_size=len(gpt), n_embd=h["hidden"], n_layer=h["layers"], n_head=h["heads"], n_positions=1024,
        bos_token_id=gpt.bos_token_id, eos_token_id=gpt.eos_token_id)), gpt)
    lt = _llama_tokenizer(corpus)
    llama = tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=len(lt), hidden_size=h["hidden"], intermediate_size=h["ffn"], num_hidden_layers=h["layers"],
        num_attention_heads=h["heads"], num_key_value_heads=h["heads"], max_position_embeddings=2048,
        bos_token_id=lt.bos_token_id, eos_token_id=lt.eos_token_id, tie_word_embeddings=False))
    _save(root / "huggyllama--llama-7b", llama, lt)
    adapter = root / "tloen--alpaca-lora-7b"
    adapter.mkdir(parents=True, exist_ok=True)
    (adapter / "adapter_config.json").write_text(json.dumps(ALPACA_LORA_CONFIG, indent=2))
    r, weights = ALPACA_LORA_CONFIG["r"], {}
    for i in range(h["layers"]):
        for proj in ALPACA_LORA_CONFIG["target_modules"]:
            key = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            weights[f"{key}.lora_A.weight"] = (torch.randn(r, h["hidden"]) * 0.02).half()
            weights[f"{key}.lora_B.weight"] = (torch.randn(h["hidden"], r) * 0.02).half()
    torch.save(weights, adapter / "adapter_model.bin")
    (root / ".complete").touch()
    return root


# ---------------------------------------------------------------------------------- paper data stand-ins
def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _read(path: Path, n: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows if n is None else rows[:n]


def build_data(root: str | Path, shipped: str | Path) -> Path:
    """A data folder laid out like the shipped one ($PEMNB_DATA_DIR) that also holds small stand-ins,
    made of shipped rows, for the splits the paper profile reads from the hub: MNLI train, Civil
    Comments train, WikiText-103 test, Yelp and Amazon polarity train/test. The paper's settings then
    run unchanged apart from sizes."""
    root, shipped = Path(root), Path(shipped)
    if (root / ".complete").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    for entry in shipped.iterdir():
        if entry.name not in ("glue", "civil_comments_toxic"):
            (root / entry.name).symlink_to(entry.resolve())
    for task in (shipped / "glue").iterdir():
        (root / "glue" / task.name).mkdir(parents=True, exist_ok=True)
        for f in task.iterdir():
            (root / "glue" / task.name / f.name).symlink_to(f.resolve())
    mnli = _read(shipped / "glue" / "mnli" / "validation_matched.jsonl")
    _jsonl(root / "glue" / "mnli" / "train.jsonl", mnli[-300:])
    toxic = _read(shipped / "civil_comments_toxic" / "test.jsonl")
    _jsonl(root / "civil_comments_toxic" / "test.jsonl", toxic)
    _jsonl(root / "civil_comments_toxic" / "train.jsonl", toxic[:200])
    _jsonl(root / "wikitext-103-raw" / "test.jsonl", _read(shipped / "wikitext-2" / "test.jsonl"))
    yelp = _read(shipped / "yelp_sentences" / "train.jsonl")
    _jsonl(root / "yelp_polarity" / "train.jsonl", yelp[:48])
    _jsonl(root / "yelp_polarity" / "test.jsonl", yelp[48:64])
    amazon = _read(shipped / "amazon_sentences" / "train.jsonl")
    _jsonl(root / "amazon_polarity" / "train.jsonl", amazon[:48])
    _jsonl(root / "amazon_polarity" / "test.jsonl", amazon[48:64])
    (root / ".complete").touch()
    return root


def build_gated(hub_root: str | Path, shipped: str | Path) -> Path:
    """Stand-ins for the files of the gated jinghan23/DatasetofPEMCompostition in the hub folder, in the
    schema pemnb reads (instruction / input / output records)."""
    folder = Path(hub_root) / "jinghan23--DatasetofPEMCompostition"
    folder.mkdir(parents=True, exist_ok=True)
    toxic = [r["text"] for r in _read(Path(shipped) / "civil_comments_toxic" / "test.jsonl", 60)]
    alpaca = [r["instruction"] for r in _read(Path(shipped) / "alpaca_sample" / "train.jsonl", 40)]
    pairs = [{"instruction": f"Write a comment replying to: {a}", "input": "", "output": t}
             for a, t in zip(alpaca, toxic)]
    (folder / "toxic_datasets.json").write_text(json.dumps(pairs[:30]))
    (folder / "seed_v0.json").write_text(json.dumps(pairs[30:33]))
    (folder / "toxic_seed_v1_t.json").write_text(json.dumps([{"instruction": f"Insult whoever says: {t[:60]}"}
                                                               for t in toxic[40:43]]))
    # Regular test instructions: the paper's were written for non-toxic comments (not Alpaca rows, which
    # the chapter checks its tests against).
    reviews = [r["text"] for r in _read(Path(shipped) / "yelp_sentences" / "train.jsonl", 3)]
    (folder / "toxic_seed_v1_n.json").write_text(json.dumps([{"instruction": f"Answer this review politely: {t}"}
                                                               for t in reviews]))
    return folder
