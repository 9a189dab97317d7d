import asyncio

import numpy as np
import pytest

import treesearch
from critics import (
    FunctionCritic,
    VerifierCritic,
    WeightedCritic,
    as_critic,
    make_critic,
    registered_critics,
    value_function,
)
from treesearch import Budget, Problem, State
from tests.doubles import ScriptedPolicy

PROBLEM = Problem("p", "What is 2+3?", gold="5")
STATES = [
    State(PROBLEM, "prompt", ("x\n",)),
    State(PROBLEM, "prompt", ("x\n", "yy\n")),
    State(PROBLEM, "prompt", ("The answer is 5.",), terminal=True, answer="5"),
]


def length_value(state):
    return 1.0 / (1 + len(state.steps))


async def async_length_value(state):
    await asyncio.sleep(0)
    return 1.0 / (1 + len(state.steps))


def batched_length_value(states):
    return [1.0 / (1 + len(s.steps)) for s in states]


async def async_batched_length_value(states):
    await asyncio.sleep(0)
    return np.array([1.0 / (1 + len(s.steps)) for s in states])


EXPECTED = [0.5, 1 / 3, 0.5]


def score(critic, states=STATES):
    return asyncio.run(critic.score(states))


@pytest.mark.parametrize(
    "critic",
    [
        as_critic(length_value),
        as_critic(async_length_value),
        FunctionCritic(batched_length_value, batched=True),
        FunctionCritic(async_batched_length_value, batched=True),
    ],
    ids=["sync-per-state", "async-per-state", "sync-batched", "async-batched"],
)
def test_function_critics_in_all_four_shapes(critic):
    assert np.allclose(score(critic), EXPECTED)


def test_decorator_registers_by_name_and_stays_callable():
    @value_function
    def prefers_short(state):
        return 1.0 / (1 + len(state.solution))

    @value_function(batched=True, name="all_half")
    async def halves(states):
        return [0.5] * len(states)

    assert "prefers_short" in registered_critics() and "all_half" in registered_critics()
    assert prefers_short(STATES[0]) == pytest.approx(1 / 3)  # still a plain function
    assert np.allclose(score(make_critic("all_half")), 0.5)
    assert score(as_critic("prefers_short"))[0] == pytest.approx(1 / 3)


def test_a_user_function_drives_a_search():
    # The scripted policy offers a likely wrong answer and an unlikely right one; the
    # user's value function prefers the right answer, so best-of-N by value picks it.
    policy = ScriptedPolicy({(): [("The answer is 4.", -0.1), ("The answer is 5.", -3.0)]})
    (result,) = treesearch.search(
        [PROBLEM],
        policy=policy,
        critic=lambda s: 1.0 if s.answer == "5" else 0.0,
        algorithm="best_of_n",
        budget=Budget(simulations=4),
        answer_selection="value",
    )
    assert result.answer == "5" and result.correct


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), "high"])
def test_values_outside_unit_interval_raise_clear_errors(bad):
    critic = as_critic(lambda s: bad)
    with pytest.raises((ValueError, TypeError), match=r"critic .*(\[0, 1\]|not numbers)"):
        score(critic)


def test_batched_critic_returning_wrong_count_is_an_error():
    critic = FunctionCritic(lambda states: [0.5], batched=True, name="short")
    with pytest.raises(ValueError, match="returned 1 values for 3 states"):
        score(critic)


def test_not_a_critic():
    with pytest.raises(TypeError, match="cannot use"):
        as_critic(42)
    with pytest.raises(ValueError, match="unknown critic 'nope'"):
        make_critic("nope")


def test_weighted_combination():
    combo = WeightedCritic([lambda s: 1.0, length_value], weights=[3, 1])
    expected = 0.75 * 1.0 + 0.25 * np.array(EXPECTED)
    assert np.allclose(score(combo), expected)
    with pytest.raises(ValueError, match="2 weights for 1 critics"):
        WeightedCritic([length_value], weights=[1, 2])
    with pytest.raises(ValueError, match="positive sum"):
        WeightedCritic([length_value], weights=[0])


def test_verifier_grades_terminal_states_only():
    values = score(VerifierCritic(nonterminal_value=0.25))
    assert list(values) == [0.25, 0.25, 1.0]
    wrong = State(PROBLEM, "prompt", ("The answer is 6.",), terminal=True, answer="6")
    no_answer = State(PROBLEM, "prompt", ("I give up",), terminal=True, answer=None)
    assert list(score(VerifierCritic(), [wrong, no_answer])) == [0.0, 0.0]
    nogold = State(Problem("q", "?"), "prompt", ("The answer is 1.",), terminal=True, answer="1")
    with pytest.raises(ValueError, match="problem 'q' has no gold answer"):
        score(VerifierCritic(), [nogold])


def test_python_critic_by_import_path_in_all_forms(tmp_path, monkeypatch):
    from critics import make_critic
    from treesearch.components import build_critic

    (tmp_path / "user_values.py").write_text(
        "def shortness(state):\n    return 1.0 / (1 + len(state.steps))\n"
        "def lengths(states):\n    return [min(1.0, len(s.steps) / 4) for s in states]\n"
        "def make(scale):\n    return lambda state: scale\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    states = [State(Problem("p", "q"), "q", steps=("a\n",) * k) for k in (0, 1, 3)]
    per_state = build_critic({"name": "python", "function": "user_values:shortness"})
    assert list(asyncio.run(per_state.score(states))) == pytest.approx([1.0, 0.5, 0.25])
    batched = make_critic("python", function="user_values.lengths", batched=True)
    assert list(asyncio.run(batched.score(states))) == pytest.approx([0.0, 0.25, 0.75])
    factory = make_critic("python", function="user_values:make", options={"scale": 0.3})
    assert list(asyncio.run(factory.score(states))) == pytest.approx([0.3] * 3)
    with pytest.raises(ImportError, match=r"critic.function: module 'user_values' has no attribute 'nope'"):
        make_critic("python", function="user_values:nope")
    with pytest.raises(ImportError, match=r"critic.function: cannot import module 'no_such_module'"):
        make_critic("python", function="no_such_module:f")
    with pytest.raises(ValueError, match="critic.function: expected an import path"):
        make_critic("python", function="justaname")


def test_python_policy_backend_by_import_path(tmp_path, monkeypatch):
    from treesearch.policy import make_policy

    (tmp_path / "user_engine.py").write_text(
        "class Echo:\n"
        "    def __init__(self, word):\n        self.word = word\n"
        "    async def expand(self, states, n, params):\n        return []\n"
        "    async def complete(self, states, params):\n        return []\n"
        "class NotAPolicy:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    policy = make_policy("python", factory="user_engine:Echo", word="hi")
    assert policy.word == "hi"
    with pytest.raises(TypeError, match="lacks expand"):
        make_policy("python", factory="user_engine:NotAPolicy")
    with pytest.raises(ValueError, match="policy.factory"):
        make_policy("python", word="hi")


def test_python_critic_classes_and_empty_options(tmp_path, monkeypatch):
    from critics import make_critic

    (tmp_path / "user_critics.py").write_text(
        "import numpy as np\n"
        "class Constant:\n"
        "    def __init__(self, value=0.25):\n        self.value = value\n"
        "    async def score(self, states):\n        return np.full(len(states), self.value)\n"
        "def make():\n    return lambda state: 0.75\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    states = [State(Problem("p", "q"), "q", steps=("a\n",))]
    assert list(asyncio.run(make_critic("python", function="user_critics:Constant").score(states))) == [0.25]
    built = make_critic("python", function="user_critics:Constant", options={"value": 0.5}, batched=True)
    assert list(asyncio.run(built.score(states))) == [0.5]
    assert list(asyncio.run(make_critic("python", function="user_critics:make", options={}).score(states))) == [0.75]


def test_python_policy_factory_that_rejects_options_is_named(tmp_path, monkeypatch):
    from treesearch.policy import make_policy

    (tmp_path / "strict_engine.py").write_text("class Strict:\n    def __init__(self):\n        pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TypeError, match=r"policy.factory 'strict_engine:Strict' rejected the policy options \['model'\]"):
        make_policy("python", factory="strict_engine:Strict", model="x")


def test_target_critics_take_a_critic_a_value_function_a_batched_one_or_a_factory(tmp_path, monkeypatch):
    from treesearch.components import build_critic

    (tmp_path / "user_vals.py").write_text(
        "from critics import value_function\n"
        "@value_function(batched=True, name='user_batched')\n"
        "def batched_len(states):\n    return [1.0 / (1 + len(s.steps)) for s in states]\n"
        "def per_state(state):\n    return 0.25\n"
        "def batched_plain(states):\n    return [0.75] * len(states)\n"
        "def make(k=1):\n    return lambda state: min(1.0, 0.1 * k)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    states = [State(Problem("p", "q"), "q", steps=("a\n",)), State(Problem("p", "q"), "q", steps=())]
    cases = [
        ({"_target_": "user_vals.batched_len"}, "user_batched", [0.5, 1.0]),
        ({"_target_": "user_vals.per_state", "_partial_": True}, "per_state", [0.25, 0.25]),
        ({"_target_": "user_vals.batched_plain", "_partial_": True, "batched": True}, "batched_plain", [0.75, 0.75]),
        ({"_target_": "user_vals.make", "k": 3}, None, [0.3, 0.3]),
    ]
    for spec, name, values in cases:
        critic = build_critic(spec)
        assert list(asyncio.run(critic.score(states))) == pytest.approx(values), spec
        assert name is None or critic.name == name
    with pytest.raises(ValueError, match="is a critic already; it takes no options"):
        build_critic({"_target_": "user_vals.batched_len", "k": 1})
