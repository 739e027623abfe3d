from pathlib import Path

import pytest

from tests.export.tiny_export import make_export


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_shards) -> Path:
    """A tiny export with its ONNX models (read-only for the tests: copy it to break it)."""
    return make_export(tmp_path_factory.mktemp("export"), tiny_shards)
