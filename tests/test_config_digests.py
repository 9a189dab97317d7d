"""Run folders keep their names and resume across config changes: the job and self-training
digests of representative command lines (every algorithm, task, policy and critic option,
plug-ins, self-training variants and the stages they derive) equal those computed before
the task, policy, critic and selftrain groups got schemas (tests/data/config_digests.json,
written by `python -m tests.config_digests --write` then)."""

import json

from tests.config_digests import PINNED, SEARCH_CASES, SELFTRAIN_CASES, all_digests

INFORMATIVE = {"config"}  # a hash of the whole composed config: it may change where no digest does


def test_job_and_self_training_digests_are_those_of_the_configs_before_the_schemas():
    pinned = json.loads(PINNED.read_text())
    assert len(pinned) == len(SEARCH_CASES) + len(SELFTRAIN_CASES)
    now = all_digests()
    changed = [
        f"{case} / {key}: {value[:12]} -> {str(now[case].get(key))[:12]}"
        for case, values in sorted(pinned.items())
        for key, value in sorted(values.items())
        if key not in INFORMATIVE and now[case].get(key) != value
    ]
    assert not changed, "digests changed (run folders would not resume):\n" + "\n".join(changed)


def test_the_default_value_targets_changed_what_a_round_computes_and_so_its_folder():
    """Monte Carlo targets became the default on purpose: a default self-training command
    gets a new folder; the old one resumes with selftrain.harvest.values=inferred (above)."""
    from tests.config_digests import SELFTRAIN_BASE
    from treesearch.config import compose
    from treesearch.selftrain import selftrain_digest

    pinned = json.loads(PINNED.read_text())["selftrain: selftrain"]["selftrain"]
    default = compose("selftrain", [o for o in SELFTRAIN_BASE if not o.startswith("selftrain.harvest.values")])
    assert default.selftrain.harvest["values"] == "mc" and selftrain_digest(default) != pinned
    assert selftrain_digest(compose("selftrain", SELFTRAIN_BASE)) == pinned

