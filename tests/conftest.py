"""Shared test settings: one torch thread, offline hubs, data from ../shared/data when present."""
import os
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if "BOOK_DATA_DIR" not in os.environ and (REPO.parent / "shared" / "data").is_dir():
    os.environ["BOOK_DATA_DIR"] = str(REPO.parent / "shared" / "data")
torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "live: drives JupyterLab (started from the venv) in headless Chromium")
