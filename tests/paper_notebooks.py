"""Execute the chapter notebooks themselves at the `paper` profile on the dry run's stand-ins.

    .venv/bin/python tests/paper_notebooks.py            # every chapter, into /tmp/pemnb-paper-notebooks
    .venv/bin/python tests/paper_notebooks.py 03 05      # some

Same stand-ins and cuts as tests/test_paper_dryrun.py, passed to the notebooks through
$PEMNB_PROFILE=paper and $PEMNB_PROFILE_OVERRIDES; the hub and data through $PEMNB_HUB_DIR and
$PEMNB_DATA_DIR. Slower than the dry run (a kernel per chapter), so not part of `make test`.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def environment(work: Path) -> dict[str, str]:
    import tiny_hub
    import test_paper_dryrun as T
    from pemnb import multitask as MT
    from pemnb.paths import SHIPPED_DATA

    hub = tiny_hub.build(work / "tiny-hub", SHIPPED_DATA)
    tiny_hub.build_gated(hub, SHIPPED_DATA)
    data = tiny_hub.build_data(work / "paper-data", SHIPPED_DATA)
    chapters = {k: dict(v) for k, v in T.CUTS.items()}
    mt = chapters["multitask"]
    mt["hparams"] = T._with_steps(MT.PRESETS["paper"]["hparams"], mt.pop("steps"))
    overrides = {"train_size": 16, "eval_size": 16, "steps": 2, "device": os.environ.get("PEMNB_DEVICE", "cpu"),
                 "chapters": chapters}
    return {"PEMNB_PROFILE": "paper", "PEMNB_PROFILE_OVERRIDES": json.dumps(overrides), "PEMNB_HUB_DIR": str(hub),
            "PEMNB_DATA_DIR": str(data), "PEMNB_CACHE_DIR": str(work / "cache"),
            "PEMNB_ANNOTATIONS_DIR": str(work / "annotations"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            # a non-interactive run, as the book's: no progress bars and the explorers' static curves
            # (a live ipywidgets Output under nbclient can leave the client waiting forever)
            "PEMNB_PROGRESS": "0"}


def main(chapters: list[str]) -> int:
    import nbformat
    from nbclient import NotebookClient

    work = Path(os.environ.get("PEMNB_DRYRUN_DIR", "/tmp/pemnb-paper-notebooks"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(environment(work))
    failed = 0
    for nb_path in sorted((HERE.parent / "notebooks").glob("*.ipynb")):
        if chapters and nb_path.name[:2] not in chapters:
            continue
        nb = nbformat.read(nb_path, as_version=4)
        t0 = time.perf_counter()
        try:
            NotebookClient(nb, timeout=600, kernel_name="python3",
                           resources={"metadata": {"path": str(nb_path.parent)}}).execute()
            print(f"{nb_path.name}: ok ({time.perf_counter() - t0:.0f} s)", flush=True)
        except Exception as e:  # report every chapter, then fail
            failed += 1
            print(f"{nb_path.name}: FAILED ({time.perf_counter() - t0:.0f} s)\n{str(e)[-3000:]}", flush=True)
        nbformat.write(nb, work / nb_path.name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
