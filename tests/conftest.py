"""Shared fixtures: the tiny offline model (built once per session) and the ../shared data folder (skip if absent)."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-init Qwen2 + locally trained tokenizer, saved as a Hugging Face folder. Nothing is downloaded."""
    import utils
    return utils.build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip("../shared is not present")
    return SHARED


@pytest.fixture(scope="session")
def lawbench_dir() -> Path:
    if not (SHARED / "lawbench" / "data").is_dir():
        pytest.skip("../shared/lawbench is not present")
    return SHARED / "lawbench"
