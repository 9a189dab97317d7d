"""SELF-GUIDE: problems the policy writes from seed examples, filtered by rules."""

import asyncio

import pytest

from treesearch.self_guide import asynthesize, keep_problem, report_path, write_rows
from treesearch.types import Problem, Step

SEEDS = [Problem("s1", "Ann has 3 apples and buys 4 more. How many apples does she have?"),
         Problem("s2", "A box holds 12 pens. 5 are taken. How many pens are left?"),
         Problem("s3", "Tom reads 6 pages a day for 3 days. How many pages does he read?")]


class Writer:
    """Answers each complete() request with the next canned text; records the prompts."""

    def __init__(self, texts):
        self.texts, self.prompts, self.params = list(texts), [], []

    async def complete(self, states, params):
        self.prompts += [s.prompt for s in states]
        self.params += list(params)
        return [[Step(self.texts[i % len(self.texts)], 10, -1.0, "eos")] for i in range(len(states))]


def test_the_rules_keep_new_questions_with_numbers_and_no_answer():
    seen = set()
    assert keep_problem("Mia has 4 cats and 2 dogs. How many pets does she have?", seen) is None
    assert keep_problem("Mia has 4 cats and 2 dogs. How many pets does she have?", seen) == "duplicate"
    assert keep_problem("mia has 4 cats, and 2 dogs! how many pets does she have?", seen) == "duplicate"
    assert keep_problem("Short?", seen) == "length"
    assert keep_problem("Sam has 5 coins and finds 2 more coins today.", seen) == "no question"
    assert keep_problem("Sam has some coins and finds more. How many coins now?", seen) == "numbers"
    assert keep_problem("Sam has 5 coins and finds 2. 5 + 2 = 7. How many coins?", seen) == "answer"


def test_synthesize_asks_with_seed_examples_and_keeps_what_passes():
    texts = ["Lily has 7 stamps and gets 5 more. How many stamps does she have?\n\nShe has 12.",
             "Ann has 3 apples and buys 4 more. How many apples does she have?",  # a seed copied
             "The answer is 9.",
             "A farm has 8 cows and 3 goats. How many animals are on the farm? Then more text"]
    writer = Writer(texts)
    rows, report = asyncio.run(asynthesize(writer, SEEDS, 5, shots=2, attempts=8, seed=3))
    capped, capped_report = asyncio.run(asynthesize(Writer(texts), SEEDS, 1, shots=2, attempts=8, seed=3))
    assert len(capped) == 1 and capped_report["surplus"] == 1  # the farm passed too, after the cap
    assert [r["input"] for r in rows] == ["Lily has 7 stamps and gets 5 more. How many stamps does she have?",
                                          "A farm has 8 cows and 3 goats. How many animals are on the farm?"]
    assert report["attempts"] == 8 and report["kept"] == 2
    assert report["rejected"] == {"duplicate": 4, "length": 2}  # the seed copy twice, and repeats of kept ones
    prompt = writer.prompts[0]
    assert prompt[0]["role"] == "system" and prompt[-1]["role"] == "user"
    examples = [m["content"] for m in prompt if m["role"] == "assistant"]
    assert len(examples) == 2 and set(examples) <= {p.question for p in SEEDS}
    assert len({p.seed for p in writer.params}) == 8  # every request sampled on its own seed
    with pytest.raises(ValueError, match="need count >= 1"):
        asyncio.run(asynthesize(writer, [], 5))


def test_rows_load_as_a_task_without_gold_answers(tmp_path):
    from treesearch.components import build_task, load_problems

    path = write_rows([{"id": "synth-0-0", "input": "Lily has 7 stamps and gets 5 more. How many stamps?"}],
                      tmp_path / "synth.jsonl")
    spec = {"name": "jsonl", "path": str(path), "limit": None, "question_field": "input", "answer_field": None,
            "id_field": "id"}
    (problem,) = load_problems(build_task(spec), spec)
    assert problem.id == "synth-0-0" and problem.gold is None and problem.question.startswith("Lily")


def test_the_synthesize_command_writes_rows_and_a_report(tmp_path, tiny_model_dir):
    import json

    from treesearch.cli import main

    out = tmp_path / "new.jsonl"
    assert main(["synthesize", "policy=hf", f"policy.model={tiny_model_dir}", "policy.device=cpu", "task=arith",
                 "task.level=word1-10", "task.split=train", "task.limit=4", "synthesize.count=3",
                 "synthesize.max_new_tokens=16", f"synthesize.out={out}"]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["attempts"] == 9 and report["seeds"] == 4 and report["kept"] == len(out.read_text().splitlines())
    assert report["kept"] + report["surplus"] + sum(report["rejected"].values()) == 9


def test_the_report_goes_beside_the_problems_and_never_over_them(tmp_path):
    assert report_path(tmp_path / "new.jsonl") == tmp_path / "new.json"
    with pytest.raises(ValueError, match=r"synthesize.out=.*new.json.*new.jsonl"):
        report_path(tmp_path / "new.json")
