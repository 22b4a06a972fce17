"""Build every model recipe under models/ that the test suite uses (host-side; cached).

Each recipe decides itself whether its build is current (hashes in its manifest), so
running this twice costs seconds. Called by `./dev test` before pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    names = sorted(p.parent.name for p in (ROOT / "models").glob("*/recipe.py"))
    for name in names:
        print(f"[build_models] {name}", flush=True)
        rc = subprocess.call([sys.executable, "-m", "kestrel.cli", "models", "build", name])
        if rc != 0:
            print(f"[build_models] building {name} failed (exit {rc})", file=sys.stderr)
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
