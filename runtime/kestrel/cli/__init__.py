"""The ``kestrel`` command line.

Each command group lives in its own module under ``kestrel.cli`` and exposes
``register(subparsers)``. A command's handler is set with
``parser.set_defaults(func=handler)`` and receives ``(args, extra)`` where
``extra`` holds options the parser did not know (only for commands that set
``accepts_extra=True``, e.g. ``kestrel call --action send_email --to alice``).

Command modules must import only what they need inside their handlers so that
``kestrel --help`` and the daemon start fast and lean.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..errors import KestrelError, UsageError

# Command-group modules, in help order. Each provides register(subparsers).
COMMAND_MODULES = (
    "identity",  # init-agent, identity show|backup|restore
    "audit",  # audit log|verify|export|prove
    "policy",  # policy check|explain, set-policy
    "ota",  # owner, trust, bundle, ota
    "daemon",  # run, call, status, sim
    "models",  # models, deploy, memory
    "sync",  # sync, collector, agent-connect
    "agent",  # ask
    "ui",  # ui token
)


# Commands whose process lives long: build only their own group, so the daemon does not keep
# every command group's parser and modules in memory for its whole life.
LEAN_COMMANDS = {"run": "daemon"}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    from ._common import environment_epilog

    parser = argparse.ArgumentParser(
        prog="kestrel",
        description="Kestrel: an edge runtime for agents that stay with their owners.",
        epilog=environment_epilog() + "\n\nquick start: README.md; `kestrel COMMAND --help` for each command",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    first = next((a for a in (argv or ()) if not a.startswith("-")), None)
    modules = (LEAN_COMMANDS[first],) if first in LEAN_COMMANDS else COMMAND_MODULES
    for name in modules:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # command group not built yet
            raise
        module.register(sub)
    return parser


class _VersionAction(argparse.Action):
    """Resolve the version only when asked: importlib.metadata costs ~100 ms at start-up."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: D102
        print(f"kestrel {_version()}")
        parser.exit()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("kestrel-sovereign")
    except Exception:
        return "unknown"


def _suggest_command(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int | None:
    """A mistyped command (or sub-command): say so with the closest name, exit 64."""
    from ._common import did_you_mean

    words = [a for a in argv if not a.startswith("-")]
    action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    cmd: list[str] = []
    for word in words:
        if action is None:
            return None
        choices = action.choices
        if word not in choices:
            where = " ".join(["kestrel", *cmd])
            print(
                f"{where}: error: unknown command {word!r}{did_you_mean(word, choices)}\n"
                f"  commands: {', '.join(choices)}\n  `{where} --help` describes them",
                file=sys.stderr,
            )
            return 64
        cmd.append(word)
        sub = choices[word]
        action = next((a for a in sub._actions if isinstance(a, argparse._SubParsersAction)), None)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    if argv and not argv[0].startswith("-") and argv[0] not in LEAN_COMMANDS:
        rc = _suggest_command(parser, argv)
        if rc is not None:
            return rc
    args, extra = parser.parse_known_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 64
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    del parser  # a long-running command (kestrel run) should not keep it alive
    try:
        rc = func(args, extra)
    except KestrelError as exc:
        print(f"kestrel: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kestrel: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return int(rc or 0)


def run() -> None:
    sys.exit(main())


__all__ = ["main", "build_parser", "UsageError"]
