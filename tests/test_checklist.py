"""The STICK checklist critic on a tiny random model built from SmolLM2's config."""

import asyncio

import numpy as np
import pytest
import torch

from critics import make_critic
from critics.checklist import FALLBACK_ITEMS, ChecklistCritic, parse_checklist
from treesearch import Problem, State
from treesearch.models import load_causal_lm
from tests.doubles import ScriptedPolicy

PROBLEM = Problem("p", "Tom has 3 bags of 4 apples. He eats 2. How many apples are left?", gold="10")
OTHER = Problem("q", "Ann has 5 pens and buys 3 more. How many pens?", gold="8")
PROMPT = [{"role": "user", "content": PROBLEM.question}]
WRITTEN = ("1. Does the solution multiply 3 by 4?\n2. Does it subtract the 2 eaten apples?\n"
           "Some words that are no question.\n- Is the final answer 10?\n")


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_causal_lm(str(tiny_model_dir), device="cpu")


def test_parse_checklist_keeps_distinct_questions_without_list_marks():
    assert parse_checklist(WRITTEN, 5) == ("Does the solution multiply 3 by 4?", "Does it subtract the 2 eaten apples?",
                                           "Is the final answer 10?")
    assert parse_checklist(WRITTEN, 2) == ("Does the solution multiply 3 by 4?", "Does it subtract the 2 eaten apples?")
    assert parse_checklist("[ ] Is it right?\n[ ] Is it right?\nOk?", 4) == ("Is it right?",)  # distinct, >= 8 chars
    assert parse_checklist("no questions here", 4) == ()


def test_a_policy_writes_each_problems_checklist_once_and_values_are_mean_yes(tiny):
    writer = ScriptedPolicy({(): [(WRITTEN, -0.1)]})
    critic = ChecklistCritic(tiny, writer=writer, num_items=4)
    states = [State(PROBLEM, PROMPT, ("3 * 4 = 12\n",)), State(PROBLEM, PROMPT, ("3 * 4 = 12\n", "12 - 2 = 10\n")),
              State(OTHER, [{"role": "user", "content": OTHER.question}], ("5 + 3 = 8\n",))]

    async def concurrently():
        return await asyncio.gather(critic.score(states[:2]), critic.score(states))

    first, both = run(concurrently())
    assert [kind for kind, _ in writer.calls].count("complete") == 2  # one writing per problem, shared
    assert critic.checklists["p"] == parse_checklist(WRITTEN, 4) and critic.checklists["q"] == parse_checklist(WRITTEN, 4)
    assert np.allclose(first, both[:2]) and ((both > 0) & (both < 1)).all()
    # the value is the mean over the items of the normalised P("Yes") after each judging prompt
    model, tok = tiny
    probabilities = []
    for item in critic.checklists["p"]:
        ids = torch.tensor([tok.encode(critic.judge_text(states[1], item), add_special_tokens=False)])
        logits = model(input_ids=ids).logits[0, -1]
        yes, no = logits[critic.yes_id].item(), logits[critic.no_id].item()
        probabilities.append(1 / (1 + np.exp(no - yes)))
    assert both[1] == pytest.approx(np.mean(probabilities), abs=1e-5)
    run(critic.score(states))
    assert [kind for kind, _ in writer.calls].count("complete") == 2  # kept: not written again


def test_without_a_writer_the_model_itself_writes_and_a_short_list_falls_back(tiny):
    critic = ChecklistCritic(tiny, num_items=3, max_new_tokens=12)  # a random model writes no questions
    values = run(critic.score([State(PROBLEM, PROMPT, ("3 * 4 = 12\n",))]))
    assert critic.checklists["p"] == FALLBACK_ITEMS[:3] and critic.fell_back == {"p"}
    assert values.shape == (1,) and 0 < values[0] < 1


def test_the_registered_critic_and_its_errors(tiny):
    assert isinstance(make_critic("checklist", model=tiny, num_items=2, min_items=1), ChecklistCritic)
    with pytest.raises(ValueError, match="min_items <= num_items"):
        ChecklistCritic(tiny, num_items=2, min_items=3)
    with pytest.raises(ValueError, match="must be one token"):
        ChecklistCritic(tiny, yes="Absolutely yes")
    with pytest.raises(ValueError, match="fallback"):
        ChecklistCritic(tiny, fallback=())


def test_best_of_n_picks_with_the_checklist_and_the_config_composes(tiny):
    import treesearch
    from treesearch.config import compose

    policy = ScriptedPolicy({(): [("3 * 4 = 12, 12 - 2 = 10. The answer is 10.", -0.5),
                                  ("3 + 4 = 7. The answer is 7.", -0.4)]})
    critic = ChecklistCritic(tiny, writer=ScriptedPolicy({(): [(WRITTEN, -0.1)]}))
    (result,) = treesearch.search([PROBLEM], policy=policy, critic=critic, algorithm="best_of_n", samples=2)
    assert result.error is None and set(result.candidates) == {"10", "7"}
    assert result.value == pytest.approx(max(result.candidates.values()))
    cfg = compose("search", ["critic=checklist", "critic.num_items=3"])
    assert cfg.critic.name == "checklist" and cfg.critic.num_items == 3 and cfg.critic.min_items == 2
