from tests.models.conftest import copy_model, embedder, minilm_build, minilm_state, sensor_build, sensor_lite_build  # noqa: F401
