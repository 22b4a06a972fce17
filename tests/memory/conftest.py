"""The model fixtures live in tests/models/conftest.py; they are shared here."""

from tests.models import conftest as _models

sensor_build = _models.sensor_build
sensor_lite_build = _models.sensor_lite_build
minilm_build = _models.minilm_build
minilm_state = _models.minilm_state
embedder = _models.embedder
