"""Fixtures for the project's real models, shared by tests/inference, tests/memory, tests/models.

Built models come from the recipes in models/NAME/ and are cached in models/NAME/build/: a build
whose manifest still verifies and whose recipe is unchanged is reused, so the CI test command
builds each model once (``kestrel models build``) and the tests find it ready.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _build(name: str, needs: str):
    """The cached build if current, else build it now (skip if the host extra is missing)."""
    from kestrel.inference.build import build_model, up_to_date

    cached = up_to_date(REPO / "models" / name)
    if cached is not None:
        return cached
    pytest.importorskip(needs, reason=f"building {name} needs the [models] extra")
    return build_model(name, models_dir=REPO / "models")


@pytest.fixture(scope="session")
def sensor_build():
    """The built sensor-anomaly model (onnx, int8), built once per session if needed."""
    return _build("sensor-anomaly", "onnx")


@pytest.fixture(scope="session")
def sensor_lite_build():
    return _build("sensor-anomaly-lite", "ai_edge_litert")


@pytest.fixture(scope="session")
def minilm_build():
    """The built int8 MiniLM (a minute or two the first time; cached in models/minilm/build/)."""
    return _build("minilm", "optimum")


def copy_model(model, dest: Path) -> Path:
    """A private, writable copy of a built model folder (tests tamper with copies only)."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in ["manifest.json"] + [e.path for e in model.manifest.files]:
        shutil.copyfile(model.path / f, dest / f)
    return dest


@pytest.fixture(scope="session")
def minilm_state(minilm_build, tmp_path_factory):
    """A state directory with MiniLM installed (no identity: store-level use only)."""
    from kestrel.inference.store import ModelStore

    state = tmp_path_factory.mktemp("minilm-state")
    os.chmod(state, 0o700)
    ModelStore(state).install(minilm_build.path)
    return state


@pytest.fixture(scope="session")
def embedder(minilm_state):
    from kestrel.inference.embedding import Embedder
    from kestrel.inference.store import ModelStore

    return Embedder(ModelStore(minilm_state).get("minilm"))
