import os
from pathlib import Path

import pytest

from pemnb.paths import data_dir

# Offline, CPU, quiet: tests never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests run tiny models, for which a second thread only adds synchronisation overhead.
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Each test session gets its own module cache unless the caller chose one (e.g. to keep the
    # converted SmolLM2 between runs).
    if "PEMNB_CACHE_DIR" not in os.environ:
        monkeypatch.setenv("PEMNB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "pemnb-cache"))
    # ... and its own annotations folder: tests never write into a reader's judgements
    if "PEMNB_ANNOTATIONS_DIR" not in os.environ:
        monkeypatch.setenv("PEMNB_ANNOTATIONS_DIR", str(tmp_path_factory.getbasetemp() / "pemnb-annotations"))
    # ... and its own results folder: a chapter run in a test never writes the book's results/
    if "PEMNB_RESULTS_DIR" not in os.environ:
        monkeypatch.setenv("PEMNB_RESULTS_DIR", str(tmp_path_factory.getbasetemp() / "pemnb-results"))


@pytest.fixture
def shared_data(monkeypatch):
    """The real offline data folder ($PEMNB_DATA_DIR, else the data/ folder the project ships)."""
    root = data_dir()
    if root is None or not (root / "glue").exists():
        pytest.fail(f"real data folder not found at {root}; the checkout's data/ folder is missing")
    monkeypatch.setenv("PEMNB_DATA_DIR", str(root))
    return root
