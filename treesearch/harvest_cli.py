"""`treesearch harvest RUN [RUN...] OUT [options]`: run folders -> training datasets."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from treesearch.harvest import PROMPT_FORMS
from treesearch.pseudo_labels import LABEL_SOURCES
from treesearch.step_checks import LUCKY_CHECKS
from treesearch.schemas import HarvestConfig
from treesearch.value_targets import VALUE_SOURCES

USAGE_DESCRIPTION = (
    "Write OUT/sft.parquet, OUT/prm.parquet, OUT/preference.parquet and OUT/harvest.json "
    "from the search trees of one or more run folders."
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="treesearch harvest", description=USAGE_DESCRIPTION)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s) written by `treesearch search`")
    p.add_argument("out", metavar="OUT", help="output folder")
    defaults = HarvestConfig()  # harvest()'s and selftrain.harvest's
    p.add_argument("--top-k", type=int, default=defaults.top_k,
                   help=f"SFT traces kept per problem (default {defaults.top_k})")
    p.add_argument(
        "--values",
        choices=VALUE_SOURCES,
        default=defaults.values,
        help="value targets: Monte Carlo estimates, ReST-MCTS* inferred values, hard 0/1 outcomes "
        "(Math-Shepherd), the mean of mc and inferred, or the search critic's own values (critic: no gold; "
        f"under critic=self_eval a judge distilled from self-evaluations) (default {defaults.values})",
    )
    p.add_argument("--margin", type=float, default=defaults.margin,
                   help=f"least value gap of a preference pair (default {defaults.margin})")
    p.add_argument(
        "--min-visits", type=int, default=0, help="least visits of a sibling used in a preference pair (default 0)"
    )
    p.add_argument(
        "--labels",
        choices=LABEL_SOURCES,
        default=defaults.labels,
        help="gold: terminals graded against gold answers; vote: label-free, against each tree's majority answer; "
        "self_verify: label-free, against the majority weighted by each terminal's critic value",
    )
    p.add_argument(
        "--reject-lucky",
        choices=LUCKY_CHECKS,
        default=defaults.reject_lucky,
        help="arithmetic: a correct solution with a step whose arithmetic is wrong counts as not correct "
        f"(right by luck); none: keep it (default {defaults.reject_lucky})",
    )
    p.add_argument(
        "--prompts",
        choices=PROMPT_FORMS,
        default=defaults.prompts,
        help="searched: each row keeps the prompt the search used; zero_shot: the same less its worked "
        f"examples, so the model learns to solve without them (default {defaults.prompts})",
    )
    return p


def main(args: Sequence[str]) -> int:
    """Run the harvest command; returns the exit status (0 ok, 1 failed, 2 bad usage)."""
    try:
        ns = parser().parse_args(list(args))
    except SystemExit as stop:  # argparse printed the usage error (or --help)
        return int(stop.code or 0)
    from treesearch.harvest import harvest

    try:
        paths = harvest(
            ns.runs, ns.out, top_k=ns.top_k, values=ns.values, margin=ns.margin, min_visits=ns.min_visits,
            labels=ns.labels, reject_lucky=ns.reject_lucky, prompts=ns.prompts,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"treesearch harvest: error: {err}", file=sys.stderr)
        return 1
    import json

    counts = json.loads(paths["manifest"].read_text())["counts"]
    for name in ("sft", "prm", "preference"):
        print(f"{name:<11}{counts[name]:>7} rows  {paths[name]}")
    print(f"{'manifest':<11}{'':>12}  {paths['manifest']}")
    return 0
