"""Tasks and data loading: bundled and shared data sets, exact errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from treesearch.tasks import (
    TASKS,
    BadRow,
    DataError,
    GSM8KTask,
    HubTask,
    JSONLTask,
    MATHTask,
    Task,
    make_task,
)
from treesearch.tasks.gsm8k import bundled_path, gsm8k_gold
from treesearch.types import Problem

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(),
    reason=f"shared data folder {SHARED} not present (it exists only on the project's machines)",
)
MAWPS = {"multiarith": 600, "addsub": 395, "singleeq": 508, "singleop": 562}


def write_lines(path: Path, lines: list) -> Path:
    """Writes rows (dicts as JSON, str as text, bytes as is) one per line."""
    out = b""
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        out += (line.encode("utf-8") if isinstance(line, str) else line) + b"\n"
    path.write_bytes(out)
    return path


GOOD = {"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"}


# ----------------------------------------------------------------------------- bundled GSM8K


def test_bundled_gsm8k_loads_offline():
    task = GSM8KTask()
    test = task.load()
    assert len(test) == 1319
    first = test[0]
    assert isinstance(first, Problem)
    assert first.id == "gsm8k_test-1"
    assert first.gold == "18"
    assert first.question.startswith("Janet")
    assert first.meta["answer"].endswith("#### 18")
    train = task.load(split="train")
    assert len(train) == 7473
    assert train[-1].id == "gsm8k_train-7473"
    assert len({p.id for p in train}) == len(train)
    assert (bundled_path("test").parent / "LICENSE.gsm8k").is_file()


def test_bundled_gsm8k_golds_match_the_worked_solutions():
    task = GSM8KTask()
    for problem in task.load(limit=200):
        assert problem.gold.lstrip("-").isdigit()
        assert task.grade(task.extract_answer(problem.meta["answer"]), problem.gold)


def test_gsm8k_prompt_limit_and_splits():
    task = GSM8KTask()
    assert len(task.load(limit=5)) == 5
    assert task.load(limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        task.load(limit=-1)
    with pytest.raises(ValueError, match="splits"):
        task.load(split="validation")
    messages = task.prompt(Problem("p", "What is 1 + 1?"))
    assert "The answer is" in messages[0]["content"]
    assert messages[-1]["content"] == "What is 1 + 1?"
    assert task.is_terminal("The answer is 2.")
    assert not task.is_terminal("First, add 1 and 1.")


def test_gsm8k_gold_strips_thousands_separators():
    assert gsm8k_gold("steps\n#### 1,234") == "1234"
    assert gsm8k_gold("#### -5") == "-5"
    with pytest.raises(ValueError, match="####"):
        gsm8k_gold("no final answer")
    with pytest.raises(ValueError, match="not a number"):
        gsm8k_gold("#### five")


# ----------------------------------------------------------------------------- shared sets


@needs_shared
def test_shared_gsm8k_matches_the_bundled_copy():
    task = GSM8KTask()
    shared = task.load(SHARED / "gsm8k_test.jsonl")
    assert [(p.question, p.gold) for p in shared] == [(p.question, p.gold) for p in task.load()]


@needs_shared
def test_shared_math500():
    task = MATHTask()
    problems = task.load(SHARED / "math500_test.jsonl")
    assert len(problems) == 500
    first = problems[0]
    assert first.id == "test/precalculus/807.json"
    assert first.gold == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first.meta["level"] == 2 and first.meta["subject"] == "Precalculus"
    for problem in problems[:50]:
        assert task.grade(task.extract_answer(problem.meta["solution"]), problem.gold)


@needs_shared
@pytest.mark.parametrize("name,rows", sorted(MAWPS.items()))
def test_shared_mawps(name, rows):
    task = make_task("jsonl", question_field="input", answer_field="target")
    problems = task.load(SHARED / f"{name}.jsonl")
    assert len(problems) == rows
    assert problems[0].id == f"{name}-1"
    assert all(p.gold and not p.gold.endswith(".0") for p in problems)
    assert task.grade(task.extract_answer("The answer is 43 pieces."), "43")


@needs_shared
def test_shared_addsub_gold_from_float():
    task = JSONLTask(question_field="input", answer_field="target")
    problems = task.load(SHARED / "addsub.jsonl")
    assert problems[0].gold == "43"


# ----------------------------------------------------------------------------- bad input

BAD_CASES = [
    # (task factory, lines, line number, field, words in the reason)
    (GSM8KTask, [GOOD, {"answer": "#### 1"}], 2, "question", "missing"),
    (GSM8KTask, [GOOD, GOOD, {"question": "  ", "answer": "#### 1"}], 3, "question", "empty"),
    (GSM8KTask, [GOOD, {"question": 7, "answer": "#### 1"}], 2, "question", "expected text"),
    (GSM8KTask, [GOOD, {"question": "q?", "answer": "it is 5"}], 2, "answer", "####"),
    (GSM8KTask, [GOOD, {"question": "q?"}], 2, "answer", "missing"),
    (GSM8KTask, [GOOD, '{"question": "2+2?", "answer": "#### 4"'], 2, "answer", "malformed JSON"),
    (GSM8KTask, ['{"question": "abc, "answer": "#### 4"}'], 1, "question", "malformed JSON"),
    (
        GSM8KTask,
        [GOOD, b'{"question": "caf\xe9 prices?", "answer": "#### 4"}'],
        2,
        "question",
        "invalid UTF-8",
    ),
    (
        lambda: JSONLTask(question_field="input", answer_field="target"),
        [{"input": "q1", "target": 1}, {"input": "q2", "target": None}],
        2,
        "target",
        "expected a number",
    ),
    (
        MATHTask,
        [
            {"problem": "p1", "answer": "1", "unique_id": "a"},
            {"problem": "p2", "answer": "2", "unique_id": "a"},
        ],
        2,
        "unique_id",
        "duplicate id 'a' (first on line 1)",
    ),
    (MATHTask, [{"problem": "p1", "unique_id": "a"}], 1, "answer", "missing"),
    (MATHTask, [{"problem": "p1", "solution": "no box"}], 1, "solution", "boxed"),
]


@pytest.mark.parametrize("factory,lines,line,field,reason", BAD_CASES)
def test_bad_rows_name_file_line_and_field(tmp_path, factory, lines, line, field, reason):
    path = write_lines(tmp_path / "my_data.jsonl", lines)
    task = factory()
    with pytest.raises(DataError) as info:
        task.load(path)
    message = str(info.value)
    assert "my_data.jsonl" in message
    assert f"line {line}" in message
    assert repr(field) in message
    assert reason in message
    assert (info.value.line, info.value.field) == (line, field)


def test_missing_file_names_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "gone.jsonl"
    for task in (GSM8KTask(), MATHTask(), JSONLTask()):
        with pytest.raises(DataError, match="gone.jsonl.*file not found"):
            task.load(missing)
        with pytest.raises(DataError, match="gone.jsonl"):
            task.load(missing, skip_bad_rows=True)


def test_a_row_that_is_not_an_object(tmp_path):
    path = write_lines(tmp_path / "rows.jsonl", [GOOD, "[1, 2]"])
    with pytest.raises(DataError, match=r"rows.jsonl, line 2: expected a JSON object, got list"):
        GSM8KTask().load(path)


def test_blank_lines_byte_order_mark_and_crlf(tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = json.dumps(GOOD).encode()
    other = good.replace(b"2 + 2", b"3 + 3")
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\r\n\r\n" + other + b"\r\n\n{}\n")
    task = GSM8KTask()
    with pytest.raises(DataError, match=r"line 5, field 'question'"):
        task.load(path)  # blank lines keep their numbers
    problems = task.load(path, skip_bad_rows=True)
    assert [p.id for p in problems] == ["mixed-1", "mixed-3"]


def test_skip_bad_rows_records_them(tmp_path):
    lines = [
        GOOD,
        {"answer": "#### 1"},
        {"question": "What is 3 + 3?", "answer": "#### 6"},
        "{not json",
        {"question": "What is 4 + 4?", "answer": "#### 8"},
    ]
    path = write_lines(tmp_path / "some_bad.jsonl", lines)
    task = GSM8KTask()
    problems = task.load(path, skip_bad_rows=True)
    assert [p.id for p in problems] == ["some_bad-1", "some_bad-3", "some_bad-5"]
    assert [p.gold for p in problems] == ["4", "6", "8"]
    assert [row.line for row in task.bad_rows] == [2, 4]
    assert all(isinstance(row, BadRow) for row in task.bad_rows)
    line, reason = task.bad_rows[0]
    assert line == 2 and "some_bad.jsonl, line 2, field 'question'" in reason
    assert "malformed JSON" in task.bad_rows[1].reason
    task.load(path, limit=1)
    assert task.bad_rows == []  # reset on each load


def test_skip_bad_rows_with_no_good_row_is_an_error(tmp_path):
    path = write_lines(tmp_path / "all_bad.jsonl", [{"q": 1}, {"q": 2}])
    with pytest.raises(DataError, match=r"all_bad.jsonl: no usable rows \(2 bad"):
        GSM8KTask().load(path, skip_bad_rows=True)


# ----------------------------------------------------------------------------- ids, mapping


def test_ids_are_the_datasets_own_when_present(tmp_path):
    lines = [
        {"q": "one?", "a": 1, "key": "first"},
        {"q": "two?", "a": 2.0},
        {"q": "three?", "a": "3", "key": ""},
        {"q": "half?", "a": 0.5, "key": 42},
    ]
    path = write_lines(tmp_path / "ids.jsonl", lines)
    task = JSONLTask(question_field="q", answer_field="a", id_field="key")
    problems = task.load(path)
    assert [p.id for p in problems] == ["first", "ids-2", "ids-3", "42"]
    assert [p.gold for p in problems] == ["1", "2", "3", "0.5"]
    assert problems[0].meta == {"a": 1}


def test_jsonl_without_answers_and_folder_paths(tmp_path):
    write_lines(tmp_path / "test.jsonl", [{"question": "q?"}])
    write_lines(tmp_path / "train.jsonl", [{"question": "t1?"}, {"question": "t2?"}])
    task = JSONLTask(path=tmp_path, answer_field=None)
    assert [p.gold for p in task.load()] == [None]
    assert [p.id for p in task.load(split="train")] == ["train-1", "train-2"]
    with pytest.raises(ValueError, match="needs a path"):
        JSONLTask().load()


def test_jsonl_latex_grading_and_options():
    task = JSONLTask(grading="latex")
    assert "\\boxed" in task.instruction
    assert task.grade("\\frac{2}{4}", "0.5")
    with pytest.raises(ValueError, match="grading"):
        JSONLTask(grading="fuzzy")
    with pytest.raises(ValueError, match="gold_parser"):
        JSONLTask(gold_parser="nope")


def test_math_gold_from_solution_when_no_answer_field(tmp_path):
    path = write_lines(
        tmp_path / "math_orig.jsonl",
        [{"problem": "Simplify.", "solution": "It is $\\boxed{\\frac{1}{\\sqrt{2}}}$."}],
    )
    problems = MATHTask().load(path)
    assert problems[0].gold == "\\frac{1}{\\sqrt{2}}"
    assert problems[0].id == "math_orig-1"
    with pytest.raises(ValueError, match="not bundled"):
        MATHTask().load()


# ----------------------------------------------------------------------------- hub (local files)


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    pytest.importorskip("datasets")
    return tmp_path / "hf-cache"


def test_hub_task_reads_a_local_parquet_file_through_load_dataset(tmp_path, offline_hub):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "question": ["What is 1 + 1?", "What is 2 + 3?"],
            "answer": ["1 + 1 = 2\n#### 2", "2 + 3 = 5\n#### 5"],
        }
    )
    path = tmp_path / "mini_gsm.parquet"
    pq.write_table(table, path)
    task = make_task("hub", gold_parser="gsm8k", cache_dir=str(offline_hub))
    problems = task.load(path, split="test")
    assert [(p.id, p.gold) for p in problems] == [("mini_gsm-1", "2"), ("mini_gsm-2", "5")]


def test_hub_task_bad_row_names_source_row_and_field(tmp_path, offline_hub):
    rows = [{"input": "q1", "target": 1}, {"input": "", "target": 2}]
    path = write_lines(tmp_path / "hub_rows.jsonl", rows)
    task = HubTask(
        str(path), question_field="input", answer_field="target", cache_dir=str(offline_hub)
    )
    with pytest.raises(DataError) as info:
        task.load()
    assert "hub_rows.jsonl" in str(info.value)
    assert "row 2" in str(info.value) and "'input'" in str(info.value)
    problems = task.load(skip_bad_rows=True)
    assert [p.gold for p in problems] == ["1"] and task.bad_rows[0].line == 2
    with pytest.raises(DataError, match="missing.parquet.*file not found"):
        task.load(tmp_path / "missing.parquet")


# ----------------------------------------------------------------------------- registry


def test_registry_builds_every_task():
    assert isinstance(make_task("numeric"), Task)
    assert isinstance(make_task("gsm8k"), GSM8KTask)
    assert isinstance(make_task("math"), MATHTask)
    assert isinstance(make_task("jsonl", question_field="input", answer_field="target"), JSONLTask)
    assert isinstance(make_task("hub", dataset="openai/gsm8k", config="main"), HubTask)
    assert set(TASKS) >= {"numeric", "gsm8k", "math", "jsonl", "hub"}
    with pytest.raises(ValueError, match="unknown task 'nope'.*gsm8k"):
        make_task("nope")


def test_offset_and_limit_give_disjoint_slices_of_one_file():
    from treesearch.components import build_task, load_problems

    spec = {"name": "gsm8k", "path": None}
    task = build_task(spec)
    train = load_problems(task, dict(spec, offset=0, limit=6))
    dev = load_problems(task, dict(spec, offset=6, limit=4))
    everything = load_problems(task, dict(spec, limit=10))
    assert [p.id for p in train + dev] == [p.id for p in everything]
    assert len(dev) == 4 and not {p.id for p in train} & {p.id for p in dev}
    assert len(load_problems(task, dict(spec, offset=3, limit=None))) == len(task.load()) - 3
    with pytest.raises(ValueError, match="task.offset"):
        load_problems(task, dict(spec, offset=-1))


def test_offset_errors_and_bad_rows_of_the_skipped_part(tmp_path):
    from treesearch.components import build_task, load_problems

    path = tmp_path / "d.jsonl"
    path.write_text('{"input": "a", "target": 1}\nnot json\n{"input": "b", "target": 2}\n'
                    '{"input": "c", "target": 3}\n{oops\n{"input": "d", "target": 4}\n')
    spec = {"name": "jsonl", "path": str(path), "question_field": "input", "answer_field": "target",
            "skip_bad_rows": True}
    task = build_task(spec)
    dev = load_problems(task, dict(spec, offset=2))
    assert [p.question for p in dev] == ["c", "d"]
    assert [b.line for b in task.bad_rows] == [5]  # line 2 belongs to the skipped slice
    with pytest.raises(ValueError, match="task.offset=4 skips every problem"):
        load_problems(task, dict(spec, offset=4))
    with pytest.raises(ValueError, match="task.limit must be an integer >= 0"):
        load_problems(task, dict(spec, offset=3, limit=-1))


def test_text_grading_takes_gold_answers_that_are_not_numbers(tmp_path):
    from treesearch.tasks import make_task

    data = tmp_path / "yes_no.jsonl"
    data.write_text('{"question": "Is 2 even?", "answer": "Yes"}\n{"question": "Is 3 even?", "answer": "no"}\n')
    with pytest.raises(ValueError, match=r"line 1, field 'answer': gold answer 'Yes' is not a number.*grading='text'"):
        make_task("jsonl").load(path=data)
    task = make_task("jsonl", grading="text")
    golds = [p.gold for p in task.load(path=data)]
    assert golds == ["Yes", "no"] and task.grade("yes", "Yes") and not task.grade("no", "Yes")
