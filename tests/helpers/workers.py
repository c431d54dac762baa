"""Functions run inside spawned worker processes by the tests (they must be importable by name)."""
from __future__ import annotations

import os
import time
from pathlib import Path


def record_pid_and_sleep(folder: str, seconds: float = 120.0) -> None:
    Path(folder, f"{os.getpid()}.pid").write_text("")
    time.sleep(seconds)
