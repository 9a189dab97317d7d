import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from treesearch import kernels
from treesearch.tree import Tree


def small_tree() -> Tree:
    tree = Tree("p1", [{"role": "user", "content": "2+2?"}])
    a, b = tree.add_children(0, ["a\n", "b\n"], priors=[0.7, 0.3], num_tokens=[2, 3], logprobs=[-0.1, -1.2])
    (c,) = tree.add_children(int(a), ["The answer is 4."], terminal=[True], answers=["4"], finish_reasons=["eos"])
    tree.critic_value[[a, b, c]] = [0.5, 0.25, 1.0]
    tree.backup(tree.path(int(c)), 1.0)
    tree.reward[c] = 1.0
    tree.close(int(c))
    tree.meta["note"] = "x"
    return tree


def test_children_are_contiguous_and_paths_walk_up():
    tree = small_tree()
    assert list(tree.children(0)) == [1, 2]
    assert list(tree.children(1)) == [3]
    assert tree.children(2).size == 0
    assert tree.path(3) == [0, 1, 3]
    assert tree.steps(3) == ("a\n", "The answer is 4.")
    assert tree.depth[3] == 2 and tree.parent[3] == 1


def test_node_is_expanded_once():
    tree = small_tree()
    with pytest.raises(ValueError, match="already expanded"):
        tree.add_children(0, ["again"])
    with pytest.raises(IndexError, match="does not exist"):
        tree.add_children(99, ["x"])


def test_growth_keeps_data():
    tree = Tree(capacity=1)
    parent = 0
    for i in range(200):
        (parent,) = tree.add_children(int(parent), [f"s{i}"], num_tokens=[i])
    assert len(tree) == 201 and tree.capacity >= 201
    assert tree.num_tokens[200] == 199 and tree.text[200] == "s199"
    assert tree.path(200) == list(range(201))


def test_backup_updates_visits_sum_and_max():
    tree = small_tree()
    tree.backup([0, 2], 0.25)
    assert tree.visits[0] == 2 and tree.value_sum[0] == pytest.approx(1.25)
    assert tree.value(0) == pytest.approx(0.625)
    assert tree.value(0, "max") == pytest.approx(1.0)
    assert tree.value(2) == pytest.approx(0.25)
    # unvisited nodes fall back to the critic's value
    fresh = Tree()
    (k,) = fresh.add_children(0, ["x"])
    fresh.critic_value[k] = 0.3
    assert fresh.value(int(k)) == pytest.approx(0.3)


def test_close_propagates_only_when_all_children_closed():
    tree = small_tree()
    assert tree.closed[3] and tree.closed[1]  # a's only child is closed
    assert not tree.closed[0]  # b is still open
    tree.close(2)
    assert tree.closed[0]


def test_parquet_round_trip_is_exact(tmp_path):
    tree = small_tree()
    path = tree.save(tmp_path / "trees" / "p1.parquet")
    loaded = Tree.load(path)
    assert loaded.equals(tree)
    assert math.isnan(loaded.rollout_value[0]) and loaded.critic_value.dtype == np.float32
    assert loaded.prompt == tree.prompt and loaded.meta == {"note": "x"}
    # the loaded tree keeps growing
    loaded.add_children(2, ["more"])
    assert len(loaded) == len(tree) + 1


def test_round_trip_detects_a_difference(tmp_path):
    tree = small_tree()
    loaded = Tree.load(tree.save(tmp_path / "t.parquet"))
    loaded.visits[1] += 1
    assert not loaded.equals(tree)


def test_load_rejects_foreign_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="not a treesearch tree"):
        Tree.load(tmp_path / "other.parquet")


def test_json_export_is_nested_and_serialisable():
    data = small_tree().to_json()
    text = json.dumps(data)  # NaN must not leak into JSON
    assert "NaN" not in text
    root = data["root"]
    assert [c["text"] for c in root["children"]] == ["a\n", "b\n"]
    leaf = root["children"][0]["children"][0]
    assert leaf["answer"] == "4" and leaf["terminal"] and leaf["visits"] == 1
    assert root["children"][1]["rollout_value"] is None


@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=40),
    values=st.lists(st.floats(min_value=0, max_value=1), min_size=40, max_size=40),
    texts=st.lists(st.text(max_size=12), min_size=200, max_size=200),
)
def test_random_trees_round_trip(tmp_path_factory, shape, values, texts):
    tree = Tree("rand", "plain prompt")
    t = iter(texts)
    for i, count in enumerate(shape):
        node = i % len(tree)
        if tree.expanded[node]:
            continue
        ids = tree.add_children(node, [next(t) for _ in range(count)])
        for k in ids:
            tree.critic_value[k] = values[int(k) % len(values)]
            tree.backup(tree.path(int(k)), values[(int(k) * 7) % len(values)])
    path = tmp_path_factory.mktemp("rt") / "t.parquet"
    assert Tree.load(tree.save(path)).equals(tree)


def _python_best_child(tree, node, c, rule, backup, vl_value, fpu, q_range=(0.0, 1.0)):
    """Straightforward Python selection, the reference the compiled kernel must match."""
    import math

    best, best_score = -1, -math.inf
    parent_n = tree.visits[node] + tree.virtual_loss[node]
    for k in tree.children(node):
        if tree.closed[k]:
            continue
        q = float(tree.value(int(k), backup))
        q = fpu if math.isnan(q) else q
        n, vl = float(tree.visits[k]), float(tree.virtual_loss[k])
        q_vl = (q * max(n, 1) + vl_value * vl) / (max(n, 1) + vl)
        low, high = q_range
        if high > low:  # min-max normalisation (MuZero): Q relative to the values seen
            q_vl = (q_vl - low) / (high - low)
        if rule == "puct":
            u = c * float(tree.prior[k]) * math.sqrt(parent_n) / (1 + n + vl)
        else:
            u = c * math.sqrt(math.log(parent_n + 1) / (1 + n + vl))
        if q_vl + u > best_score:
            best, best_score = int(k), q_vl + u
    return best


@pytest.mark.parametrize("rule", ["puct", "uct"])
@pytest.mark.parametrize("backup", ["mean", "max"])
def test_compiled_selection_matches_python_reference(rule, backup):
    from treesearch.search.selection import Descent, select_child, selection_scores

    rng = np.random.default_rng(3)
    tree = Tree(capacity=2)
    frontier = [0]
    for _ in range(30):  # a random tree with visits, virtual loss, closed and unscored nodes
        node = frontier.pop(int(rng.integers(len(frontier))))
        kids = tree.add_children(node, ["s"] * int(rng.integers(1, 5)), priors=None)
        tree.prior[kids] = rng.dirichlet(np.ones(len(kids)))
        tree.critic_value[kids] = np.where(rng.random(len(kids)) < 0.2, np.nan, rng.random(len(kids)))
        for k in kids:
            if rng.random() < 0.6:
                tree.backup(tree.path(int(k)), float(rng.random()))
            tree.virtual_loss[k] = int(rng.integers(0, 3)) if rng.random() < 0.3 else 0
            if rng.random() < 0.1:
                tree.close(int(k))
            frontier.append(int(k))
    for node in range(len(tree)):
        if not tree.expanded[node]:
            continue
        expected = _python_best_child(tree, node, 1.3, rule, backup, 0.2, 0.4)
        got = select_child(tree, node, c=1.3, rule=rule, backup=backup, vl_value=0.2, fpu=0.4)
        assert got == expected
        normalised = _python_best_child(tree, node, 1.3, rule, backup, 0.2, 0.4, q_range=(0.3, 0.45))
        assert select_child(tree, node, c=1.3, rule=rule, backup=backup, vl_value=0.2, fpu=0.4,
                            q_range=(0.3, 0.45)) == normalised
        scores = selection_scores(tree, node, c=1.3, rule=rule, backup=backup, vl_value=0.2, fpu=0.4)
        if expected >= 0:
            assert int(tree.first_child[node]) + int(np.argmax(scores)) == expected
    # a descent adds exactly one virtual loss per chosen child, along a parent chain
    before = tree.column("virtual_loss").copy()
    chosen, _ = Descent(c=1.3, rule=rule, backup=backup, vl_value=0.2).run(tree, 0)
    assert all(tree.parent[b] == a for a, b in zip([0] + chosen, chosen))
    delta = tree.column("virtual_loss") - before
    assert delta.sum() == len(chosen) and all(delta[chosen] == 1)


def test_descent_grows_its_path_buffer_on_deep_trees():
    from treesearch.search.selection import Descent

    tree = Tree()
    node = 0
    for _ in range(200):  # a chain deeper than the initial 64-slot buffer
        (node,) = tree.add_children(int(node), ["s"])
    chosen, outcome = Descent().run(tree, 0)
    assert outcome == kernels.REACHED_LEAF and chosen == list(range(1, 201))
    tree.close(200)  # closing the only leaf closes the whole chain
    assert tree.column("closed").all()
    chosen, outcome = Descent().run(tree, 0)
    assert outcome == kernels.DEAD_END and chosen == []


def test_backup_releases_virtual_loss_and_keeps_max_through_nan():
    tree = Tree()
    kids = tree.add_children(0, ["a", "b"])
    tree.virtual_loss[[0, kids[0]]] = 1
    tree.backup([0, int(kids[0])], 0.25, release_virtual_loss=True)
    tree.backup([0], float("nan"))
    assert tree.virtual_loss[0] == 0 and tree.virtual_loss[kids[0]] == 0
    assert tree.value_max[0] == 0.25 and tree.visits[0] == 2
    assert np.isnan(tree.value_sum[0])


def test_children_added_in_batches_are_linked_in_order():
    tree = Tree()
    first = tree.add_children(0, ["a", "b"])
    other = tree.add_children(int(first[0]), ["a1"])
    more = tree.add_children(0, ["c"], extend=True)
    assert tree.children(0).tolist() == [*first.tolist(), *more.tolist()]
    assert tree.num_children[0] == 3 and tree.last_child(0) == int(more[0])
    assert tree.children(int(first[0])).tolist() == other.tolist()
    with pytest.raises(ValueError, match="extend=True"):
        tree.add_children(0, ["d"])
    tree.set_priors(0, [0.5, 0.3, 0.2])
    assert tree.prior[more[0]] == pytest.approx(0.2)


def test_a_node_that_may_widen_stays_open_when_its_children_close():
    tree = Tree()
    (a,) = tree.add_children(0, ["a"])
    kids = tree.add_children(int(a), ["x", "y"])
    tree.can_widen[a] = True
    for k in kids:
        tree.close(int(k))
    assert not tree.closed[a] and not tree.closed[0]
    tree.stop_widening(int(a))  # no more children: it closes, and so does the root
    assert tree.closed[a] and tree.closed[0]


def test_version_1_tables_still_load():
    tree = Tree("p", "prompt")
    kids = tree.add_children(0, ["a", "b", "c"], duplicates=[0, 2, 0])
    tree.add_children(int(kids[1]), ["b1", "b2"])
    table = tree.to_arrow()
    old = table.drop_columns(["next_sibling", "samples", "can_widen", "widen_k"])
    meta = dict(old.schema.metadata)
    meta[b"treesearch.format"] = b"1"
    loaded = Tree.from_arrow(old.replace_schema_metadata(meta))
    assert loaded.children(0).tolist() == kids.tolist()
    assert loaded.children(int(kids[1])).tolist() == tree.children(int(kids[1])).tolist()
    assert loaded.samples[0] == 5 and loaded.samples[kids[1]] == 2
    assert np.isnan(loaded.widen_k[: len(loaded)]).all()
    with pytest.raises(ValueError, match="format"):
        bad = dict(meta)
        bad[b"treesearch.format"] = b"9"
        Tree.from_arrow(old.replace_schema_metadata(bad))


def test_version_2_tables_load_with_no_node_paced():
    tree = Tree("p", "prompt")
    tree.add_children(0, ["a", "b"])
    tree.widen_k[0] = 1.5
    assert Tree.from_arrow(tree.to_arrow()).widen_k[0] == pytest.approx(1.5)  # round trip
    old = tree.to_arrow().drop_columns(["widen_k"])
    meta = dict(old.schema.metadata)
    meta[b"treesearch.format"] = b"2"
    loaded = Tree.from_arrow(old.replace_schema_metadata(meta))
    assert np.isnan(loaded.widen_k[: len(loaded)]).all() and loaded.children(0).tolist() == [1, 2]


def test_every_column_is_declared_on_the_class_with_its_dtype():
    """Editors and type checkers see the columns: `Tree` declares each one COLUMNS lists."""
    from treesearch.tree import COLUMNS

    declared = {k for k, v in Tree.__annotations__.items() if v == "np.ndarray"}
    assert declared == set(COLUMNS)
    tree = Tree("p")
    for name, (dtype, _) in COLUMNS.items():
        assert getattr(tree, name).dtype == np.dtype(dtype), name
