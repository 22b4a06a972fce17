"""YAML with line numbers: mappings remember the line of each key (for ConfigError)."""

from __future__ import annotations

from typing import Any

import yaml

from .._internal.yamlerror import yaml_config_error
from ..errors import ConfigError

__all__ = ["LineDict", "load_yaml"]


class LineDict(dict):
    """A dict from YAML that knows the 1-based line of each key (``lines``) and its own (``line``)."""

    line: int = 0

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.lines: dict[Any, int] = {}


class _Loader(yaml.SafeLoader):
    pass


class _KeyProblem(Exception):
    def __init__(self, message: str, line: int, key: str | None = None) -> None:
        super().__init__(message)
        self.message, self.line, self.key = message, line, key


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise _KeyProblem("mapping key is not a scalar", key_node.start_mark.line + 1) from None
        if key in out:
            raise _KeyProblem("duplicate key", key_node.start_mark.line + 1, str(key))
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str, *, source: str) -> Any:
    """Parse one YAML document; syntax errors become ConfigError(path, line, column)."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except _KeyProblem as exc:
        raise ConfigError(exc.message, path=source, line=exc.line, key=exc.key) from None
    except yaml.YAMLError as exc:
        raise yaml_config_error(exc, source=source, label="YAML syntax error", unmarked_label="YAML error") from None
