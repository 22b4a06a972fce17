"""YAML parse errors become ConfigErrors that name the file, line and column."""

from __future__ import annotations

import pytest
import yaml

from kestrel._internal.yamlerror import yaml_config_error


def _error(text: str) -> yaml.YAMLError:
    with pytest.raises(yaml.YAMLError) as info:
        yaml.safe_load(text)
    return info.value


def test_marked_error_carries_line_and_column():
    err = yaml_config_error(_error("a: [1, 2\nb: 3\n"), source="dev.yaml", label="not valid YAML")
    assert err.path == "dev.yaml" and err.line is not None and err.column is not None
    assert str(err).startswith(f"dev.yaml:{err.line}:{err.column}: not valid YAML: ")


def test_unmarked_error_uses_its_own_label():
    err = yaml_config_error(
        yaml.YAMLError("boom"), source="p.yaml", label="YAML syntax error", unmarked_label="YAML error"
    )
    assert str(err) == "p.yaml: YAML error: boom" and err.line is None
