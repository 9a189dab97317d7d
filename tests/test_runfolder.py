"""The run folder: atomic replacement, and reading back what a job wrote."""

import json
import re

import pytest

from treesearch.runfolder import RunFolder, file_key, legacy_file_key, replaced_atomically, write_atomic
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


def test_file_keys_are_one_to_one():
    ids = ["a", "a b", "a_b", "a_b-806c5cd3", "x" * 100, "x" * 99 + "y", "../../etc", "a/b", "a~b", "é", "bad-line-2"]
    keys = [file_key(i) for i in ids]
    assert len(set(keys)) == len(ids)
    assert file_key("a_b-806c5cd3") == "a_b-806c5cd3" and file_key("gsm8k-17") == "gsm8k-17"
    assert all(re.fullmatch(r"[A-Za-z0-9._~-]{1,80}", k) for k in keys)
    # the old scheme merged two of them
    assert legacy_file_key("a b") == legacy_file_key("a_b-806c5cd3")


def test_a_folder_from_before_layout_2_keeps_its_file_names(tmp_path):
    write_atomic(tmp_path / "manifest.json", json.dumps({"digest": "d", "problem_ids": ["a b"]}).encode())
    old = RunFolder(tmp_path)
    assert old.result_path("a b").name == legacy_file_key("a b") + ".json"
    new = RunFolder(tmp_path / "new")
    new.claim(["a b"], "d")
    assert new.result_path("a b").name == file_key("a b") + ".json" and new.manifest()["layout"] == 2


def test_a_result_file_that_is_not_a_row_counts_as_unfinished(tmp_path):
    folder = RunFolder(tmp_path)
    folder.claim(["a", "b"], "d")
    write_atomic(folder.result_path("a"), b"[]")
    write_atomic(folder.result_path("b"), b"{not json")
    assert folder.finished() == set() and folder.result("a") is None and folder.result("b") is None


def test_one_job_at_a_time_holds_a_folder(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from treesearch.runfolder import FolderInUse

    folder = RunFolder(tmp_path)
    with folder.lock():
        with pytest.raises(FolderInUse, match=rf"in use by another job \(pid {os.getpid()} on {socket.gethostname()}\)"):
            with RunFolder(tmp_path).lock():
                pass
        code = f"from treesearch.runfolder import RunFolder\nwith RunFolder({str(tmp_path)!r}).lock(): pass"
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert other.returncode != 0 and "in use by another job" in other.stderr
    with RunFolder(tmp_path).lock():  # released: the next job may run
        pass


def test_a_problem_edited_since_its_result_was_written_loses_that_result(tmp_path):
    from treesearch.runfolder import content_digest
    from treesearch.types import Problem

    before = [Problem("a", "1 + 1?", gold="2"), Problem("b", "2 + 2?", gold="4")]
    folder = RunFolder(tmp_path)
    assert folder.claim(["a", "b"], "digest", {p.id: content_digest(p) for p in before}) == set()
    for p in before:
        folder.write_error(p.id, "search failed: stands in for a finished row")
    assert folder.finished(redo_errors=False) == {"a", "b"}
    # the same problems again: nothing changes
    assert folder.claim(["a", "b"], "digest", {p.id: content_digest(p) for p in before}) == set()
    # b's gold answer was corrected: its result is dropped, a's is kept
    after = [before[0], Problem("b", "2 + 2?", gold="5")]
    assert folder.claim(["a", "b"], "digest", {p.id: content_digest(p) for p in after}) == {"b"}
    assert folder.finished(redo_errors=False) == {"a"}
    assert folder.manifest()["contents"]["b"] == content_digest(after[1])
    assert content_digest(Problem("b", "2 + 2?", gold="4", meta={"level": 2})) != content_digest(before[1])


def test_a_folder_from_before_content_digests_keeps_its_results_and_records_them(tmp_path):
    from treesearch.runfolder import content_digest
    from treesearch.types import Problem

    folder = RunFolder(tmp_path)
    folder.claim(["a"], "digest")
    manifest = folder.manifest()
    manifest.pop("contents")
    write_atomic(tmp_path / RunFolder.MANIFEST, json.dumps(manifest).encode())
    folder.write_error("a", "stands in for a finished row")
    assert folder.claim(["a"], "digest", {"a": content_digest(Problem("a", "q", gold="1"))}) == set()
    assert folder.finished(redo_errors=False) == {"a"} and "a" in folder.manifest()["contents"]


def test_the_manifest_lists_every_engine_that_wrote_to_the_folder(tmp_path, monkeypatch, caplog):
    import treesearch.runfolder as runfolder
    from treesearch.version import engine_version

    from importlib import metadata

    assert engine_version().startswith(metadata.version("treesearch"))  # then the commit, in a checkout
    folder = RunFolder(tmp_path)
    folder.claim(["a"], "digest")
    assert folder.manifest()["engines"] == [engine_version()]
    folder.claim(["a"], "digest")  # the same engine again: nothing to add, nothing to say
    assert folder.manifest()["engines"] == [engine_version()] and "written by" not in caplog.text
    monkeypatch.setattr(runfolder, "engine_version", lambda: "9.9.9 (abcdef0)")
    with caplog.at_level("WARNING"):
        folder.claim(["a"], "digest")
    assert folder.manifest()["engines"] == [engine_version(), "9.9.9 (abcdef0)"]
    assert "written by treesearch" in caplog.text and "9.9.9 (abcdef0)" in caplog.text
    # a folder from before engines were recorded: the engine is recorded, without a warning
    legacy = RunFolder(tmp_path / "legacy")
    legacy.claim(["a"], "digest")
    manifest = legacy.manifest()
    del manifest["engines"]
    write_atomic(legacy.path / RunFolder.MANIFEST, json.dumps(manifest).encode())
    caplog.clear()
    legacy.claim(["a"], "digest")
    assert legacy.manifest()["engines"] == ["9.9.9 (abcdef0)"] and "written by" not in caplog.text
