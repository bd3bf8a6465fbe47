"""GPU estimates: counted parameters match the published sizes, and the paper's settings fit 24 GB."""
import dataclasses

import pytest

from pemnb import estimates as E
from pemnb.profiles import load_profile


def test_parameters_are_counted_from_the_published_configs():
    assert E.count("llama-7b", "lora", lora_r=16, targets=("q_proj", "k_proj", "v_proj", "o_proj")).trainable \
        == 32 * 4 * 2 * 4096 * 16  # every LoRA factor of Alpaca-LoRA, r = 16 on q, k, v, o
    published = {"t5-base": 222.9e6, "t5-small": 60.5e6, "gpt2-large": 774.0e6, "llama-7b": 6.74e9}
    for name, n in published.items():
        task = "seq2seq" if name.startswith("t5") else "causal_lm"
        assert E.count(name, "fft", task).total == pytest.approx(n, rel=0.01), name
    assert E.count("roberta-base", "fft", "classification").total == pytest.approx(124.6e6, rel=0.01)


def test_every_paper_chapter_fits_the_papers_gpu_and_needs_time(shared_data):
    df = E.estimates()
    assert len(df) == 7 and df["fits"].all(), df
    assert (df.loc[df["modules trained"] > 0, "training (GPU h)"] > 0).all()
    assert df["peak memory (GiB)"].max() <= E.PAPER_GPU.memory_gib
    assert "|" in E.markdown(df)


def test_accumulation_is_what_makes_the_big_batches_fit(shared_data):
    job = E.jobs_05(load_profile("paper"))[0]          # LLaMA-7B, batch 128 in micro-batches of 4
    assert job.micro == 4 and job.batch == 128 and job.dtype_bytes == 2
    assert job.memory_gib() <= 24 < dataclasses.replace(job, micro=None).memory_gib()
    assert dataclasses.replace(job, dtype_bytes=4).memory_gib() > 24   # fp32 LLaMA-7B does not fit
    smaller = [dataclasses.replace(job, micro=m).memory_gib() for m in (1, 2, 4, 8)]
    assert smaller == sorted(smaller)


def test_chapter_06_counts_each_methods_sweep_and_its_operator_evaluation(shared_data):
    from pemnb import merge_chapter

    p = load_profile("paper")
    s = merge_chapter.settings(p)
    jobs = {j.what.split(":")[0]: j for j in E.jobs_06(p)}
    assert set(jobs) == {*s.distribution_tasks, "MNLI + RTE"}
    # per method: the λ grid, then one more merge (the analogy of chapter 01's pairs, the subtraction of chapter 02's)
    per_rows = len(merge_chapter.SWEPT) * (len(s.lam_grid) + 1)
    assert jobs["MNLI + RTE"].forward_examples == per_rows * (E.GLUE_VALIDATION["mnli"] + E.GLUE_VALIDATION["rte"])
    assert all(jobs[t].forward_examples == per_rows * E.GLUE_VALIDATION[t] for t in s.distribution_tasks)
