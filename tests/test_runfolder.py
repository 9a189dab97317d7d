"""The run folder: atomic replacement, and reading back what a job wrote."""

import json

import pytest

from treesearch.runfolder import RunFolder, replaced_atomically, write_atomic
from treesearch.tree import Tree


def test_a_failed_write_keeps_the_old_file_and_leaves_no_scratch(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    write_atomic(path, b"old")
    with pytest.raises(RuntimeError):
        with replaced_atomically(path) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new" and sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]


def test_existing_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        RunFolder.existing(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        RunFolder.existing(tmp_path)
    folder = RunFolder(tmp_path)
    folder.claim(["a", "b/c"], "digest")
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        RunFolder.existing(tmp_path).config()


def test_reads_back_what_was_written(tmp_path):
    folder = RunFolder(tmp_path)
    folder.claim(["a", "b/c"], "digest")
    folder.write_config({"task": {"name": "gsm8k"}})
    folder.write_metrics({"accuracy": 0.5})
    folder.write_error("b/c", "bad input: line 2")
    tree = Tree("a", "prompt")
    tree.add_children(0, ["x", "y"])
    with replaced_atomically(folder.tree_path("a")) as tmp:
        tree.save(tmp)
    again = RunFolder.existing(tmp_path)
    assert again.manifest()["problem_ids"] == ["a", "b/c"]
    assert again.config().task.name == "gsm8k" and again.metrics() == {"accuracy": 0.5}
    assert again.result("a") is None and again.result("b/c")["error"] == "bad input: line 2"
    assert again.load_tree("a").text == ["", "x", "y"] and [t.problem_id for t in again.saved_trees()] == ["a"]
    assert again.finished() == {"b/c"}  # a bad-input row counts as finished
    assert json.loads(again.result_path("b/c").read_text())["id"] == "b/c"
