"""One registry mechanism: algorithms, tasks, critics and policy backends all name their
factories through `treesearch.registry.Registry`."""

import sys

import pytest

from critics.registry import critic_registry
from treesearch.policy import POLICY_BACKENDS
from treesearch.registry import Registry
from treesearch.search import ALGORITHMS
from treesearch.tasks import TASKS


def test_every_named_kind_uses_the_one_registry():
    for registry, name in ((ALGORITHMS, "mcts"), (TASKS, "gsm8k"), (critic_registry(), "verifier"), (POLICY_BACKENDS, "hf")):
        assert isinstance(registry, Registry) and name in registry and name in registry.names()
    with pytest.raises(ValueError, match=r"unknown task 'nope'; choose from \[.*'gsm8k'"):
        TASKS.make("nope")


def test_registration_as_a_call_or_a_decorator_and_lazy_imports(monkeypatch, tmp_path):
    registry = Registry("widget", {"plain": dict})
    registry.register("pair", lambda a, b: (a, b))

    @registry.register("doubled")
    def doubled(x):
        return 2 * x

    assert registry.make("pair", a=1, b=2) == (1, 2) and registry.make("doubled", x=4) == 8
    assert registry.make("plain", k=1) == {"k": 1}
    (tmp_path / "widget_impl.py").write_text("class Widget:\n    def __init__(self, size=1):\n        self.size = size\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    lazy = Registry("widget", lazy={"big": "widget_impl:Widget"})
    assert "big" in lazy and "widget_impl" not in sys.modules  # named, not imported yet
    assert lazy.make("big", size=3).size == 3 and "widget_impl" in sys.modules
    with pytest.raises(ValueError, match="a widget needs a name"):
        registry.register("", dict)


def test_registries_keep_the_mapping_interface_of_the_dicts_they_replaced():
    from treesearch.registry import UnknownName

    registry = Registry("widget", {"a": dict})
    registry["b"] = list
    assert registry.keys() == ["a", "b"] and registry.values() == [dict, list] and registry.get("c") is None
    assert dict(registry.items()) == {"a": dict, "b": list}
    for error in (KeyError, ValueError):  # mapping-style code and config errors both catch it
        with pytest.raises(error, match=r"^unknown widget 'c'; choose from \['a', 'b'\]$"):
            registry["c"]
