"""Run every benchmark side by side in one process and print the ratios (``python -m benchmarks.run``).

Timings are wall-clock medians on this machine's CPU; run it with nothing else busy (the numbers in
book/performance.md were taken under ``flock /tmp/pemnb-heavy.lock``). Memory is the peak resident
set size (RSS, psutil sampled every 2 ms in a thread) during one run of each side, above the RSS just
before it. ``--quick`` shrinks every size for a smoke check of the scripts themselves.

PyTorch runs on ONE thread by default here (``--threads N`` to change it): both sides of every row run
with the same setting, and on a shared 2-core machine two threads per process fight other processes
for the cores, which slows small operations (short, bucketed batches; the λ-point bookkeeping) far more
than large ones and so distorts the ratios. Absolute times are therefore one core's.

The process exits with status 1 when a check fails (different predictions or models on the two
sides of a row), after printing the table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

TARGETS = {"engine": 20.0, "scoring": 5.0, "padding": 2.5}


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
            "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "cpu_count_note": f"{len(os.sched_getaffinity(0))} cores usable",
            "load_average_1min_at_start": os.getloadavg()[0]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the scripts run")
    parser.add_argument("--only", nargs="*", choices=sorted(TARGETS), help="run only these benchmarks")
    parser.add_argument("--json", help="also write every measured number to this file")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads, the same for both sides (default: 1; 0 = torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM"):
        os.environ.setdefault(var, "1" if var != "TOKENIZERS_PARALLELISM" else "false")

    from . import engine, padding, scoring

    sizes = {"engine": dict(n_eval=64, grid_points=11, repeat=5),
             "scoring": dict(n=32, repeat=3, repeat_generate=1, batch_size=8),
             "padding": dict(n=256, batch_size=32, repeat=3)}
    if args.quick:
        sizes = {"engine": dict(n_eval=16, grid_points=3, repeat=1),
                 "scoring": dict(n=4, repeat=1, batch_size=2),
                 "padding": dict(n=16, batch_size=8, repeat=1)}
    runners = {"engine": engine.run, "scoring": scoring.run, "padding": padding.run}
    out = {"environment": environment()}
    t0 = time.perf_counter()
    for name in args.only or list(runners):
        start = time.perf_counter()
        out[name] = runners[name](**sizes[name])
        out[name]["wall_s"] = time.perf_counter() - start
        print(f"[benchmarks] {name} done in {out[name]['wall_s']:.0f} s", flush=True)
    out["total_wall_s"] = time.perf_counter() - t0
    out["environment"]["load_average_1min_at_end"] = os.getloadavg()[0]
    print(report(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    failed = failures(out)
    if failed:
        raise SystemExit("CHECK FAILED: " + "; ".join(failed))
    return out


def failures(out: dict) -> list[str]:
    """The checks that did not hold: the two sides of a row must give the same model / predictions."""
    bad = []
    if "engine" in out:
        if out["engine"]["max_abs_logit_diff"] > 1e-4:
            bad.append(f"(1) logits differ by {out['engine']['max_abs_logit_diff']:.1e}")
        if not out["engine"]["pair_equals_compose"]:
            bad.append("(1) sweep.pair differs from merge_methods.compose")
    if "scoring" in out and not out["scoring"]["identical"]:
        bad.append(f"(2) score_with_eos agrees with beam search on {out['scoring']['agree_eos_generate']:.0%} only")
    if "padding" in out and out["padding"]["agree"] < 1.0:
        bad.append(f"(3) predictions agree on {out['padding']['agree']:.0%} only")
    return bad


def report(out: dict) -> str:
    """The results as a markdown table plus the checks (what was compared and whether it agreed)."""
    env = out["environment"]
    lines = [f"measured by `python -m benchmarks.run` on {env['date']}: {env['cpu']}, {env['cores']} cores "
             f"({env['torch_threads']} torch threads), Python {env['python']}, torch {env['torch']}, "
             f"transformers {env['transformers']}, peft {env['peft']}; {env['cpu_count_note']}; total {out['total_wall_s']:.0f} s; "
             f"1-min load average {env['load_average_1min_at_start']:.1f} at the start, "
             f"{env.get('load_average_1min_at_end', float('nan')):.1f} at the end", "",
             "| benchmark | pemnb | baseline | ratio | target | peak RSS pemnb / baseline (MiB) |",
             "|---|---|---|---|---|---|"]
    if "engine" in out:
        e = out["engine"]
        lines.append(f"| (1) λ point, eval excluded ({e['backbone']}, {e['grid_points']} λ, median of "
                     f"{e['repeat']}) | sweep + pair + StateWriter {e['engine_s_per_point'] * 1e3:.2f} ms | peft "
                     f"add_weighted_adapter+set_adapter {e['peft_s_per_point'] * 1e3:.1f} ms | "
                     f"**{e['ratio']:.1f}×** | ≥ {TARGETS['engine']:g}× | {e['engine_peak_mib']:.1f} / "
                     f"{e['peft_peak_mib']:.1f} |")
        lines.append(f"| (1c) same, general path per point | merge_methods.compose + write_state "
                     f"{e['general_s_per_point'] * 1e3:.2f} ms | {e['peft_s_per_point'] * 1e3:.1f} ms | "
                     f"{e['ratio_general']:.1f}× | – | – |")
        lines.append(f"| (1b) λ point incl. SST-2 eval of {e['n_eval']} examples | "
                     f"{e['engine_with_eval_s'] * 1e3:.0f} ms | {e['peft_with_eval_s'] * 1e3:.0f} ms | "
                     f"{e['ratio_with_eval']:.2f}× | – | – |")
    if "scoring" in out:
        s = out["scoring"]
        lines.append(f"| (2) RTE answers, {s['n']} examples ({s['backbone']}, batch {s['batch_size']}) | "
                     f"score_with_eos {s['score_s']:.2f} s | constrained_generate (5 beams) "
                     f"{s['generate_s']:.2f} s | **{s['ratio']:.1f}×** | ≥ {TARGETS['scoring']:g}× | "
                     f"{s['score_peak_mib']:.0f} / {s['generate_peak_mib']:.0f} |")
        lines.append(f"| (2b) same, bare answer (not the same ranking) | score_choices {s['bare_s']:.2f} s | "
                     f"constrained_generate {s['generate_s']:.2f} s | {s['ratio_bare']:.1f}× | – | "
                     f"{s['bare_peak_mib']:.0f} / {s['generate_peak_mib']:.0f} |")
    if "padding" in out:
        p = out["padding"]
        lines.append(f"| (3) eval {p['n']} {p['task']} examples ({p['backbone']}, batch {p['batch_size']}) | "
                     f"EvalBatches {p['dynamic_s']:.2f} s | pad to 128 {p['fixed_s']:.2f} s | "
                     f"**{p['ratio']:.1f}×** | ≥ {TARGETS['padding']:g}× | {p['dynamic_peak_mib']:.0f} / "
                     f"{p['fixed_peak_mib']:.0f} |")
    lines.append("")
    if "engine" in out:
        e = out["engine"]
        lines.append(f"- (1) same module both sides: max |Δlogit| = {e['max_abs_logit_diff']:.1e}; sweep.pair "
                     f"equals merge_methods.compose bit for bit: {e['pair_equals_compose']}; the paper's "
                     f"addition through the engine: {e['engine_paper_s_per_point'] * 1e3:.2f} ms per point")
    if "scoring" in out:
        s = out["scoring"]
        lines.append(f"- (2) answer token ids {s['answer_token_ids']}; prompts {s['prompt_tokens_mean']:.0f} tokens "
                     f"on average (max {s['prompt_tokens_max']}); predictions identical (score_with_eos vs "
                     f"beam search): {s['identical']} ({s['agree_eos_generate']:.0%} of {s['n']}; smallest score gap "
                     f"{s['smallest_score_gap']:.2g} nats); bare score_choices vs beam search "
                     f"{s['agree_bare_generate']:.0%}; beam search answered yes on {s['share_yes']:.0%}")
    if "padding" in out:
        p = out["padding"]
        lines.append(f"- (3) {p['tokens_mean']:.0f} tokens per example on average (max {p['tokens_max']}); "
                     f"tokens through the model {p['dynamic_tokens']} vs {p['fixed_tokens']} "
                     f"({p['fixed_tokens'] / p['dynamic_tokens']:.1f}×); predictions agree {p['agree']:.0%}, "
                     f"max |Δlogit| = {p['max_abs_logit_diff']:.1e}")
    failed = failures(out)
    lines.append("- checks: " + ("all passed" if not failed else "FAILED: " + "; ".join(failed)))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
