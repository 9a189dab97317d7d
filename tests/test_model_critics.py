"""Model-based critics on tiny random models built from a real config (and SmolLM2's tokenizer)."""

import asyncio
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from critics import make_critic
from critics.loglik import LogLikelihoodCritic
from critics.prm import PRMCritic
from critics.prm_model import PRMFormat, ValueHeadModel, encode_steps
from critics.rollout import RolloutCritic
from critics.self_eval import SelfEvalCritic
from treesearch import Problem, State
from treesearch.models import load_causal_lm
from tests.doubles import ScriptedPolicy

PROBLEM = Problem("p", "Tom has 3 bags of 4 apples. How many apples?", gold="12")
PROMPT = [{"role": "user", "content": PROBLEM.question}]
STATES = [
    State(PROBLEM, PROMPT, ("3 bags of 4 apples.\n",)),
    State(PROBLEM, PROMPT, ("3 bags of 4 apples.\n", "3 * 4 = 12.\n")),
    State(PROBLEM, PROMPT, ("3 bags of 4 apples.\n", "3 * 4 = 12.\n", "The answer is 12.")),
    State(PROBLEM, PROMPT, ("Apples are red.\n",)),
]


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_causal_lm(str(tiny_model_dir), device="cpu")


def test_self_eval_is_a_probability_and_independent_of_batching(tiny):
    critic = SelfEvalCritic(tiny, max_batch_size=4)
    batched = run(critic.score(STATES))
    single = np.concatenate([run(critic.score([s])) for s in STATES])
    assert batched.shape == (4,) and ((batched > 0) & (batched < 1)).all()
    assert np.allclose(batched, single, atol=1e-5)  # padding does not change values
    # the value is the normalised P(Yes) at the end of the judging prompt
    ids = torch.tensor([critic.lm.encode(critic.judge_text(STATES[0]))])
    logits = tiny[0](input_ids=ids).logits[0, -1]
    yes, no = logits[critic.yes_id].item(), logits[critic.no_id].item()
    assert batched[0] == pytest.approx(1 / (1 + math.exp(no - yes)), abs=1e-5)


def test_loglik_is_the_geometric_mean_token_probability(tiny):
    critic = LogLikelihoodCritic(tiny)
    values = run(critic.score(STATES))
    assert ((values > 0) & (values <= 1)).all()
    model, tok = tiny
    from treesearch.prompting import render_prompt

    prompt = tok.encode(render_prompt(tok, PROMPT), add_special_tokens=False)
    solution = tok.encode(STATES[1].solution, add_special_tokens=False)
    ids = torch.tensor([prompt + solution])
    lp = torch.log_softmax(model(input_ids=ids).logits[0], -1)
    token_lp = [lp[len(prompt) - 1 + j, t].item() for j, t in enumerate(solution)]
    assert values[1] == pytest.approx(math.exp(sum(token_lp) / len(token_lp)), rel=1e-4)


def test_value_head_prm_scores_every_step_and_round_trips(tiny, tmp_path):
    model, tok = tiny
    torch.manual_seed(0)
    prm = ValueHeadModel(model)
    critic = PRMCritic((prm, tok))
    per_step = run(critic.step_values(STATES))
    assert [len(v) for v in per_step] == [1, 2, 3, 1]
    assert all(0 <= x <= 1 for v in per_step for x in v)
    # a state's value is its latest step's, and a prefix's step values do not depend on later steps
    values = run(critic.score(STATES))
    assert values[2] == pytest.approx(per_step[2][-1])
    assert per_step[2][:2] == pytest.approx(per_step[1], abs=1e-5)
    # the checkpoint folder loads back with identical values, style read from the folder
    folder = prm.save_pretrained(tmp_path / "prm", tok)
    assert (folder / "value_head.safetensors").is_file() and not (folder / "value_head.pt").exists()
    loaded = PRMCritic(str(folder), device="cpu")
    assert loaded.format.style == "value_head"
    assert run(loaded.score(STATES)) == pytest.approx(values, abs=1e-5)
    assert run(make_critic("prm", model=str(folder), device="cpu", aggregate="min").score(STATES)) == pytest.approx(
        [min(v) for v in per_step], abs=1e-5
    )


def test_encode_steps_marks_each_step_end(tiny):
    _, tok = tiny
    fmt = PRMFormat("math_shepherd")
    ids, positions = encode_steps(tok, "Q: ", ["a\n", "b\n"], fmt)
    sep = tok.encode(fmt.separator, add_special_tokens=False)
    assert len(positions) == 2 and positions[-1] == len(ids) - 1
    assert ids[positions[0] - len(sep) + 1 : positions[0] + 1] == sep


def test_math_shepherd_style_reads_good_vs_bad_tokens(tiny, tmp_path):
    model, tok = tiny
    folder = tmp_path / "shepherd"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    critic = PRMCritic(str(folder), style="math_shepherd", device="cpu")
    ids, positions = critic.encode(STATES[1])
    logits = model(input_ids=torch.tensor([ids])).logits[0]
    good, bad = logits[positions[-1], critic.good_id].item(), logits[positions[-1], critic.bad_id].item()
    assert run(critic.score(STATES[1:2]))[0] == pytest.approx(1 / (1 + math.exp(bad - good)), abs=1e-5)


def test_qwen_style_reads_the_positive_class_at_separators(tiny_model_dir, smollm2_tokenizer):
    from transformers import LlamaConfig, LlamaForTokenClassification

    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.num_labels = 2
    torch.manual_seed(1)
    net = LlamaForTokenClassification(config).eval()
    critic = PRMCritic((net, smollm2_tokenizer), style="qwen_prm")
    ids, positions = critic.encode(STATES[2])
    logits = net(input_ids=torch.tensor([ids])).logits[0]
    expected = torch.softmax(logits[positions], -1)[:, 1].tolist()
    assert run(critic.step_values(STATES[2:3]))[0] == pytest.approx(expected, abs=1e-5)


class _Touch:
    """Pickles to a call that creates `path` when unpickled (a stand-in for hostile code)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_legacy_pt_head_loads_as_tensors_only(tiny, tmp_path):
    model, tok = tiny
    folder = ValueHeadModel(model).save_pretrained(tmp_path / "prm", tok)
    head = folder / "value_head.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(str(head)), folder / "value_head.pt")  # as earlier versions wrote it
    head.unlink()
    assert PRMCritic(str(folder), device="cpu").format.style == "value_head"
    marker = tmp_path / "ran"
    torch.save({"weight": _Touch(marker)}, folder / "value_head.pt")
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|global"):
        ValueHeadModel.from_pretrained(folder, device="cpu")
    assert not marker.exists()


def test_a_prm_folder_that_maps_to_its_own_code_is_refused_unless_trusted(tmp_path):
    folder = tmp_path / "prm"
    folder.mkdir()
    marker = tmp_path / "ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "auto_map": {"AutoModel": "evil.Model"}}))
    with pytest.raises(ValueError, match="critic.trust_remote_code=true"):
        PRMCritic(str(folder), style="qwen_prm", device="cpu")
    assert not marker.exists()


def test_bad_prm_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="PRM checkpoint folder not found"):
        PRMCritic(str(tmp_path / "missing"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a model")
    with pytest.raises(ValueError, match=r"critic.model=.*notes is not a PRM checkpoint: it has no config.json"):
        PRMCritic(str(tmp_path / "notes"))
    with pytest.raises(ValueError, match="unknown PRM style 'orm'"):
        PRMFormat("orm")


def test_rollout_values_are_mean_graded_outcomes():
    # from "half\n" the policy answers 12 or 7 with equal chance; rollouts grade them
    script = {
        ("half\n",): [("The answer is 12.", -0.69), ("The answer is 7.", -0.69)],
        ("sure\n",): [("The answer is 12.", -0.01)],
    }
    policy = ScriptedPolicy(script, mode="sample")
    critic = RolloutCritic(policy, k=200, seed=3)
    half = State(PROBLEM, PROMPT, ("half\n",))
    sure = State(PROBLEM, PROMPT, ("sure\n",))
    done_wrong = State(PROBLEM, PROMPT, ("The answer is 5.",), terminal=True, answer="5")
    values, tokens = run(critic.score_with_cost([half, sure, done_wrong]))
    assert values[1] == 1.0 and values[2] == 0.0
    assert 0.35 < values[0] < 0.65
    assert tokens[0] > 0 and tokens[2] == 0  # terminal states need no rollouts
    assert policy.calls == [("complete", 400)]  # one batched call for all rollouts


def test_rollout_without_gold_needs_an_outcome_critic():
    policy = ScriptedPolicy({})
    state = State(Problem("x", "q?"), PROMPT, ("a\n",))
    with pytest.raises(ValueError, match="no gold answer and no outcome_critic"):
        run(RolloutCritic(policy, k=2).score([state]))
    values = run(RolloutCritic(policy, k=2, outcome_critic=lambda s: 0.25).score([state]))
    assert values[0] == pytest.approx(0.25)
