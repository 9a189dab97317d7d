"""Search on an oracle environment: accuracy against generated tokens for every algorithm,
where the right answer, the right steps and the critic's quality are known exactly.
Pure Python (no model): the default grid runs in minutes on one CPU core.

    python benchmarks/search_oracle.py [--grid default] [--budgets 2,4,8,16,32]
        [--seeds 3] [--problems 50] [--arms greedy,best_of_n,beam_2x3,beam_4x4,mcts]
        [--arm NAME=ALGORITHM:key=value,key=value ...] [--out PATH.json] [--plot PATH.png]
        [--quick]

Environment (`OracleEnv`). A solution is `depth` (D) steps; the D-th step is the answer
step "Step D: <token> The answer is N.\\n" (the default `Task` sees it as terminal), the
steps before it read "Step k: <token>\\n". At an on-track state (every step so far right)
a sampled step is the right one with probability `p_right`, else one of `wrong_steps` (W)
distinct wrong steps, uniformly; an off-track state continues with one of W+1 distinct
steps, uniformly. Only the all-right chain answers the gold answer (1000 + the problem's
index); any other chain answers one of `wrong_answers` wrong numbers, a hash of its path.
A step costs `step_tokens` tokens (jittered by up to +-`jitter`, a hash of its text) and
reports as `logprob` the log of its true sampling probability; a step longer than the
request's `max_new_tokens` is cut there (finish "length", no answer, not the right step).
Sampling is seeded by `params.seed` and the state (`p_right` is the probability at
whatever nonzero temperature is asked; `top_p` is ignored); temperature 0 returns the
most probable step (the right one if p_right > (1 - p_right) / W, else the first wrong
one) `n` times.

Critic (`OracleCritic`). The value of a state is a base plus Gaussian noise (std `noise`),
clipped to [0, 1], and a function of (critic seed, problem, state text) only. The base
is `right_value` for an on-track state (the right terminal included), `wrong_value +
wrong_bias` for an off-track one; with `calibrated=True` an on-track state with k steps
has `wrong_value + (1 - wrong_value) * p_right ** (D - k)` instead (the chance that sampling
finishes it right, mapped into [wrong_value, 1]); at depths below `informative_from` every
state has the midpoint `(right_value + wrong_value) / 2` (a critic informative only late).

Arms. Each arm is one search per (setting, budget, seed) over all its problems in one
`treesearch.search` call, answered by one or more answer selections re-read from the
same trees: best-of-N's samples give `best_of_n` (best value, its default),
`best_of_n_weighted` (critic-weighted vote) and `self_consistency` (majority: the same
samples a self-consistency run with this seed draws); MCTS* with its defaults gives
`mcts` (its default: the best mean step value along the path), `mcts_value` (the best
terminal value) and `mcts_weighted`; `mcts_no_widening` is MCTS* with children fixed
after the first expansion, `mcts_previous` MCTS* with the defaults it had before the
benchmark (4 / 8 steps per expansion, 4 simulations in flight, mean backup, raw Q, no
widening). `--arm` adds arms.

Settings (`--grid`): `default` changes one thing at a time from `base` (depth 4,
p_right 0.5, W 3, critic 0.7 / 0.3, noise 0.1): `hard` (p_right 0.25: the right step is
no likelier than each wrong one, so greedy fails), `deep` (depth 6), `noisy` (noise 0.3),
`uninformative` (gap 0), `late` (informative only from depth 3), `biased` (wrong_bias
0.3), `calibrated`; `informative`, `uninformative`, `late`, `biased`, `calibrated` sweep
one aspect further; `quick` is `base` alone. Whenever the right step is the most
probable one (p_right > (1 - p_right) / W), greedy decoding walks the right chain: 100%.

Metrics per (setting, arm, budget), over problems x seeds: accuracy with its standard
error sqrt(p (1 - p) / n) (n = problems x seeds), mean generated tokens (the search's
accounting, cross-checked against the tokens the policy generated), overrun beyond the
budget (mean and max), the answered share, `found` (the tree holds the right terminal)
against accuracy ("picked"), and for tree searches (beam, MCTS*) `missed`: the share of
searches whose tree has no right terminal but an on-track node that was expanded without
its right next step among its children, and `cut`: those of them where that node can
get no more children (fixed after one expansion, or widening stopped): the right chain
was cut for good. The paired comparison `mcts` minus the most accurate arm of
beam / best-of-N / self-consistency at each budget is over the same (problem, seed) pairs,
with the standard error of the paired differences (that arm is picked on the same data,
which favours it slightly).

Writes a JSON report (`--out`) and a PNG (`--plot`, default: --out with .png): accuracy
against mean generated tokens, one line per arm, one panel per setting.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import re
import statistics
import time
import zlib
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Optional, Sequence

import treesearch
from treesearch import Problem, SamplingParams, State, Step, Task, Tree
from treesearch.policy import per_state_counts, per_state_params
from treesearch.search import make_algorithm
from treesearch.search.answer import select_answer
from treesearch.version import engine_version

RESULTS = Path(__file__).resolve().parent / "results"
TASK = Task()
TREE_ALGORITHMS = ("beam", "mcts")  # searches whose trees can cut the right chain
BASELINE_ALGORITHMS = ("beam", "best_of_n", "self_consistency")  # what MCTS* is compared with
_ODD = 0x9E3779B1  # odd: i -> base + i * _ODD is one-to-one mod 2**32, so tokens differ


def _hash(*parts: Any) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


# ------------------------------------------------------------------------ environment
@dataclass(frozen=True)
class OracleEnv:
    """A reasoning environment with known ground truth (see the module docstring)."""

    depth: int = 4
    p_right: float = 0.5
    wrong_steps: int = 3
    wrong_answers: int = 4
    step_tokens: int = 20
    jitter: float = 0.25
    concentration: Optional[float] = 4.0

    def __post_init__(self) -> None:
        for name in ("depth", "wrong_steps", "wrong_answers", "step_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"OracleEnv.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.p_right <= 1:
            raise ValueError(f"OracleEnv.p_right must be in [0, 1], got {self.p_right}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"OracleEnv.jitter must be in [0, 1), got {self.jitter}")
        if self.concentration is not None and self.concentration <= 0:
            raise ValueError(f"OracleEnv.concentration must be > 0 or None, got {self.concentration}")

    @property
    def solution_tokens(self) -> int:
        """Tokens of one full solution without jitter: the unit of budgets."""
        return self.depth * self.step_tokens

    def problems(self, count: int, offset: int = 0) -> list[Problem]:
        """Problems `offset` .. `offset + count - 1`; problem i's gold answer is 1000 + i."""
        return [Problem(id=f"oracle-{i}", question=f"Oracle problem {i}.", gold=str(1000 + i))
                for i in range(offset, offset + count)]

    # the step texts
    def _tokens(self, problem: Problem, k: int, kind: str) -> list[str]:
        """The W+1 distinct step tokens at depth k of an on-track ("on": the right one
        first) or off-track ("off") state."""
        base = _hash(problem.id, k, kind)
        return [f"{(base + i * _ODD) % 2**32:08x}" for i in range(self.wrong_steps + 1)]

    def _text(self, problem: Problem, steps: Sequence[str], token: str, right: bool) -> str:
        k = len(steps)
        if k < self.depth - 1:
            return f"Step {k + 1}: {token}\n"
        if right:
            answer = int(problem.gold)
        else:
            answer = int(problem.gold) + 1 + _hash(problem.id, "".join(steps), token) % self.wrong_answers
        return f"Step {k + 1}: {token} The answer is {answer}.\n"

    def right_step(self, problem: Problem, k: int) -> str:
        """The text of the right step at depth k (after k right steps)."""
        return self._text(problem, ("",) * k, self._tokens(problem, k, "on")[0], right=True)

    def on_track(self, problem: Problem, steps: Sequence[str]) -> bool:
        """Every step so far is the right one."""
        return all(text == self.right_step(problem, k) for k, text in enumerate(steps))

    def _probabilities(self, problem: Problem, steps: Sequence[str], on_track: bool) -> list[float]:
        """The W+1 step probabilities of a state (the right step first when on track):
        fixed (p_right, then (1 - p_right) / W each; uniform off track) without a
        `concentration`; with one, drawn once per state (a hash of it): the right step's
        from Beta(c * p_right, c * (1 - p_right)), the rest split by a flat Dirichlet."""
        w = self.wrong_steps
        if self.concentration is None:
            return [self.p_right] + [(1 - self.p_right) / w] * w if on_track else [1 / (w + 1)] * (w + 1)
        rng = random.Random(f"dist|{problem.id}|{''.join(steps)}")
        if on_track:
            c = self.concentration
            right = rng.betavariate(c * self.p_right, c * (1 - self.p_right)) if 0 < self.p_right < 1 else self.p_right
            rest = [rng.expovariate(1.0) for _ in range(w)]
            return [right] + [(1 - right) * r / sum(rest) for r in rest]
        rest = [rng.expovariate(1.0) for _ in range(w + 1)]
        return [r / sum(rest) for r in rest]

    def next_steps(self, problem: Problem, steps: Sequence[str]) -> list[tuple[str, float]]:
        """The next step's distribution: (text, probability), the right step first when
        the state is on track."""
        on = self.on_track(problem, steps)
        tokens = self._tokens(problem, len(steps), "on" if on else "off")
        probs = self._probabilities(problem, steps, on)
        return [(self._text(problem, steps, t, right=on and i == 0), p) for i, (t, p) in enumerate(zip(tokens, probs))]

    def greedy_step(self, problem: Problem, steps: Sequence[str]) -> tuple[str, float]:
        """The most probable next step (ties: a wrong one, i.e. the later option)."""
        options = self.next_steps(problem, steps)
        best = max(range(len(options)), key=lambda i: (options[i][1], i))
        return options[best]

    def num_tokens(self, text: str) -> int:
        """A step's token count: `step_tokens` jittered by a hash of its text."""
        u = _hash(text) / 2**32
        return max(1, round(self.step_tokens * (1 + self.jitter * (2 * u - 1))))

    def make_step(self, text: str, prob: float, limit: int) -> Step:
        """The Step for `text`, cut at `limit` tokens when longer (then it ends without
        its delimiter and answer, and its logprob is the share of its tokens kept)."""
        tokens = self.num_tokens(text)
        logprob = math.log(prob)
        if tokens <= limit:
            return Step(text=text, num_tokens=tokens, logprob=logprob, finish_reason="stop")
        head = text.split(" The answer")[0].rstrip("\n")
        return Step(text=head, num_tokens=limit, logprob=logprob * limit / tokens, finish_reason="length")


class OraclePolicy:
    """The environment as a `Policy`; counts the tokens it generates."""

    def __init__(self, env: OracleEnv):
        self.env = env
        self.generated_tokens = 0
        self.requests = 0

    @staticmethod
    def _rng(state: State, params: SamplingParams) -> random.Random:
        seed = 0 if params.seed is None else params.seed
        return random.Random(f"{seed}|{state.problem.id}|{state.solution}")

    def _sample(self, problem: Problem, steps: Sequence[str], params: SamplingParams,
                rng: random.Random, limit: int) -> Step:
        if params.temperature == 0:
            text, prob = self.env.greedy_step(problem, steps)
        else:
            options = self.env.next_steps(problem, steps)
            text, prob = rng.choices(options, weights=[p for _, p in options])[0]
        step = self.env.make_step(text, prob, limit)
        self.generated_tokens += step.num_tokens
        return step

    async def expand(self, states: Sequence[State], n, params) -> list[list[Step]]:
        out = []
        for state, count, p in zip(states, per_state_counts(states, n), per_state_params(states, params)):
            rng = self._rng(state, p)
            out.append([self._sample(state.problem, state.steps, p, rng, p.max_new_tokens) for _ in range(count)])
        self.requests += len(states)
        return out

    async def complete(self, states: Sequence[State], params) -> list[list[Step]]:
        self.requests += len(states)
        return [self._complete(state, p) for state, p in zip(states, per_state_params(states, params))]

    def _complete(self, state: State, params: SamplingParams) -> list[Step]:
        """Steps until the answer step, or until `max_new_tokens` (the last step cut)."""
        rng, steps, out, left = self._rng(state, params), list(state.steps), [], params.max_new_tokens
        while left > 0:
            step = self._sample(state.problem, steps, params, rng, left)
            out.append(step)
            steps.append(step.text)
            left -= step.num_tokens
            if step.finish_reason != "stop" or len(steps) >= self.env.depth:
                break
        return out


# ---------------------------------------------------------------------------- critic
@dataclass(frozen=True)
class OracleCritic:
    """A critic of known quality (see the module docstring); gap = right - wrong value."""

    right_value: float = 0.7
    wrong_value: float = 0.3
    noise: float = 0.1
    wrong_bias: float = 0.0
    calibrated: bool = False
    informative_from: int = 0
    seed: int = 0

    def base(self, env: OracleEnv, problem: Problem, steps: Sequence[str]) -> float:
        """The noise-free value of a state."""
        k = len(steps)
        if k < self.informative_from:
            return (self.right_value + self.wrong_value) / 2
        if not env.on_track(problem, steps):
            return self.wrong_value + self.wrong_bias
        if self.calibrated:
            return self.wrong_value + (1 - self.wrong_value) * env.p_right ** max(env.depth - k, 0)
        return self.right_value

    def value(self, env: OracleEnv, problem: Problem, steps: Sequence[str]) -> float:
        """Base plus noise, clipped to [0, 1]; the same every time for the same state."""
        value = self.base(env, problem, steps)
        if self.noise > 0:
            value += random.Random(f"critic|{self.seed}|{problem.id}|{''.join(steps)}").gauss(0.0, self.noise)
        return min(1.0, max(0.0, value))


@dataclass(frozen=True)
class Setting:
    """One named environment with its critic."""

    name: str
    env: OracleEnv = OracleEnv()
    critic: OracleCritic = OracleCritic()

    def value_function(self):
        """The critic as a plain `state -> float` function for `treesearch.search`."""
        env, critic = self.env, self.critic

        def oracle_value(state: State) -> float:
            return critic.value(env, state.problem, state.steps)

        return oracle_value

    def describe(self) -> str:
        e, c = self.env, self.critic
        critic = (f"right {c.right_value} wrong {c.wrong_value} (gap {c.right_value - c.wrong_value:.2g}), "
                  f"noise {c.noise}, wrong_bias {c.wrong_bias}, calibrated {c.calibrated}, "
                  f"informative_from {c.informative_from}")
        return (f"{self.name}: depth {e.depth}, p_right {e.p_right}, {e.wrong_steps} wrong steps, "
                f"{e.wrong_answers} wrong answers, {e.step_tokens} tokens/step (jitter {e.jitter}) | critic {critic}")


def _informative_grid(concentration: Optional[float] = OracleEnv.concentration) -> list[Setting]:
    """Critic gap 0.4 with noise up to half of it, over policy quality and depth."""
    return [Setting(f"p{p}-d{d}-noise{n}", OracleEnv(depth=d, p_right=p, concentration=concentration),
                    OracleCritic(noise=n))
            for p in (0.3, 0.5) for d in (4, 6) for n in (0.05, 0.1, 0.2)]


GRIDS: dict[str, list[Setting]] = {
    # a cross-section: one change from `base` per setting
    "default": [
        Setting("base"),
        Setting("hard", OracleEnv(p_right=0.25)),  # right as likely as each wrong step: greedy fails
        Setting("deep", OracleEnv(depth=6)),
        Setting("noisy", critic=OracleCritic(noise=0.3)),
        Setting("uninformative", critic=OracleCritic(right_value=0.5, wrong_value=0.5)),
        Setting("late", critic=OracleCritic(informative_from=3)),
        Setting("biased", critic=OracleCritic(wrong_bias=0.3)),
        Setting("calibrated", critic=OracleCritic(calibrated=True)),
    ],
    "informative": _informative_grid(),
    # the same with fixed step probabilities (every on-track state: p_right, the rest split evenly)
    "informative_fixed": _informative_grid(concentration=None),
    "uninformative": [
        Setting("gap0", critic=OracleCritic(right_value=0.5, wrong_value=0.5)),
        Setting("gap0.1-noise0.5", critic=OracleCritic(right_value=0.55, wrong_value=0.45, noise=0.5)),
        Setting("gap0-p0.3", OracleEnv(p_right=0.3), OracleCritic(right_value=0.5, wrong_value=0.5)),
    ],
    "late": [Setting(f"late-d{d}", OracleEnv(depth=d), OracleCritic(informative_from=d - 1)) for d in (4, 6)]
    + [Setting("late-d6-from3", OracleEnv(depth=6), OracleCritic(informative_from=3))],
    "biased": [Setting(f"wrong_bias{b}", critic=OracleCritic(wrong_bias=b)) for b in (0.2, 0.35, 0.5)],
    "calibrated": [Setting(f"calibrated-p{p}-d{d}", OracleEnv(depth=d, p_right=p), OracleCritic(calibrated=True))
                   for p in (0.3, 0.5) for d in (4, 6)],
    "quick": [Setting("base")],
}


# ------------------------------------------------------------------------------ arms
@dataclass(frozen=True)
class Arm:
    """A search and the answer selections read from its trees (label -> method)."""

    algorithm: str
    options: dict = field(default_factory=dict)
    selections: dict = field(default_factory=dict)


# MCTS* as it was before widening and the measured defaults (commit ad36d41's MCTSConfig)
PREVIOUS_MCTS = {"expansions": 4, "root_expansions": 8, "parallel_simulations": 4, "backup": "mean",
                 "q_transform": "none", "widening": False, "answer_selection": "value"}
ARMS: dict[str, Arm] = {
    "greedy": Arm("greedy", {}, {"greedy": "value"}),
    "best_of_n": Arm("best_of_n", {}, {"self_consistency": "majority", "best_of_n": "value",
                                       "best_of_n_weighted": "weighted"}),
    "beam_2x3": Arm("beam", {"beam_width": 2, "expansions": 3}, {"beam_2x3": "value"}),
    "beam_4x4": Arm("beam", {"beam_width": 4, "expansions": 4}, {"beam_4x4": "value"}),
    "mcts": Arm("mcts", {}, {"mcts": "path_mean", "mcts_value": "value", "mcts_weighted": "weighted"}),
    "mcts_no_widening": Arm("mcts", {"widening": False}, {"mcts_no_widening": "path_mean"}),
    "mcts_previous": Arm("mcts", PREVIOUS_MCTS, {"mcts_previous": "value"}),
}
# Sample counts high enough that the token budget, not the count, stops the sampling.
ALGORITHM_DEFAULTS = {"best_of_n": {"samples": 4096, "parallel": 64},
                      "self_consistency": {"samples": 4096, "parallel": 64}}


def parse_value(text: str) -> Any:
    """A command-line option value: int, float, bool, None, else the string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_arm(spec: str) -> tuple[str, Arm]:
    """`name=algorithm:key=value,key=value` (options optional) -> (name, Arm) answered by
    the algorithm's answer selection (its default unless `answer_selection` is given)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"--arm {spec!r}: expected NAME=ALGORITHM[:key=value,...]")
    algorithm, _, opts = rest.partition(":")
    options = {}
    for item in filter(None, opts.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--arm {spec!r}: option {item!r} is not key=value")
        options[key.strip()] = parse_value(value.strip())
    method = make_algorithm(algorithm, **options).config.answer_selection  # validates the options
    return name, Arm(algorithm, options, {name: method})


def common_options(env: OracleEnv) -> dict:
    """Options every arm gets, sized to the environment: room for a jittered step, a
    whole solution, and a little more depth than a solution needs."""
    step = math.ceil(1.5 * env.step_tokens)
    return {"max_step_tokens": step, "max_solution_tokens": (env.depth + 2) * step, "max_depth": env.depth + 2}


def search_options(env: OracleEnv, arm: Arm, seed: int) -> dict:
    """The options of one run: the common ones, the seed, the algorithm's sample
    counts, then the arm's own."""
    return {**common_options(env), "seed": seed, **ALGORITHM_DEFAULTS.get(arm.algorithm, {}), **arm.options}


# --------------------------------------------------------------------------- metrics
def chain_outcome(tree: Tree, env: OracleEnv, problem: Problem) -> tuple[bool, bool, bool]:
    """(found, cut, missed). `found`: the tree holds the right terminal. Otherwise follow
    the right chain from the root to its first node without the right next step among
    its children: `missed` when that node was expanded (its samples missed the right
    step); `cut` when, besides, it can get no more children (`Tree.can_widen` is off:
    children fixed after the first expansion, or widening stopped), so the right answer
    is out of reach for good."""
    node = 0
    while True:
        if tree.terminal[node]:
            return True, False, False
        right = env.right_step(problem, int(tree.depth[node]))
        kids = [int(c) for c in tree.children(node) if tree.text[c] == right]
        if not kids:
            missed = bool(tree.expanded[node])
            return False, missed and not bool(tree.can_widen[node]), missed
        node = kids[0]


def reselect(tree: Tree, method: str, backup: str, scored: bool) -> Optional[str]:
    """The answer `method` picks from a finished tree; in a `scored` tree (its search
    used the critic) value-based methods need every answered terminal valued."""
    if scored and method != "majority":
        nodes = [int(i) for i in tree.terminal_nodes() if tree.answer[i] is not None]
        if nodes and any(math.isnan(v) for v in tree.value(nodes, backup)):
            raise RuntimeError(f"answer selection {method!r}: a terminal node has no value")
    return select_answer(tree, TASK, method, backup).answer


def run_arm(setting: Setting, name: str, arm: Arm, units: float, seed: int, count: int) -> list[dict]:
    """One search over `count` problems; one point per answer selection."""
    env = setting.env
    budget = max(1, round(units * env.solution_tokens))
    problems = env.problems(count, offset=seed * count)
    policy = OraclePolicy(env)
    options = search_options(env, arm, seed)
    algorithm = make_algorithm(arm.algorithm, **options)
    started = time.perf_counter()
    results = treesearch.search(problems, policy=policy, critic=setting.value_function(), algorithm=arm.algorithm,
                                budget={"generated_tokens": budget}, task=TASK, trees_in_flight=64, max_wait_ms=0,
                                **options)
    seconds = time.perf_counter() - started
    failed = [r for r in results if r.error]
    if failed:
        raise RuntimeError(f"{setting.name} {name} budget {budget} seed {seed}: {len(failed)} searches failed,"
                           f" first: {failed[0].error}")
    tokens = [r.accounting.generated_tokens for r in results]
    found, cut, missed = zip(*(chain_outcome(r.tree, env, r.problem) for r in results))
    shared = {"setting": setting.name, "arm": name, "algorithm": arm.algorithm, "budget_units": units,
              "budget": budget, "seed": seed, "tokens": tokens, "found": _bits(found),
              "cut": _bits(cut) if arm.algorithm in TREE_ALGORITHMS else None,
              "missed": _bits(missed) if arm.algorithm in TREE_ALGORITHMS else None,
              "policy_tokens": policy.generated_tokens, "tokens_match": policy.generated_tokens == sum(tokens),
              "critic_calls": statistics.mean(r.accounting.critic_calls for r in results), "seconds": seconds}
    points = []
    for label, method in arm.selections.items():
        answers = [reselect(r.tree, method, options.get("backup", "mean"), algorithm.needs_critic) for r in results]
        if method == algorithm.config.answer_selection and answers != [r.answer for r in results]:
            raise RuntimeError(f"{setting.name} {name}: re-selecting by {method!r} disagrees with the search's answers")
        correct = [TASK.grade(a, r.problem.gold) for a, r in zip(answers, results)]
        points.append({**shared, "label": label, "selection": method, "correct": _bits(correct),
                       "answered": _bits(a is not None for a in answers)})
    return points


def _bits(flags) -> list[int]:
    """Per-problem flags as 0/1 (compact in the JSON report)."""
    return [int(bool(f)) for f in flags]


def _share(values: Sequence[bool]) -> float:
    return sum(map(bool, values)) / len(values)


def _pooled(points: list[dict], key: str) -> list:
    """The per-problem values of `key` of several points, end to end."""
    return [x for p in points for x in p[key]]


def summarise(points: list[dict]) -> list[dict]:
    """One row per (setting, label, budget), pooled over seeds and problems."""
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault((p["setting"], p["label"], p["budget_units"]), []).append(p)
    rows = []
    for (setting, label, units), group in groups.items():
        correct, tokens, budget = _pooled(group, "correct"), _pooled(group, "tokens"), group[0]["budget"]
        acc, found = _share(correct), _share(_pooled(group, "found"))
        overrun = [max(0, t - budget) for t in tokens]
        rows.append({
            "setting": setting, "label": label, "algorithm": group[0]["algorithm"], "budget_units": units,
            "budget": budget, "n": len(correct), "accuracy": acc, "stderr": math.sqrt(acc * (1 - acc) / len(correct)),
            "mean_tokens": statistics.mean(tokens), "mean_overrun": statistics.mean(overrun),
            "max_overrun": max(overrun), "answered": _share(_pooled(group, "answered")), "found": found,
            "picked_when_found": acc / found if found else None,
            "cut": _share(_pooled(group, "cut")) if group[0]["cut"] is not None else None,
            "missed": _share(_pooled(group, "missed")) if group[0]["missed"] is not None else None,
            "tokens_match": all(p["tokens_match"] for p in group),
            "mean_critic_calls": statistics.mean(p["critic_calls"] for p in group),
            "seconds": sum(p["seconds"] for p in group),
        })
    return rows


def paired(points: list[dict], setting: str, units: float, a: str, b: str) -> dict:
    """Label `a` minus label `b` over the same (seed, problem) pairs."""
    index = {(p["label"], p["seed"]): p["correct"] for p in points
             if p["setting"] == setting and p["budget_units"] == units}
    seeds = sorted({s for (label, s) in index if label == a} & {s for (label, s) in index if label == b})
    diffs = [int(x) - int(y) for s in seeds for x, y in zip(index[(a, s)], index[(b, s)])]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return {"setting": setting, "budget_units": units, "a": a, "b": b, "pairs": len(diffs),
            "difference": statistics.mean(diffs), "stderr": se,
            "a_only_correct": diffs.count(1), "b_only_correct": diffs.count(-1)}


def mcts_vs_best_other(points: list[dict], rows: list[dict]) -> list[dict]:
    """Per (setting, budget): `mcts` minus the most accurate beam / best-of-N /
    self-consistency label there."""
    out = []
    for r in rows:
        if r["label"] != "mcts":
            continue
        others = [o for o in rows if o["setting"] == r["setting"] and o["budget_units"] == r["budget_units"]
                  and o["algorithm"] in BASELINE_ALGORITHMS]
        if others:
            best = max(others, key=lambda o: o["accuracy"])
            out.append(paired(points, r["setting"], r["budget_units"], "mcts", best["label"]))
    return out


# ---------------------------------------------------------------------------- output
def _pct(x: Optional[float]) -> str:
    return "    -" if x is None else f"{100 * x:5.1f}"


def print_setting(setting: Setting, rows: list[dict], comparisons: list[dict]) -> None:
    print(f"\n== {setting.describe()}")
    mine = [r for r in rows if r["setting"] == setting.name]
    width = max([18] + [len(r["label"]) + 1 for r in mine])
    print(f"{'arm':<{width}} {'sol (tokens)':>12} {'tokens':>7} {'accuracy':>13} {'overrun mean/max':>17}"
          f" {'answered':>8} {'found':>6} {'missed':>6} {'cut':>6}")
    for r in mine:
        flag = "" if r["tokens_match"] else "  (policy tokens differ from the accounting!)"
        print(f"{r['label']:<{width}} {r['budget_units']:>5g} ({r['budget']:>4})"
              f" {r['mean_tokens']:>7.0f} {_pct(r['accuracy'])}% ± {_pct(r['stderr'])}"
              f" {r['mean_overrun']:>9.1f} / {r['max_overrun']:>5}"
              f" {_pct(r['answered'])}%  {_pct(r['found'])}  {_pct(r['missed'])}  {_pct(r['cut'])}{flag}")
    for c in comparisons:
        if c["setting"] == setting.name:
            print(f"mcts - {c['b']:<{width - 2}} at {c['budget_units']:>4g} solutions: {100 * c['difference']:+6.1f}"
                  f" ± {100 * c['stderr']:.1f} points ({c['pairs']} pairs; {c['a_only_correct']} only mcts right,"
                  f" {c['b_only_correct']} only {c['b']})")


def plot(settings: list[Setting], rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    cols = min(4, len(settings))
    lines = math.ceil(len(settings) / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(4.2 * cols, 3.4 * lines), squeeze=False)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    for ax, setting in zip(axes.flat, settings):
        for label in labels:
            pts = sorted((r for r in rows if r["setting"] == setting.name and r["label"] == label),
                         key=lambda r: r["budget_units"])
            if pts:
                ax.errorbar([max(r["mean_tokens"], 1) for r in pts], [100 * r["accuracy"] for r in pts],
                            yerr=[100 * r["stderr"] for r in pts], marker="o", ms=3, capsize=2, label=label)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(setting.name, fontsize=9)
        ax.set_xlabel("generated tokens per problem", fontsize=8)
        ax.set_ylabel("accuracy (%)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(settings):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def dump(report: dict) -> str:
    """Indented JSON with lists of plain values kept on one line."""
    text = json.dumps(report, indent=1)
    return re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)


# ------------------------------------------------------------------------------- run
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default="default", choices=sorted(GRIDS), help="settings to run")
    parser.add_argument("--budgets", default="2,4,8,16,32", help="per-problem budgets, in full solutions")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    parser.add_argument("--problems", type=int, default=50, help="problems per seed")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"built-in arms to run, of {','.join(ARMS)}")
    parser.add_argument("--arm", action="append", default=[], metavar="NAME=ALGORITHM:key=value,...",
                        help="an extra arm, e.g. mcts_c2=mcts:c_puct=2,expansions=3 (repeatable)")
    parser.add_argument("--quick", action="store_true", help="1 setting, budgets 2,8, 1 seed, 8 problems")
    parser.add_argument("--out", default=str(RESULTS / "search_oracle.json"))
    parser.add_argument("--plot", default=None, help="PNG path (default: --out with .png)")
    args = parser.parse_args(argv)
    if args.quick:
        args.grid, args.budgets, args.seeds, args.problems = "quick", "2,8", 1, 8
    unknown = set(args.arms.split(",")) - set(ARMS)
    if unknown:
        parser.error(f"--arms: unknown {sorted(unknown)}; choose from {list(ARMS)}")
    arms = {name: ARMS[name] for name in args.arms.split(",")}
    for spec in args.arm:
        try:
            name, arm = parse_arm(spec)
        except (ValueError, TypeError) as e:
            parser.error(str(e))
        arms[name] = arm
    return args, arms


def main(argv=None) -> dict:
    args, arms = parse_args(argv)
    settings = GRIDS[args.grid]
    budgets = [float(b) for b in args.budgets.split(",")]
    engine = engine_version()
    print(f"engine: {engine}; grid {args.grid}: {len(settings)} settings x {len(arms)} arms x {len(budgets)} budgets"
          f" x {args.seeds} seeds x {args.problems} problems", flush=True)
    started = time.perf_counter()
    points = []
    for setting in settings:
        for units in budgets:
            for seed in range(args.seeds):
                for name, arm in arms.items():
                    points += run_arm(setting, name, arm, units, seed, args.problems)
        print(f"{setting.name}: done at {time.perf_counter() - started:.1f} s", flush=True)
    rows = summarise(points)
    comparisons = mcts_vs_best_other(points, rows) if "mcts" in arms else []
    for setting in settings:
        print_setting(setting, rows, comparisons)
    seconds = time.perf_counter() - started
    report = {
        "date": str(date.today()),
        "machine": f"{platform.machine()}, Python {platform.python_version()}, one process",
        "grid": args.grid,
        "settings": [{"name": s.name, "env": asdict(s.env), "critic": asdict(s.critic),
                      "solution_tokens": s.env.solution_tokens, "common_options": common_options(s.env)}
                     for s in settings],
        "budget_units": budgets,
        "seeds": args.seeds,
        "problems_per_seed": args.problems,
        "arms": {name: {"algorithm": a.algorithm, "options": {**ALGORITHM_DEFAULTS.get(a.algorithm, {}), **a.options},
                        "selections": a.selections} for name, a in arms.items()},
        "engine": engine,
        "stderr": "sqrt(p (1 - p) / n) over problems x seeds; paired: stdev of differences / sqrt(pairs)",
        "seconds": seconds,
        "summary": rows,
        "mcts_vs_best_other": comparisons,
        "points": points,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dump(report))
    png = Path(args.plot) if args.plot else out.with_suffix(".png")
    plot(settings, rows, png)
    print(f"\n{len(points)} points in {seconds:.1f} s; wrote {out} and {png}")
    return report


if __name__ == "__main__":
    main()
