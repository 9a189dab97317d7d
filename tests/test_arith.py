"""The generated arithmetic task: determinism, disjoint splits, exact gold, grading."""

from __future__ import annotations

import ast
import hashlib
import re
from fractions import Fraction

import pytest

from treesearch.components import build_task, load_problems
from treesearch.config import compose
from treesearch.tasks import ArithTask, make_task
from treesearch.tasks.arith import Level

LEVELS = ["bare1-10", "bare2-50", "word1-10", "word2-50", "word3-20", "word4-50"]
_BIN = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b}


def evaluate(expression: str) -> Fraction:
    """An evaluator that shares no code with the generator: Python's parser and exact
    fractions, with the usual precedence."""

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
            return _BIN[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        raise ValueError(f"unexpected {ast.dump(node)} in {expression!r}")

    return walk(ast.parse(expression, mode="eval"))


def question_hash(question: str) -> str:
    return hashlib.sha256(question.encode()).hexdigest()


@pytest.mark.parametrize("level", LEVELS)
def test_gold_is_recomputed_by_an_independent_evaluator(level):
    for split in ("train", "test"):
        for problem in ArithTask(level=level).load(split=split, limit=40 if level.startswith("bare1") else 150):
            value = evaluate(problem.meta["expression"])
            assert value.denominator == 1 and value >= 1, problem
            assert str(value.numerator) == problem.gold, problem
            assert problem.meta["operations"] == int(level[4])


def test_bare_questions_state_the_expression_whose_value_is_the_gold():
    for problem in ArithTask(level="bare3-20").load(limit=100):
        expression = re.sub(r"^(What is|Calculate|Compute|Find the value of)\s+|\s*(=\s*\?|[?.])$", "",
                            problem.question)
        assert str(evaluate(expression)) == problem.gold, problem.question


def test_word_problems_use_the_operands_and_no_other_numbers_without_distractors():
    for problem in ArithTask(level="word3-50").load(limit=150):
        in_question = [int(n) for n in re.findall(r"\d+", problem.question)]
        in_expression = [int(n) for n in re.findall(r"\d+", problem.meta["expression"])]
        assert set(in_question) <= set(in_expression), problem.question
        # factors of 2 and 3 may be written as "twice" / "three times"
        assert {n for n in in_expression if n > 3} <= set(in_question), problem.question


def test_distractors_add_numbers_the_answer_does_not_use():
    plain = ArithTask(level="word2-50").load(limit=50)
    noisy = ArithTask(level="word2-50", distractors=2).load(limit=50)
    extra = [len(re.findall(r"\d+", n.question)) - len(re.findall(r"\d+", n.meta["expression"])) for n in noisy]
    assert min(extra) >= 1 and sum(extra) >= 90  # two sentences with one number each (words replace some 2s and 3s)
    assert all(str(evaluate(p.meta["expression"])) == p.gold for p in noisy)
    assert [p.question for p in plain] != [p.question for p in noisy]


@pytest.mark.parametrize("level", ["bare2-50", "word2-50"])
def test_same_seed_same_problems_other_seed_other_problems_and_a_longer_load_extends(level):
    a = ArithTask(level=level).load(split="dev", limit=60)
    b = ArithTask(level=level).load(split="dev", limit=60)
    assert [(p.id, p.question, p.gold) for p in a] == [(p.id, p.question, p.gold) for p in b]
    other = ArithTask(level=level, seed=7).load(split="dev", limit=60)
    assert len({p.question for p in a} & {p.question for p in other}) < 10
    assert {p.id for p in a}.isdisjoint({p.id for p in other})
    longer = ArithTask(level=level).load(split="dev", limit=120)
    assert [p.question for p in longer[:60]] == [p.question for p in a]


@pytest.mark.parametrize("level", ["bare1-10", "bare2-10", "word1-10", "word2-50"])
def test_splits_never_share_a_question_or_a_computation(level):
    task = ArithTask(level=level)
    size = {"bare1-10": 40, "bare2-10": 150}.get(level, 400)
    splits = {s: task.load(split=s, limit=size) for s in ("train", "dev", "test")}
    for s, problems in splits.items():
        assert len({question_hash(p.question) for p in problems}) == len(problems)
        assert all(p.meta["split"] == s for p in problems)
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert {question_hash(p.question) for p in splits[a]}.isdisjoint(question_hash(p.question) for p in splits[b])
        assert {p.meta["expression"] for p in splits[a]}.isdisjoint(p.meta["expression"] for p in splits[b])


def test_a_small_level_says_how_many_problems_it_has():
    task = ArithTask(level="bare1-10", ops="+")
    train = task.load(split="train", limit=50)
    assert len({p.meta["expression"] for p in train}) == 50
    with pytest.raises(ValueError, match=r"task.limit=500: level bare1-10 \(ops '\+', low 1\) has only \d+ distinct test"):
        task.load(split="test", limit=500)


def test_values_stay_whole_and_positive_and_operands_in_range():
    task = ArithTask(level="word4-20", low=5)
    for problem in task.load(split="train", limit=200):
        numbers = [int(n) for n in re.findall(r"\d+", problem.meta["expression"])]
        ops = problem.meta["ops"]
        assert 5 <= numbers[0] <= 20
        for op, b in zip(ops, numbers[1:]):
            assert (2 <= b <= 12) if op in "*/" else (5 <= b <= 20)
        prefix = str(numbers[0])
        for op, b in zip(ops, numbers[1:]):  # every running value is a whole number >= 1
            prefix = f"({prefix}) {op} {b}"
            value = evaluate(prefix)
            assert value.denominator == 1 and value >= 1, problem.meta["expression"]


def test_ops_dial_limits_the_operations():
    for problem in ArithTask(level="word3-50", ops="+-").load(limit=100):
        assert set(problem.meta["ops"]) <= {"+", "-"}
    seen = set()
    for problem in ArithTask(level="word2-50").load(limit=200):
        seen |= set(problem.meta["ops"])
    assert seen == set("+-*/")


def test_prompt_carries_worked_shots_from_the_train_split():
    task = ArithTask(level="word2-50", shots=3)
    problem = task.load(split="test", limit=1)[0]
    messages = task.prompt(problem)
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert messages[-1]["content"] == problem.question
    for question, solution in task.examples():
        lines = solution.split("\n")
        assert len(lines) == 3 and lines[-1].startswith("The answer is ")
        for line in lines[:-1]:  # "a op b = c", each line true
            left, right = line.split(" = ")
            assert evaluate(left) == int(right)
        assert task.grade(task.extract_answer(solution), lines[-1][len("The answer is "):-1])
    shot_questions = {q for q, _ in task.examples()}
    tests = {p.question for p in task.load(split="test", limit=400)} | {p.question for p in task.load(split="dev", limit=400)}
    assert len(shot_questions) == 3 and shot_questions.isdisjoint(tests)
    assert [m["role"] for m in ArithTask(shots=0).prompt(problem)] == ["system", "user"]


@pytest.mark.parametrize("output, gold, correct", [
    ("17 - 11 = 6\n6 + 6 = 12\nThe answer is 12.", "12", True),
    ("17 - 11 = 6\n6 + 6 = 12\nThe answer is $12.", "12", True),
    ("She has 17 - 11 = 6 dollars, then 6 + 6 = 12 dollars.\nThe answer is 12 dollars.", "12", True),
    ("17 - 11 = 6\n6 + 6 = 12", "12", True),  # no answer line: the last number is graded
    ("17 + 11 = 28\n28 + 6 = 34\nThe answer is 34.", "12", False),
    ("The answer is 12.\nWait, 12 + 1 = 13. The answer is 13.", "12", False),  # the last stated answer counts
    ("I do not know.", "12", False),
    ("1,200 + 34 = 1,234", "1234", True),
])
def test_grading_of_typical_model_outputs(output, gold, correct):
    task = ArithTask()
    assert task.grade(task.extract_answer(output), gold) is correct


def test_terminal_steps_state_the_answer():
    task = ArithTask()
    assert task.is_terminal("The answer is 12.")
    assert not task.is_terminal("17 - 11 = 6\n")
    assert task.extract_answer("17 - 11 = 6\n") == "6"  # an end-of-sequence solution still has an answer


@pytest.mark.parametrize("kwargs, message", [
    ({"level": "word"}, r"task.level='word': expected '<form><operations>\[-<high>\]'"),
    ({"level": "prose2-50"}, "task.level='prose2-50'"),
    ({"level": "word2-50", "ops": "+%"}, r"task.ops='\+%'"),
    ({"level": "word2-10", "low": 11}, "task.low=11 with high 10"),
    ({"level": "word2-10", "distractors": -1}, "task.distractors=-1"),
    ({"shots": -2}, "task.shots=-2"),
])
def test_bad_options_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ArithTask(**kwargs)


def test_bad_loads_name_the_problem():
    task = ArithTask()
    with pytest.raises(ValueError, match="task.split='validation'"):
        task.load(split="validation", limit=3)
    with pytest.raises(ValueError, match="task.path='x.jsonl' has no use"):
        task.load(path="x.jsonl", limit=3)
    with pytest.raises(ValueError, match="give task.limit=N"):
        task.load(limit=None)


def test_the_config_group_builds_the_task_and_loads_the_split():
    cfg = compose("search", ["task=arith", "task.level=word3-20", "task.split=dev", "task.limit=7",
                             "task.distractors=1", "task.offset=2"])
    task = build_task(cfg.task)
    assert isinstance(task, ArithTask) and task.level == Level("word", 3, 20, distractors=1)
    problems = load_problems(task, cfg.task)
    reference = make_task("arith", level="word3-20", distractors=1).load(split="dev", limit=9)
    assert [p.question for p in problems] == [p.question for p in reference[2:]]
    assert all(p.id.startswith("arith-word3-20-dev-") for p in problems)


def test_a_search_over_arith_problems_grades_a_worked_policy():
    """A policy that writes the worked lines of the right computation is graded correct,
    one that adds instead of subtracting is not (the search's answer path, end to end)."""
    import treesearch
    from tests.doubles import ScriptedPolicy

    task = ArithTask(level="bare2-50")
    problems = task.load(limit=6)
    worked = {p.question: p.meta["expression"] for p in problems}

    def lines_for(expression: str, wrong: bool) -> list[str]:
        numbers = [int(n) for n in re.findall(r"\d+", expression)]
        ops = re.findall(r" ([-+*/]) ", expression)
        value, out = numbers[0], []
        for op, b in zip(ops, numbers[1:]):
            op = "+" if wrong and op == "-" else op
            nxt = int(evaluate(f"{value} {op} {b}"))
            out.append(f"{value} {op} {b} = {nxt}\n")
            value = nxt
        return out + [f"The answer is {value}."]

    for wrong in (False, True):
        def script(prefix, wrong=wrong):
            question = current[0]
            steps = lines_for(worked[question], wrong)
            return [(steps[len(prefix)], -0.1)] if len(prefix) < len(steps) else [("The answer is -1.", -1.0)]

        results = []
        for problem in problems:
            current = [problem.question]
            results += treesearch.search(problem, policy=ScriptedPolicy(script), algorithm="greedy", task=task,
                                         budget={"generated_tokens": 200})
        graded = [r.correct for r in results]
        has_minus = ["-" in p.meta["ops"] for p in problems]
        assert any(has_minus) and not all(has_minus)
        assert graded == ([True] * 6 if not wrong else [not m for m in has_minus])


def test_available_counts_a_small_level_and_caps_a_large_one():
    small = ArithTask(level="bare1-10", ops="+")
    count = small.available("test", 1000)
    assert 0 < count < 1000 and len(small.load(split="test", limit=count)) == count
    assert ArithTask(level="word2-50").available("test", 25) == 25
