"""Argument helpers shared by the command-group modules."""

from __future__ import annotations

import argparse

STATE_HELP = "state directory (default $KESTREL_STATE or ~/.local/state/kestrel)"


def add_state_arg(p: argparse.ArgumentParser) -> None:
    """The ``--state DIR`` option every command that touches an agent takes."""
    p.add_argument("--state", metavar="DIR", help=STATE_HELP)
