"""One set of defaults: the config `treesearch search` composes equals what the Python API
runs with, for every algorithm, and the YAML files cannot drift from the dataclasses."""

import dataclasses
import inspect

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from treesearch import api
from treesearch.config import Scheduling, compose, config_dir
from treesearch.runner import Runner
from treesearch.search import ALGORITHMS, make_algorithm
from treesearch.search.budget import DEFAULT_BUDGET, Budget


def composed(*overrides: str) -> dict:
    return OmegaConf.to_container(compose("search", overrides), resolve=True)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_cli_and_api_compose_the_same_search_for_every_algorithm(algorithm):
    search = composed(f"search={algorithm}")["search"]
    assert search["algorithm"] == algorithm
    api_algorithm = make_algorithm(algorithm)  # what treesearch.search(algorithm=...) builds
    assert search["options"] == dataclasses.asdict(api_algorithm.config)
    # and the CLI's options build that same algorithm
    assert make_algorithm(algorithm, **search["options"]).config == api_algorithm.config
    budget = Budget.from_dict({k: v for k, v in search["budget"].items() if v is not None})
    assert budget == DEFAULT_BUDGET


def test_the_job_schedules_like_the_python_api():
    job = composed()["job"]
    defaults = dataclasses.asdict(Scheduling())
    assert {k: job[k] for k in defaults} == defaults
    for fn in (api.asearch, Runner.__init__):
        params = inspect.signature(fn).parameters
        assert {k: params[k].default for k in defaults} == defaults, fn.__qualname__


def test_the_yaml_files_select_schemas_and_override_nothing():
    """Defaults are defined once: a value written in a search, job or cluster YAML would be
    a second definition (cluster files only set `kind`)."""
    for group in ("search", "job", "cluster"):
        for path in sorted((config_dir() / group).glob("*.yaml")):
            body = OmegaConf.load(path)
            keys = set(body) - {"defaults"}
            assert keys <= ({"kind"} if group == "cluster" else set()), f"{path}: sets {sorted(keys)}"
            assert any(str(d).startswith(f"/schema/{group}/") for d in body.defaults), path


def test_a_misspelt_option_or_a_wrong_type_is_refused_naming_the_key():
    with pytest.raises(ConfigCompositionException) as err:
        compose("search", ["search.options.c_pct=2"])
    assert "c_pct" in str(err.value.__cause__)
    with pytest.raises(ConfigCompositionException) as err:
        compose("search", ["search=beam", "search.options.beam_width=wide"])
    assert "beam_width" in str(err.value.__cause__)
    with pytest.raises(ConfigCompositionException):
        compose("search", ["job.trees_in_flight=many"])


def test_cluster_inprocess_is_selectable():
    assert composed("cluster=inprocess")["cluster"]["kind"] == "inprocess"
    assert composed()["cluster"]["kind"] == "ray"
