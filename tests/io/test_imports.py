"""The daemon always loads kestrel.io.gpio and kestrel.io.boards: they must not pull in heavy modules."""

from __future__ import annotations

import subprocess
import sys


def test_light_imports():
    code = (
        "import sys, kestrel.io, kestrel.io.gpio, kestrel.io.boards, kestrel.io.framing, kestrel.io.gpio_sim\n"
        "heavy = [m for m in ('gpiod', 'serial', 'paho', 'numpy', 'onnxruntime') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
