"""The value-head PRM compiled for OpenVINO scores as the transformers PRM does."""

import asyncio

import numpy as np
import pytest
import torch

from critics.prm import PRMCritic
from critics.prm_model import PRMFormat, ValueHeadModel
from critics.prm_openvino import PRM_MARKER, value_ir
from treesearch import Problem, State
from treesearch.models import load_causal_lm

pytest.importorskip("openvino", reason="openvino is a dependency of treesearch; install the project")

PROBLEM = Problem("p", "Tom has 3 bags of 4 apples. How many apples?", gold="12")
PROMPT = [{"role": "system", "content": "Solve."}, {"role": "user", "content": PROBLEM.question}]
STATES = [
    State(PROBLEM, PROMPT, ("3 bags of 4 apples.\n",)),
    State(PROBLEM, PROMPT, ("3 bags of 4 apples.\n", "3 * 4 = 12.\n", "The answer is 12.")),
    State(PROBLEM, "Q: 2 + 2?\n", ("2 + 2 = 4.\n", "The answer is 4.")),
]


@pytest.fixture(scope="module")
def prm_folder(tiny_model_dir, tmp_path_factory):
    model, tok = load_causal_lm(str(tiny_model_dir), device="cpu")
    torch.manual_seed(1)
    prm = ValueHeadModel(model)
    torch.nn.init.constant_(prm.head.bias, 0.3)
    return prm.save_pretrained(tmp_path_factory.mktemp("prm") / "prm", tok)


def test_openvino_values_equal_the_transformers_values(prm_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("TREESEARCH_CACHE", str(tmp_path / "cache"))
    reference = PRMCritic(str(prm_folder), device="cpu", backend="hf")
    fast = PRMCritic(str(prm_folder), device="cpu", backend="openvino", max_batch_size=2)  # batches of 2: padding
    assert reference.backend == "hf" and fast.backend == "openvino"
    expected = asyncio.run(reference.step_values(STATES))
    got = asyncio.run(fast.step_values(STATES))
    assert [len(v) for v in got] == [1, 3, 2]
    for a, b in zip(got, expected):
        assert a == pytest.approx(b, abs=1e-4)
    assert asyncio.run(fast.score(STATES)) == pytest.approx(asyncio.run(reference.score(STATES)), abs=1e-4)
    # converted once: the IR is cached by the folder's contents
    ir = value_ir(prm_folder)
    assert (ir.parent / PRM_MARKER).is_file() and ir.parent.parent == tmp_path / "cache" / "openvino"
    assert len(list((tmp_path / "cache" / "openvino").iterdir())) == 1


def test_auto_picks_openvino_for_a_value_head_on_the_cpu(prm_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("TREESEARCH_CACHE", str(tmp_path / "cache"))
    assert PRMCritic(str(prm_folder), device="cpu", backend="auto").backend == "openvino"
    with pytest.raises(ValueError, match="unknown PRM backend"):
        PRMCritic(str(prm_folder), backend="onnx")


def test_openvino_refuses_a_prm_that_is_not_a_value_head(tiny_model_dir, tmp_path):
    import json
    import shutil

    folder = tmp_path / "shepherd"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "treesearch_prm.json").write_text(json.dumps({"style": "math_shepherd", "separator": " ки"}))
    with pytest.raises(ValueError, match="runs value-head PRMs"):
        PRMCritic(str(folder), backend="openvino")
    assert PRMFormat("math_shepherd").style == "math_shepherd"


def _tree_states(depth: int = 3, width: int = 3) -> list[list[State]]:
    """Levels of a small tree: each state of a level extends one of the level before."""
    levels = [[State(PROBLEM, PROMPT, (f"Step {i}: {i} bags.\n",)) for i in range(width)]]
    for d in range(1, depth):
        levels.append([State(PROBLEM, PROMPT, parent.steps + (f"then {d} * {i} = {d * i}.\n",))
                       for parent in levels[-1][:2] for i in range(width)])
    return levels


def test_a_tree_is_scored_from_cached_segments_with_the_transformers_values(prm_folder, tmp_path, monkeypatch):
    """Children are scored by running only their new step: fewer tokens through the
    network than the states hold, the same values as transformers' full forwards."""
    monkeypatch.setenv("TREESEARCH_CACHE", str(tmp_path / "cache"))
    reference = PRMCritic(str(prm_folder), device="cpu", backend="hf")
    fast = PRMCritic(str(prm_folder), device="cpu", backend="openvino", max_batch_size=4)
    net = fast.lm.model
    total = 0
    for level in _tree_states():
        got = asyncio.run(fast.step_values(level))
        expected = asyncio.run(reference.step_values(level))
        for a, b in zip(got, expected):
            assert len(a) == len(b) and a == pytest.approx(b, abs=1e-4)
        total += sum(len(fast.segments(s)[0]) for s in level)
    prompt_tokens = fast.segments(_tree_states()[0][0])[1][0]
    assert net.tokens_run + net.tokens_reused == total + prompt_tokens  # the prompt's own forward, then reused
    assert net.tokens_run < total - 10 * prompt_tokens  # the prompt ran once, not once per state
    assert len(net.cache) > 0


def test_without_a_kv_cache_every_token_runs_and_the_values_stay(prm_folder, tmp_path, monkeypatch):
    from critics.prm_openvino import OpenVINOValueNet
    from treesearch.models import load_tokenizer

    monkeypatch.setenv("TREESEARCH_CACHE", str(tmp_path / "cache"))
    cached = PRMCritic(str(prm_folder), device="cpu", backend="openvino")
    plain = PRMCritic((OpenVINOValueNet(prm_folder, kv_cache_gib=0), load_tokenizer(str(prm_folder))), style="value_head")
    for level in _tree_states(depth=2):
        for a, b in zip(asyncio.run(plain.step_values(level)), asyncio.run(cached.step_values(level))):
            assert len(a) == len(b) and a == pytest.approx(b, abs=1e-5)
    net = plain.lm.model
    assert net.tokens_reused == 0 and len(net.cache) == 0
