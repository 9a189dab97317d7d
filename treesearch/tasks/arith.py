"""`arith`: arithmetic problems generated on demand, a verifiable task with a difficulty dial.

A level names the form, the number of operations and the operand range:
`"<form><operations>[-<high>]"`, e.g. `bare1-10` (one bare expression, operands 1-10),
`word2-50` (a two-operation word problem, numbers 1-50), `word3` (high defaults to 50).
The other dials are options of the task: `ops` (which of `+ - * /` may appear), `low` (the
smallest operand), `distractors` (sentences with numbers the answer does not use) and
`seed` (another seed gives another set of problems).

Every problem is a chain: a start value, then each operation with one new operand, applied
left to right (a bare expression carries the parentheses that order needs). Values stay
whole and positive: a subtraction leaves at least 1, a division is exact, and factors and
divisors are 2-12. The gold answer is exact (integer arithmetic).

Splits cannot overlap: a problem's split is a function of its computation (the expression,
hashed), so train, dev and test never share a computation, whatever the wording; within
a split a word problem's text is unique, and so is a bare expression. `load(split=S, limit=N)` gives the first N
problems of S's seeded stream, so a larger N extends a smaller one. Few-shot examples
(`shots`, worked one calculation per line: "12 + 7 = 19" then "The answer is 19.") come
from the train split of the same level.

Templates were written for this project; wordings are drawn per problem, several per
operation, so a model cannot learn one sentence per operation.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Optional, Sequence

from treesearch.schemas import ArithTaskConfig as _DEFAULTS
from treesearch.tasks.base import Task
from treesearch.tasks.grading import extract_answer as stated_answer
from treesearch.types import Problem, Prompt

ARITH_INSTRUCTION = (
    "Solve the problem step by step. Write one calculation per line, like '12 + 7 = 19'. "
    "On the last line write 'The answer is N.' where N is the final number."
)
OPERATIONS = _DEFAULTS.ops
FORMS = ("bare", "word")
SPLITS = {"train": range(0, 6), "dev": range(6, 8), "test": range(8, 10)}
"""Each split's buckets of ten (a hash of the computation picks the bucket)."""
FACTORS = (2, 12)
"""Multipliers and divisors lie in this range (and at most the level's high)."""
MAX_ATTEMPTS_PER_PROBLEM = 400
"""A split's stream stops (every distinct problem of a small level found) after this many
draws per requested problem without a new one."""

_LEVEL = re.compile(r"^(bare|word)([1-9])(?:-(\d+))?$")
_LAST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class Level:
    """A difficulty: `form` ("bare" or "word"), `operations` (1-9), operands in
    [`low`, `high`], the allowed `ops`, and `distractors` per problem."""

    form: str
    operations: int
    high: int = 50
    low: int = 1
    ops: str = OPERATIONS
    distractors: int = 0

    @classmethod
    def parse(cls, name: str, *, low: int = 1, ops: str = OPERATIONS, distractors: int = 0) -> "Level":
        match = _LEVEL.match(str(name).strip())
        if match is None:
            raise ValueError(f"task.level={name!r}: expected '<form><operations>[-<high>]' with form bare or word, "
                             "e.g. 'bare1-10', 'word2-50', 'word3'")
        form, operations, high = match.group(1), int(match.group(2)), int(match.group(3) or 50)
        level = cls(form, operations, high, int(low), str(ops), int(distractors))
        level.check()
        return level

    def check(self) -> None:
        if not 1 <= self.low <= self.high:
            raise ValueError(f"task.low={self.low} with high {self.high}: need 1 <= low <= high")
        if not self.ops or set(self.ops) - set(OPERATIONS) or len(set(self.ops)) != len(self.ops):
            raise ValueError(f"task.ops={self.ops!r}: give distinct operations among {OPERATIONS!r}")
        if self.distractors < 0:
            raise ValueError(f"task.distractors={self.distractors}: must be >= 0")
        if set(self.ops) & set("*/") and self.high < FACTORS[0]:
            raise ValueError(f"task.ops={self.ops!r} needs factors of at least {FACTORS[0]}: raise the level's high")

    @property
    def name(self) -> str:
        return f"{self.form}{self.operations}-{self.high}"

    @property
    def factors(self) -> tuple[int, int]:
        return FACTORS[0], min(FACTORS[1], self.high)


@dataclass(frozen=True)
class Chain:
    """A computation: `start`, then `ops[i]` applied with `operands[i]`, left to right."""

    start: int
    ops: tuple[str, ...]
    operands: tuple[int, ...]

    def values(self) -> list[int]:
        """The running value after the start and after each operation."""
        out = [self.start]
        for op, b in zip(self.ops, self.operands):
            out.append(apply(op, out[-1], b))
        return out

    @property
    def answer(self) -> int:
        return self.values()[-1]

    def expression(self) -> str:
        """The chain as one expression, parenthesised so usual precedence gives its value."""
        text, top = str(self.start), None  # top: the expression's outermost operator
        for op, b in zip(self.ops, self.operands):
            if op in "*/" and top in ("+", "-"):
                text = f"({text})"
            text, top = f"{text} {op} {b}", op
        return text

    def worked_lines(self) -> list[str]:
        """One calculation per line, then the answer line."""
        values = self.values()
        lines = [f"{values[i]} {op} {b} = {values[i + 1]}" for i, (op, b) in enumerate(zip(self.ops, self.operands))]
        return lines + [f"The answer is {values[-1]}."]


def apply(op: str, a: int, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if a % b:
        raise ValueError(f"{a} / {b} is not whole")
    return a // b


def split_bucket(chain: Chain) -> int:
    """The bucket (0-9) of a computation, from a hash of its expression."""
    return int(hashlib.sha256(chain.expression().encode()).hexdigest()[:8], 16) % 10


def split_of(chain: Chain) -> str:
    bucket = split_bucket(chain)
    return next(name for name, buckets in SPLITS.items() if bucket in buckets)


def draw_chain(rng: random.Random, level: Level) -> Optional[Chain]:
    """One random chain of the level, or None when this draw hit a dead end (e.g. nothing
    to subtract from 1); the caller draws again."""
    start = rng.randint(level.low, level.high)
    ops = tuple(rng.choice(level.ops) for _ in range(level.operations))
    x, operands = start, []
    lo_f, hi_f = level.factors
    for op in ops:
        if op == "+":
            b = rng.randint(level.low, level.high)
        elif op == "-":
            top = min(level.high, x - 1)
            if top < level.low:
                return None
            b = rng.randint(level.low, top)
        elif op == "*":
            b = rng.randint(lo_f, hi_f)
        else:
            divisors = [d for d in range(lo_f, hi_f + 1) if x % d == 0 and x // d >= 1]
            if not divisors:
                return None
            b = rng.choice(divisors)
        operands.append(b)
        x = apply(op, x, b)
    return Chain(start, ops, tuple(operands))


# ------------------------------------------------------------------------------ wording

NAMES = (("Mia", "she"), ("Omar", "he"), ("Lena", "she"), ("Tariq", "he"), ("Priya", "she"), ("Jonas", "he"),
         ("Aiko", "she"), ("Diego", "he"), ("Nora", "she"), ("Felix", "he"), ("Zara", "she"), ("Kofi", "he"))
ITEMS = ("apples", "marbles", "stickers", "pencils", "cookies", "stamps", "shells", "cards", "beads", "books",
         "crayons", "buttons")
CONTAINERS = ("box", "basket", "jar", "crate", "bag", "drawer")
OTHER_THINGS = ("cousins", "pets", "plants", "posters", "hats", "chairs")
OBJECT = {"she": "her", "he": "him"}
POSSESSIVE = {"she": "her", "he": "his"}
BARE_QUESTIONS = ("What is {e}?", "Calculate {e}.", "Compute {e}.", "Find the value of {e}.", "{e} = ?")


class _Person:
    """The protagonist of a possession or money scene."""

    def __init__(self, rng: random.Random, used: set[str] = frozenset()):
        name, subject = rng.choice([n for n in NAMES if n[0] not in used])
        self.name, self.s, self.o, self.p = name, subject, OBJECT[subject], POSSESSIVE[subject]

    def subject(self, rng: random.Random) -> str:
        """The name or the pronoun, as a sentence's first word."""
        return self.name if rng.random() < 0.5 else self.s.capitalize()


def _times(b: int) -> str:
    return {2: "twice", 3: "three times"}.get(b, f"{b} times")


def _possession(rng: random.Random, chain: Chain) -> tuple[list[str], str]:
    who, items = _Person(rng), rng.choice(ITEMS)
    n, i = who.name, items
    if chain.ops[0] == "*" and rng.random() < 0.5:  # a product as groups of items
        c = rng.choice(CONTAINERS)
        sentences = [rng.choice((f"{n} has {chain.start} {c}{'es' if c.endswith('x') else 's'} with {chain.operands[0]} {i} in each.",
                                 f"{n} buys {chain.start} packs of {i}. Each pack holds {chain.operands[0]} {i}."))]
        steps = list(zip(chain.ops[1:], chain.operands[1:]))
    else:
        sentences = [rng.choice((f"{n} has {chain.start} {i}.", f"{n} collected {chain.start} {i}.",
                                 f"{n} starts the day with {chain.start} {i}."))]
        steps = list(zip(chain.ops, chain.operands))
    question = rng.choice((f"How many {i} does {n} have now?", f"How many {i} does {n} have in the end?"))
    for k, (op, b) in enumerate(steps):
        s = who.subject(rng)
        last = k == len(steps) - 1
        if op == "+":
            sentences.append(rng.choice((f"{s} buys {b} more {i}.", f"{s} finds {b} more {i}.",
                                         f"A friend gives {who.o} {b} more {i}.", f"{s} gets {b} {i} as a gift.")))
        elif op == "-":
            sentences.append(rng.choice((f"{s} gives {b} {i} to a friend.", f"{s} loses {b} of them.",
                                         f"{s} uses {b} of the {i}.", f"{s} sells {b} {i}.")))
        elif op == "*":
            sentences.append(rng.choice((f"Then {who.s} ends up with {_times(b)} as many {i} as before.",
                                         f"After a trade, {who.name} has {_times(b)} as many {i} as a moment ago.",
                                         f"The number of {i} {who.s} has grows to {_times(b)} what it was.")))
        elif last and rng.random() < 0.5:  # a division asked as a share
            sentences.append(f"{s} shares all of the {i} equally among {b} friends.")
            question = rng.choice((f"How many {i} does each friend get?", f"How many {i} does each friend receive?"))
        else:
            sentences.append(rng.choice((f"{s} splits the {i} into {b} equal piles and keeps one pile.",
                                         f"{s} puts the {i} equally into {b} bags and keeps only one bag.")))
    return sentences, question


def _container(rng: random.Random, chain: Chain) -> tuple[list[str], str]:
    c, i = rng.choice(CONTAINERS), rng.choice(ITEMS)
    sentences = [rng.choice((f"A {c} holds {chain.start} {i}.", f"There are {chain.start} {i} in a {c}."))]
    for op, b in zip(chain.ops, chain.operands):
        if op == "+":
            sentences.append(rng.choice((f"{b} more {i} are put into the {c}.", f"Someone adds {b} {i} to the {c}.")))
        elif op == "-":
            sentences.append(rng.choice((f"{b} {i} are taken out of the {c}.", f"{b} of the {i} are removed.")))
        elif op == "*":
            sentences.append(rng.choice((f"The {c} is refilled until it holds {_times(b)} as many {i} as before.",
                                         f"Then the number of {i} in the {c} is multiplied by {b}.")))
        else:
            sentences.append(rng.choice((f"The {i} are divided into {b} equal groups and all groups but one are taken away.",
                                         f"Only one out of every {b} {i} is left in the {c}; the rest are removed.")))
    return sentences, rng.choice((f"How many {i} are in the {c} now?", f"How many {i} are left in the {c}?"))


def _money(rng: random.Random, chain: Chain) -> tuple[list[str], str]:
    who = _Person(rng)
    n = who.name
    sentences = [rng.choice((f"{n} has ${chain.start}.", f"{n} has saved {chain.start} dollars."))]
    for op, b in zip(chain.ops, chain.operands):
        s = who.subject(rng)
        if op == "+":
            sentences.append(rng.choice((f"{s} earns {b} more dollars.", f"{s} gets ${b} as a gift.")))
        elif op == "-":
            sentences.append(rng.choice((f"{s} spends ${b} on a book.", f"{s} pays {b} dollars for lunch.")))
        elif op == "*":
            sentences.append(f"Over the summer {who.p} savings grow to {_times(b)} as much as before.")
        else:
            sentences.append(rng.choice((f"{s} splits the money equally into {b} jars and keeps one jar.",
                                         f"{s} shares the money equally with friends so that {b} people get the same amount, and keeps one share.")))
    return sentences, rng.choice((f"How many dollars does {n} have now?", f"How much money, in dollars, does {n} have now?"))


SCENES = (_possession, _container, _money)


def _distractor(rng: random.Random, level: Level, protagonist: str) -> str:
    c = rng.randint(level.low, level.high)
    name = rng.choice([x for x, _ in NAMES if x not in protagonist])
    return rng.choice((f"{name} has {c} {rng.choice(OTHER_THINGS)}.", f"{name} lives {c} blocks away.",
                       f"It is {c} degrees outside.", f"{name} is {c} years old."))


_ONE_OF_MANY = re.compile(r"(?<![\d.$])\b1 (more )?([a-z]+s)\b")


def singular_counts(text: str) -> str:
    """'1 more apples' -> '1 more apple', '1 boxes' -> '1 box' (other counts unchanged)."""
    def one(match: re.Match) -> str:
        noun = match.group(2)
        noun = noun[:-2] if noun.endswith("xes") else noun[:-1]
        return f"1 {match.group(1) or ''}{noun}"

    return _ONE_OF_MANY.sub(one, text)


def render(rng: random.Random, chain: Chain, level: Level) -> str:
    """The question text of a chain, in the level's form."""
    if level.form == "bare":
        return rng.choice(BARE_QUESTIONS).format(e=chain.expression())
    sentences, question = rng.choice(SCENES)(rng, chain)
    for _ in range(level.distractors):
        sentences.insert(rng.randint(1, len(sentences)), _distractor(rng, level, sentences[0]))
    return singular_counts(" ".join(sentences + [question]))


# -------------------------------------------------------------------------------- task


def generate(level: Level, split: str, count: int, seed: int = 0) -> list[tuple[Chain, str]]:
    """The first `count` problems (chain, question) of `split`'s stream, or all there are
    when the level has fewer distinct ones."""
    if split not in SPLITS:
        raise ValueError(f"task.split={split!r}: arith has splits {sorted(SPLITS)}")
    rng = random.Random(f"arith:{seed}:{level}:{split}")
    out, seen, misses = [], set(), 0
    while len(out) < count and misses < MAX_ATTEMPTS_PER_PROBLEM * max(count, 1):
        chain = draw_chain(rng, level)
        if chain is None or split_of(chain) != split:
            misses += 1
            continue
        question = render(rng, chain, level)
        key = chain.expression() if level.form == "bare" else question  # a bare computation once per split
        if key in seen:
            misses += 1
            continue
        seen.add(key)
        out.append((chain, question))
    return out


class ArithTask(Task):
    """Generated arithmetic (see the module docstring); `load(split=..., limit=N)`.

    Answers are read from "The answer is N" (or a box); a solution that ends without one
    is graded on its last number."""

    name = "arith"

    def __init__(self, level: str = _DEFAULTS.level, ops: str = _DEFAULTS.ops, low: int = _DEFAULTS.low,
                 distractors: int = _DEFAULTS.distractors, seed: int = _DEFAULTS.seed, shots: int = _DEFAULTS.shots,
                 instruction: str = ARITH_INSTRUCTION,
                 step_delimiter: Optional[str] = None):
        super().__init__(instruction=instruction, step_delimiter=step_delimiter)
        self.level = Level.parse(level, low=low, ops=ops, distractors=distractors)
        self.seed = int(seed)
        if int(shots) < 0:
            raise ValueError(f"task.shots={shots}: must be >= 0")
        self.shots = int(shots)
        self._examples: Optional[list[tuple[str, str]]] = None

    # -- answers

    def is_terminal(self, step_text: str) -> bool:
        return stated_answer(step_text) is not None

    def extract_answer(self, solution: str) -> Optional[str]:
        stated = stated_answer(solution)
        if stated is not None:
            return stated
        numbers = _LAST_NUMBER.findall(solution)
        return numbers[-1].replace(",", "") if numbers else None

    # -- prompts

    def examples(self) -> list[tuple[str, str]]:
        """The few-shot (question, worked solution) pairs: train problems of this level."""
        if self._examples is None:
            shots = generate(self.level, "train", self.shots, seed=self.seed + 1_000_003) if self.shots else []
            self._examples = [(q, "\n".join(chain.worked_lines())) for chain, q in shots]
        return self._examples

    def prompt(self, problem: Problem) -> Prompt:
        messages = [{"role": "system", "content": self.instruction}]
        for question, solution in self.examples():
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": solution}]
        return messages + [{"role": "user", "content": problem.question}]

    # -- data

    def available(self, split: str, up_to: int) -> int:
        """How many distinct problems `split` has, counting up to `up_to`."""
        return len(generate(self.level, split, up_to, self.seed))

    def load(self, path=None, split: str = "test", limit: Optional[int] = None,
             skip_bad_rows: bool = False) -> list[Problem]:
        """The first `limit` generated problems of `split` (train, dev or test)."""
        if path is not None:
            raise ValueError(f"task arith generates its problems: task.path={path!r} has no use here "
                             "(use task=mawps for a file)")
        if limit is None:
            raise ValueError("task arith generates problems without end: give task.limit=N")
        made = generate(self.level, split, limit, self.seed)
        if len(made) < limit:
            raise ValueError(f"task.limit={limit}: level {self.level.name} (ops {self.level.ops!r}, low "
                             f"{self.level.low}) has only {len(made)} distinct {split} problems")
        prefix = f"arith-{self.level.name}" + (f"-s{self.seed}" if self.seed else "")
        return [Problem(id=f"{prefix}-{split}-{k}", question=question, gold=str(chain.answer),
                        meta={"level": self.level.name, "operations": self.level.operations, "ops": "".join(chain.ops),
                              "expression": chain.expression(), "split": split})
                for k, (chain, question) in enumerate(made)]

