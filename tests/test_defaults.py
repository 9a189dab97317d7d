"""One set of defaults: the CLI's search configs equal the Python API's dataclasses."""

import dataclasses

import pytest
from hydra import compose, initialize_config_dir

from treesearch.cli import config_dir
from treesearch.search import ALGORITHMS
from treesearch.search.budget import DEFAULT_BUDGET


def composed(algorithm: str) -> dict:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="search", overrides=[f"search={algorithm}"])
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.search, resolve=True)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_cli_search_config_lists_every_option_at_the_api_default(algorithm):
    search = composed(algorithm)
    assert search["algorithm"] == algorithm
    config = ALGORITHMS[algorithm].Config
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    assert sorted(search["options"]) == sorted(defaults), "the YAML should list every option, no more"
    for name, value in search["options"].items():
        assert value == defaults[name], f"configs/search/{algorithm}.yaml: {name}={value!r}, API default {defaults[name]!r}"


def test_cli_budget_is_the_api_default_budget():
    budget = {k: v for k, v in composed("mcts")["budget"].items() if v is not None}
    assert budget == {k: v for k, v in dataclasses.asdict(DEFAULT_BUDGET).items() if v is not None}

