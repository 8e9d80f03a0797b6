"""Shared test setup. pyproject.toml's pytest options already make any non-loopback socket fail a test."""

import os

from utils.offline import enable_offline_mode

enable_offline_mode()
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
