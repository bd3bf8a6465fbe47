"""Run every benchmark side by side in one process and print the ratios (``python -m benchmarks.run``).

Each row compares pemnb's way with what a competent user would write, on the code the book runs. Every
side of a row is timed the same way: an untimed warm-up of each side, then rounds in which each side runs
once in turn, the median of the same number of rounds (:func:`benchmarks.common.alternate`); set-up is
inside the timed part or reported beside it. Memory is the peak resident set size (RSS, psutil sampled
every 2 ms in a thread) during one run of a side, above the RSS just before it.

PyTorch runs on ONE thread by default (``--threads N`` to change it), the same for both sides of every
row: on a shared 2-core machine two threads per process fight other processes for the cores, which
slows small operations (short bucketed batches, the λ-point bookkeeping) far more than large ones and so
distorts the ratios. The 1-minute load average is recorded at the start and the end of the run.

A full run writes the results to ``book/benchmark_results.md`` (the tables the Performance page
includes) and ``book/benchmark_results.json`` (every number); ``--quick`` shrinks every size to check
the scripts and writes nothing unless ``--page`` is given. The process exits with status 1 when a check
fails (different models, predictions or results on the two sides of a row), after printing the table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "book" / "benchmark_results.md"

FULL = {"engine": dict(n_eval=64, grid_points=11, repeat=5, repeat_eval=5),
        "scoring": dict(n=24, repeat=3, batch_size=8),
        "padding": dict(n=256, batch_size=32, repeat=3),
        "end_to_end": dict(n=200, repeat=3),
        "precision": dict(repeat=3, train=True),
        "merging": dict(modules=(2, 8), grid_points=11, repeat=3),
        "search": dict(kinds=("lora", "ia3", "fft"), grid_step=0.02)}
QUICK = {"engine": dict(n_eval=16, grid_points=3, repeat=1, repeat_eval=1),
         "scoring": dict(n=4, repeat=1, batch_size=2),
         "padding": dict(n=16, batch_size=8, repeat=1),
         "end_to_end": dict(n=16, repeat=1),
         "precision": dict(repeat=1, train=True, steps=2, eval_rows=16, kinds=("lora",)),
         "merging": dict(modules=(2, 3), grid_points=3, repeat=1),
         "search": dict(kinds=("lora",), grid_step=0.1, eval_rows=16)}
NAMES = tuple(FULL)


def environment() -> dict:
    import peft
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "load_average_1min_at_start": os.getloadavg()[0]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the scripts run")
    parser.add_argument("--only", nargs="*", choices=NAMES, help="run only these benchmarks")
    parser.add_argument("--json", help="also write every measured number to this file")
    parser.add_argument("--page", help=f"write the markdown results here (default for a full run of every "
                                       f"benchmark: {PAGE.relative_to(ROOT)})")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="no measuring: render the page from saved results (later files replace earlier "
                             "files' benchmarks), e.g. a full run's JSON and a re-run of one benchmark")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads, the same for both sides (default: 1; 0 = torch's choice)")
    args = parser.parse_args(argv)
    if args.merge:
        return render(args.merge, Path(args.page or PAGE))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM"):
        os.environ.setdefault(var, "1" if var != "TOKENIZERS_PARALLELISM" else "false")

    from . import end_to_end, engine, merging, padding, precision, scoring, search

    runners = {"engine": engine.run, "scoring": scoring.run, "padding": padding.run, "end_to_end": end_to_end.run,
               "precision": precision.run, "merging": merging.run, "search": search.run}
    sizes = QUICK if args.quick else FULL
    out = {"environment": environment(), "quick": args.quick}
    t0 = time.perf_counter()
    for name in args.only or NAMES:
        start = time.perf_counter()
        out[name] = runners[name](**sizes[name])
        out[name]["wall_s"] = time.perf_counter() - start
        print(f"[benchmarks] {name} done in {out[name]['wall_s']:.0f} s", flush=True)
    out["total_wall_s"] = time.perf_counter() - t0
    out["environment"]["load_average_1min_at_end"] = os.getloadavg()[0]
    text = report(out)
    print(text)
    page = args.page or (PAGE if not args.quick and not args.only else None)
    if page:
        Path(page).write_text(text + "\n")
        Path(page).with_suffix(".json").write_text(json.dumps(out, indent=2, default=_plain) + "\n")
        print(f"[benchmarks] wrote {page} and its .json")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=_plain) + "\n")
    failed = failures(out)
    if failed:
        raise SystemExit("CHECK FAILED: " + "; ".join(failed))
    return out


def render(paths, page: Path) -> dict:
    """Write the page from saved results: the first file's run, with the benchmarks of later files
    (their environment noted) put in place of its own."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    out = runs[0]
    for later in runs[1:]:
        for name in NAMES:
            if name in later:
                out[name] = {**later[name], "rerun": later["environment"]}
    text = report(out)
    page.write_text(text + "\n")
    page.with_suffix(".json").write_text(json.dumps(out, indent=2, default=_plain) + "\n")
    print(text)
    failed = failures(out)
    if failed:
        raise SystemExit("CHECK FAILED: " + "; ".join(failed))
    return out


def _plain(v):
    return v.tolist() if hasattr(v, "tolist") else str(v)


def failures(out: dict) -> list[str]:
    """The checks that did not hold: the sides of a row must give the same model, predictions or result."""
    bad = []
    if "engine" in out:
        for side, d in out["engine"]["max_abs_logit_diff"].items():
            if d > 1e-4:
                bad.append(f"(1) {side}: logits differ from the engine's by {d:.1e}")
        if not out["engine"]["pair_equals_compose"]:
            bad.append("(1) sweep.pair differs from merge_methods.compose")
    if "scoring" in out:
        s = out["scoring"]
        for beams in ("2", "5"):
            if s[f"agree_beam_{beams}"] < 1.0:
                bad.append(f"(2) constrained_scores agrees with {beams}-beam search on {s[f'agree_beam_{beams}']:.0%} only")
    if "padding" in out:
        for side, a in out["padding"]["agree"].items():
            if a < 1.0:
                bad.append(f"(3) {side} padding: predictions agree on {a:.1%} only")
    if "merging" in out:
        for k, r in out["merging"]["rows"].items():
            if not r["equal"]:
                bad.append(f"(6) prepared TIES differs from per-point TIES for {k} modules")
    return bad


def _ms(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 0.1 else f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.2f} s"


def report(out: dict) -> str:
    """The results as markdown: what ran where, one table of rows (both sides and their ratio), the checks."""
    env = out["environment"]
    lines = [f"Measured by `python -m benchmarks.run{' --quick' if out.get('quick') else ''}` on {env['date']}: "
             f"{env['cpu']}, {env['usable_cores']} of {env['cores']} cores usable, {env['torch_threads']} torch "
             f"thread(s) per side; Python {env['python']}, torch {env['torch']}, transformers "
             f"{env['transformers']}, peft {env['peft']}. Total {out['total_wall_s']:.0f} s. **1-minute load "
             f"average {env['load_average_1min_at_start']:.1f} at the start and "
             f"{env.get('load_average_1min_at_end', float('nan')):.1f} at the end** (this run's own thread is "
             f"about 1; the machine is shared).", "",
             "| row | pemnb | realistic baseline | baseline ÷ pemnb |", "|---|---|---|---|"]
    for name in NAMES:
        if name in out and "rerun" in out[name]:
            r = out[name]["rerun"]
            lines[1:1] = ["", f"Benchmark `{name}` re-run alone on {r['date']} (`--only {name}`; 1-minute load average "
                              f"{r['load_average_1min_at_start']:.1f} at its start, "
                              f"{r.get('load_average_1min_at_end', float('nan')):.1f} at its end)."]
    checks = []
    if "engine" in out:
        e = out["engine"]
        t, te = e["s_per_point"], e["s_per_point_with_eval"]
        what = f"({e['backbone']}, LoRA {e['lora']}, {e['grid_points']} λ, median of {e['repeat']})"
        for tag, side, label in (("1a", "load_state_dict", "one live adapter + `load_state_dict(strict=False)`"),
                                 ("1b", "set_peft_model_state_dict", "one live adapter + `set_peft_model_state_dict`"),
                                 ("1c", "add_weighted_adapter", "`add_weighted_adapter` + `set_adapter` + `delete_adapter`"),
                                 ("1d", "copy_loop", "unchecked `copy_` loop (the floor)")):
            head = f"λ point, evaluation excluded {what}" if tag == "1a" else "same"
            lines.append(f"| ({tag}) {head} | engine "
                         f"{_ms(t['engine'])} | {label} {_ms(t[side])} | **{t[side] / t['engine']:.2f}×** |")
        lines.append(f"| (1e) same, general path | `compose` + `write_state` {_ms(t['general'])} | "
                     f"`load_state_dict` {_ms(t['load_state_dict'])} | {t['load_state_dict'] / t['general']:.2f}× |")
        lines.append(f"| (1f) λ point with an SST-2 evaluation of {e['n_eval']} rows (median of {e['repeat_eval']}) | "
                     f"engine {_ms(te['engine'])} | `load_state_dict` {_ms(te['load_state_dict'])} | "
                     f"{te['load_state_dict'] / te['engine']:.2f}× |")
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in e["max_abs_logit_diff"].items())
        checks.append(f"(1) every side gives the engine's model at λ = 0.3, max |Δlogit|: {diffs}; `sweep.pair` "
                      f"equals `merge_methods.compose` bit for bit: {e['pair_equals_compose']}; peak RSS of a sweep: "
                      f"engine {e['engine_peak_mib']:.1f} MiB, `load_state_dict` {e['load_state_dict_peak_mib']:.1f} MiB "
                      f"({e['tensors']} tensors, {e['parameters']:,} parameters)")
    if "scoring" in out:
        s = out["scoring"]
        t = s["s"]
        what = f"RTE, {s['n']} prompts ({s['backbone']} zero-shot, batch {s['batch_size']}, median of {s['repeat']})"
        lines.append(f"| (2a) answers, {what} | `constrained_scores` {_ms(t['constrained_scores'])} | constrained "
                     f"beam search, 2 beams {_ms(t['beam_2'])} | **{t['beam_2'] / t['constrained_scores']:.2f}×** |")
        lines.append(f"| (2b) same, 5 beams (chapter 02's parity setting) | `constrained_scores` "
                     f"{_ms(t['constrained_scores'])} | 5 beams {_ms(t['beam_5'])} | "
                     f"{t['beam_5'] / t['constrained_scores']:.2f}× |")
        lines.append(f"| (2c) bare answer score, another ranking (not used by the chapters) | `score_choices` "
                     f"{_ms(t['score_choices'])} | 2 beams {_ms(t['beam_2'])} | {t['beam_2'] / t['score_choices']:.2f}× |")
        checks.append(f"(2) `constrained_scores` picks beam search's answer on {s['agree_beam_2']:.0%} of the rows "
                      f"(2 beams) and {s['agree_beam_5']:.0%} (5 beams); 2 and 5 beams agree on {s['beams_agree']:.0%}; "
                      f"closest call {s['smallest_score_gap']:.2g} nats; the bare `score_choices` agrees with beam "
                      f"search on {s['agree_bare']:.0%} (beam search answers yes on {s['share_yes']:.0%}); answer "
                      f"token ids {s['answer_token_ids']}, prompts {s['prompt_tokens_mean']:.0f} tokens on average "
                      f"(max {s['prompt_tokens_max']}); peak RSS {s['peak_mib']['constrained_scores']:.0f} MiB vs "
                      f"{s['peak_mib']['beam_2']:.0f} MiB (2 beams)")
    if "padding" in out:
        p = out["padding"]
        t, tok = p["s"], p["tokens"]
        what = f"{p['n']} {p['task']} rows ({p['backbone']}, batch {p['batch_size']}, median of {p['repeat']})"
        lines.append(f"| (3a) evaluation batches, {what} | length-bucketed `EvalBatches` {_ms(t['bucketed'])} | "
                     f"per-batch padding in dataset order (`DataCollatorWithPadding`) {_ms(t['dynamic'])} | "
                     f"**{t['dynamic'] / t['bucketed']:.2f}×** |")
        lines.append(f"| (3b) same | `EvalBatches` {_ms(t['bucketed'])} | padded to 128 tokens {_ms(t['fixed'])} | "
                     f"{t['fixed'] / t['bucketed']:.2f}× |")
        checks.append(f"(3) tokens through the model: bucketed {tok['bucketed']:,}, per-batch {tok['dynamic']:,} "
                      f"({tok['dynamic'] / tok['bucketed']:.2f}×), fixed {tok['fixed']:,} "
                      f"({tok['fixed'] / tok['bucketed']:.2f}×); rows average {p['tokens_mean']:.0f} tokens (max "
                      f"{p['tokens_max']}); predictions agree with the bucketed side: per-batch {p['agree']['dynamic']:.0%}, "
                      f"fixed {p['agree']['fixed']:.0%} (max |Δlogit| {p['max_abs_logit_diff']['dynamic']:.1e}, "
                      f"{p['max_abs_logit_diff']['fixed']:.1e})")
    if "end_to_end" in out:
        e = out["end_to_end"]
        t = e["s"]
        lines.append(f"| (4) chapter 01's λ sweep end to end, {e['grid_points']} λ × {e['n']} {e['task']} rows "
                     f"({e['backbone']}, median of {e['repeat']}) | merge + `ClassifierBench.evaluate` "
                     f"{_ms(t['chapter'])} | the bare forward passes {_ms(t['forward'])} | pemnb ÷ floor "
                     f"**{e['ratio']:.3f}×** (goal ≤ 1.05×) |")
    if "precision" in out:
        p = out["precision"]
        for kind, k in p["kinds"].items():
            lines.append(f"| (5a) bf16 autocast evaluation, chapter 01 {p['task']} {kind}: {k['states']} states × "
                         f"({' + '.join(str(v) for v in k['rows_per_state'].values())}) rows (median of {p['repeat']}) | "
                         f"bf16 {_ms(k['eval_bf16_s'])} | float32 {_ms(k['eval_fp32_s'])} | "
                         f"**{k['eval_ratio']:.2f}×** |")
        checks.append("(5) bf16 vs float32 predictions on chapter 01's own rows: " + "; ".join(
            f"{kind} {k['agreement']:.2%} agree ({k['disagreements']} of {k['predictions']} differ, max |Δlogit| "
            f"{k['max_abs_logit_diff']:.1e})" for kind, k in p["kinds"].items())
            + f"; all kinds {p['agreement']:.2%} (goal ≥ 99%), evaluation {p['eval_ratio']:.2f}× faster (goal ≥ 1.8×)")
        if "train_fp32_s" in p:
            lines.append(f"| (5b) bf16 autocast training, chapter 01's {p['task']} s0 LoRA module, {p['train_steps']} "
                         f"steps of {p['train_batch']} (one run per side) | bf16 {_ms(p['train_bf16_s'])} | float32 "
                         f"{_ms(p['train_fp32_s'])} | **{p['train_ratio']:.2f}×** |")
            checks.append(f"(5b) final accuracy on the chapter's {p['task']} evaluation rows: float32-trained "
                          f"{p['accuracy_fp32']:.1%}, bf16-trained {p['accuracy_bf16']:.1%} (mean loss of the last 5 "
                          f"steps {p['loss_fp32']:.3f} vs {p['loss_bf16']:.3f}); the two modules' predictions agree on "
                          f"{p['trained_agreement']:.1%}")
    if "merging" in out:
        m = out["merging"]
        for k, r in m["rows"].items():
            lines.append(f"| (6) TIES per λ point, {r['modules']} modules ({m['layers']} layers of "
                         f"{m['shape'][0]}×{m['shape'][1]}, r = {m['rank']}, {m['grid_points']} λ) | λ-independent work "
                         f"once (`merge_methods.prepare`) {_ms(r['prepared_s'])} | everything per point "
                         f"{_ms(r['per_point_s'])} | **{r['ratio']:.2f}×** |")
        checks.append("(6) prepared and per-point TIES equal bit for bit: " + ", ".join(
            f"{k} modules {r['equal']}" for k, r in m["rows"].items()))
    if "search" in out:
        s = out["search"]
        for kind, r in s["rows"].items():
            lines.append(f"| (7) λ selection on chapter 01's {s['select_rows']} {s['task']} selection rows, {kind}, "
                         f"{r['grid_points']}-point grid | coarse-to-fine: {r['evaluated']} evaluations, "
                         f"{_ms(r['search_s'])} | whole grid: {r['grid_points']} evaluations, {_ms(r['full_s'])} | "
                         f"**{r['ratio']:.2f}×** |")
        checks.append(f"(7) λ selected (chapter 01's tie rule), whole grid vs coarse-to-fine: " + "; ".join(
            f"{kind} {r['lam_full']:g} vs {r['lam_search']:g} ({'same' if r['same'] else 'DIFFERENT'}; best "
            f"{s['metric']} {r['best_full']:.3f} vs {r['best_search']:.3f})" for kind, r in s["rows"].items())
            + " — reported, not a pass/fail check: coarse-to-fine assumes a unimodal curve")
        same = sum(r["same"] for r in s["rows"].values())
        checks.append(f"(7) coarse-to-fine found the whole grid's λ for {same} of {len(s['rows'])} kinds: "
                      + ("it could replace the whole grid for chapter 01's selection" if same == len(s["rows"])
                         else "chapter 01 keeps selecting λ on the whole grid"))
        if all("replay" in r for r in s["rows"].values()):
            checks.append("(7) the same search replayed on the measured whole-grid curves with more coarse points "
                          "(evaluations, same λ as the whole grid): " + "; ".join(
                              f"{kind}: " + ", ".join(f"{p} coarse → {v['evaluated']} ({'same' if v['same'] else 'different'})"
                                                      for p, v in r["replay"].items())
                              for kind, r in s["rows"].items()))
    failed = failures(out)
    lines += ["", "Checks:", ""] + [f"- {c}" for c in checks]
    lines.append("- **" + ("all checks passed" if not failed else "FAILED: " + "; ".join(failed)) + "**")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
