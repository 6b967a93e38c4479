"""Hugging Face model ids resolved offline from a local HF cache laid out as huggingface_hub lays it out.

The cache is built in tmp_path (models--org--name/{blobs, snapshots/<commit>, refs/main}) from a tiny
random Llama with a tokenizer; huggingface_hub is pointed at it by an explicit `hf_cache_dir`, or (for
`LLM(model=...)`, which has no such option) by patching `huggingface_hub.constants.HF_HUB_CACHE` for the
test only.
"""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch

from dynaspec import LLM, SamplingParams
from dynaspec.models import hf_cache
from dynaspec.models.loader import load_hf_config, load_model, load_tokenizer, resolve_spec
from tests.tiny_models import make_hf_cache_snapshot, make_tiny_checkpoint, save_tiny_tokenizer

REPO_ID = "tiny-org/tiny-llama"
GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), "llama", seed=3)
    return save_tiny_tokenizer(path)


@pytest.fixture(scope="module")
def hub(tmp_path_factory, model_dir):
    cache = tmp_path_factory.mktemp("hf-hub")
    make_hf_cache_snapshot(cache, REPO_ID, model_dir)
    return cache


def test_snapshot_is_found_offline(hub):
    snapshot = hf_cache.find_snapshot(REPO_ID, hub)
    assert snapshot == hub / "models--tiny-org--tiny-llama" / "snapshots" / ("a1" * 20)
    assert (snapshot / "config.json").is_symlink()  # the real layout: symlinks into blobs/
    assert hf_cache.cached_model_ids(hub) == [REPO_ID]
    assert hf_cache.find_snapshot("tiny-org/other", hub) is None


def test_hf_id_loads_the_same_weights_and_tokenizer(hub, model_dir):
    source = resolve_spec(REPO_ID, hf_cache_dir=hub)
    assert source.name == REPO_ID and (source.path / "model.safetensors").is_file()
    loaded = load_model(REPO_ID, torch.float32, "cpu", hf_cache_dir=hub)
    direct = load_model(str(model_dir), torch.float32, "cpu")
    assert loaded.name == REPO_ID and not loaded.is_random
    ours, ref = dict(loaded.model.named_parameters()), dict(direct.model.named_parameters())
    assert set(ours) == set(ref)
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], rtol=0, atol=0)
    assert load_hf_config(REPO_ID, hf_cache_dir=hub).architectures == ["LlamaForCausalLM"]
    assert load_tokenizer(REPO_ID, hf_cache_dir=hub).encode("w5 w9") == direct.tokenizer.encode("w5 w9")


def test_llm_with_hf_id_gives_the_directory_greedy_output(hub, model_dir, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    prompts = ["w3 w17 w100 w5 w9 w250 w7", "w400 w11"]
    from_cache = LLM(model=REPO_ID, block_size=4).generate(prompts, GREEDY)
    from_dir = LLM(model=str(model_dir), block_size=4).generate(prompts, GREEDY)
    assert [o.token_ids for o in from_cache] == [o.token_ids for o in from_dir]
    assert [o.text for o in from_cache] == [o.text for o in from_dir]
    assert all(len(o.token_ids) == 16 for o in from_cache)


def test_missing_id_names_the_cache_and_the_accepted_forms(hub):
    with pytest.raises(ValueError) as err:
        resolve_spec("tiny-org/not-there", hf_cache_dir=hub)
    msg = str(err.value)
    assert "tiny-org/not-there" in msg and str(hub) in msg
    assert "models--tiny-org--not-there" in msg and REPO_ID in msg  # where it looked, what is there
    assert "smollm2-135m-instruct" in msg and "random:" in msg and ".gguf" in msg and "directory" in msg


def test_missing_id_in_the_default_cache_names_it(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(ValueError, match="HF_HUB_CACHE") as err:
        resolve_spec("some-org/some-model")
    assert str(tmp_path / "empty-hub") in str(err.value) and "no models are cached" in str(err.value)


def test_incomplete_snapshot_without_config(tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "README.md").write_text("no weights")
    make_hf_cache_snapshot(tmp_path / "hub", "org/bare", bare)
    with pytest.raises(ValueError, match="no config.json"):
        resolve_spec("org/bare", hf_cache_dir=tmp_path / "hub")


def test_paths_are_not_taken_for_hub_ids(tmp_path):
    assert not hf_cache.is_repo_id(str(tmp_path / "x" / "model.gguf"))
    assert not hf_cache.is_repo_id("./a/b") and hf_cache.is_repo_id("org/name") and hf_cache.is_repo_id("gpt2")
