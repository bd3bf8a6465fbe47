import os
from pathlib import Path

import pytest

# Offline, CPU, quiet: tests never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests run tiny models, for which a second thread only adds synchronisation overhead.
import torch  # noqa: E402

torch.set_num_threads(1)
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Each test session gets its own module cache unless the caller chose one (e.g. to keep the
    # converted SmolLM2 between runs).
    if "PEMNB_CACHE_DIR" not in os.environ:
        monkeypatch.setenv("PEMNB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "pemnb-cache"))


@pytest.fixture
def shared_data(monkeypatch):
    """The real offline data folder (../shared/data or $PEMNB_DATA_DIR)."""
    root = Path(os.environ.get("PEMNB_DATA_DIR") or SHARED_DATA)
    if not (root / "glue").exists():
        pytest.fail(f"real data folder not found at {root}; set PEMNB_DATA_DIR")
    monkeypatch.setenv("PEMNB_DATA_DIR", str(root))
    return root
