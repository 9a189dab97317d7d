"""Which problems each self-training round searches (no models, no Ray)."""

import pytest

from treesearch.config import compose
from treesearch.selftrain import SelfTraining


def training(tmp_path, *extra):
    return SelfTraining(compose("selftrain", ["task=arith", "task.split=train", "task.limit=30",
                                              "selftrain.dev.path=null", f"selftrain.output_dir={tmp_path}",
                                              "selftrain.extra_train=[{level: bare2-10, limit: 10, label: bare}]",
                                              *extra]))


def test_fresh_problems_give_each_round_the_next_slice_of_every_train_split(tmp_path):
    st = training(tmp_path, "selftrain.fresh_problems=true")
    primary = dict(st.cfg["task"])
    assert [st.round_slice(primary, r)["offset"] for r in range(3)] == [0, 30, 60]
    (extra,) = st.extra_splits("extra_train").values()
    assert st.round_slice(extra, 2)["offset"] == 20 and st.round_slice(extra, 2)["level"] == "bare2-10"
    from treesearch.components import build_task, load_problems

    slices = [{p.id for p in load_problems(build_task(st.round_slice(primary, r)), st.round_slice(primary, r))}
              for r in range(3)]
    assert all(len(s) == 30 for s in slices) and not (slices[0] & slices[1] or slices[1] & slices[2])
    with pytest.raises(ValueError, match="needs a task limit"):
        st.round_slice(dict(primary, limit=None), 1)


def test_without_fresh_problems_every_round_searches_the_same_ones(tmp_path):
    st = training(tmp_path)
    primary = dict(st.cfg["task"])
    assert st.round_slice(primary, 2) == primary
