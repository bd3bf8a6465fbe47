"""Run every benchmark side by side in one process and print the ratios (``python -m benchmarks.run``).

Timings are wall-clock medians on this machine's CPU; run it with nothing else busy (the numbers in
book/performance.md were taken under ``flock /tmp/pemnb-heavy.lock``). Memory is the peak resident
set size (RSS, psutil sampled every 2 ms in a thread) during one run of each side, above the RSS just
before it. ``--quick`` shrinks every size for a smoke check of the scripts themselves.
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
            "load_average_1min_at_start": os.getloadavg()[0]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the scripts run")
    parser.add_argument("--only", nargs="*", choices=sorted(TARGETS), help="run only these benchmarks")
    parser.add_argument("--json", help="also write every measured number to this file")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM"):
        os.environ.setdefault(var, "1" if var != "TOKENIZERS_PARALLELISM" else "false")

    from . import engine, padding, scoring

    sizes = {"engine": dict(n_eval=64, grid_points=11, repeat=3),
             "scoring": dict(n=24, repeat=3, repeat_generate=1),
             "padding": dict(n=128, batch_size=32, repeat=3)}
    if args.quick:
        sizes = {"engine": dict(n_eval=16, grid_points=3, repeat=1), "scoring": dict(n=4, repeat=1),
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
    return out


def report(out: dict) -> str:
    """The results as a markdown table plus the checks (what was compared and whether it agreed)."""
    env = out["environment"]
    lines = [f"measured by `python -m benchmarks.run` on {env['date']}: {env['cpu']}, {env['cores']} cores "
             f"({env['torch_threads']} torch threads), Python {env['python']}, torch {env['torch']}, "
             f"transformers {env['transformers']}, peft {env['peft']}; total {out['total_wall_s']:.0f} s; "
             f"1-min load average {env['load_average_1min_at_start']:.1f} at the start, "
             f"{env.get('load_average_1min_at_end', float('nan')):.1f} at the end", "",
             "| benchmark | pemnb | baseline | ratio | target | peak RSS pemnb / baseline (MiB) |",
             "|---|---|---|---|---|---|"]
    if "engine" in out:
        e = out["engine"]
        lines.append(f"| (1) λ point, eval excluded ({e['backbone']}, {e['grid_points']} λ, median of "
                     f"{e['repeat']}) | write_state {e['engine_s_per_point'] * 1e3:.2f} ms | peft "
                     f"add_weighted_adapter+set_adapter {e['peft_s_per_point'] * 1e3:.1f} ms | "
                     f"**{e['ratio']:.1f}×** | ≥ {TARGETS['engine']:g}× | {e['engine_peak_mib']:.1f} / "
                     f"{e['peft_peak_mib']:.1f} |")
        lines.append(f"| (1b) λ point incl. SST-2 eval of {e['n_eval']} examples | "
                     f"{e['engine_with_eval_s'] * 1e3:.0f} ms | {e['peft_with_eval_s'] * 1e3:.0f} ms | "
                     f"{e['ratio_with_eval']:.2f}× | – | – |")
    if "scoring" in out:
        s = out["scoring"]
        lines.append(f"| (2) RTE answers, {s['n']} examples ({s['backbone']}) | score_choices "
                     f"{s['score_s']:.2f} s | constrained_generate (5 beams) {s['generate_s']:.2f} s | "
                     f"**{s['ratio']:.1f}×** | ≥ {TARGETS['scoring']:g}× | {s['score_peak_mib']:.0f} / "
                     f"{s['generate_peak_mib']:.0f} |")
        lines.append(f"| (2b) same, last-position logits only | score_last_token {s['fast_s']:.2f} s | "
                     f"constrained_generate {s['generate_s']:.2f} s | {s['ratio_fast']:.1f}× | – | "
                     f"{s['fast_peak_mib']:.0f} / {s['generate_peak_mib']:.0f} |")
    if "padding" in out:
        p = out["padding"]
        lines.append(f"| (3) eval {p['n']} {p['task']} examples ({p['backbone']}, batch {p['batch_size']}) | "
                     f"EvalBatches {p['dynamic_s']:.2f} s | pad to 128 {p['fixed_s']:.2f} s | "
                     f"**{p['ratio']:.1f}×** | ≥ {TARGETS['padding']:g}× | {p['dynamic_peak_mib']:.0f} / "
                     f"{p['fixed_peak_mib']:.0f} |")
    lines.append("")
    if "engine" in out:
        lines.append(f"- (1) same module both sides: max |Δlogit| = {out['engine']['max_abs_logit_diff']:.1e}")
    if "scoring" in out:
        s = out["scoring"]
        lines.append(f"- (2) answer token ids {s['answer_token_ids']}; prompts {s['prompt_tokens_mean']:.0f} tokens "
                     f"on average (max {s['prompt_tokens_max']}); predictions agree: score vs generate "
                     f"{s['agree_score_generate']:.0%}, score_last_token vs score {s['agree_fast_score']:.0%}")
    if "padding" in out:
        p = out["padding"]
        lines.append(f"- (3) {p['tokens_mean']:.0f} tokens per example on average (max {p['tokens_max']}); "
                     f"predictions agree {p['agree']:.0%}, max |Δlogit| = {p['max_abs_logit_diff']:.1e}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
