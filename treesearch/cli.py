"""`treesearch <command> [options]`: the command line.

Commands:
  search [overrides]          run (or resume) a batch search job; Hydra overrides, -m for sweeps
  view RUN [PROBLEM_ID]       write self-contained HTML pages of a run's trees and an index
  harvest RUN [RUN...] OUT    turn finished runs' trees into SFT / PRM / preference datasets
  export-model MODEL OUT      save a model (e.g. the packaged "smollm2") as a plain Hugging Face folder
  selftrain [overrides]       self-training rounds: search -> harvest -> train -> evaluate
  synthesize [overrides]      SELF-GUIDE: the policy writes new problems from a task's problems
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from treesearch.config import config_dir, register_schemas
from treesearch.runfolder import FolderInUse
from treesearch.types import JobStopped

USER_ERRORS = (ValueError, FileNotFoundError, KeyError, JobStopped, FolderInUse)
"""What a command reports as one line naming the problem (bad data, config or model, a
stopped cluster, a run folder another job holds); anything else is a bug and keeps its traceback."""

USAGE = """usage: treesearch <command> [options]

commands:
  search [overrides]        run (or resume) a batch search job with Hydra configs
                            e.g. treesearch search task.limit=20 search=beam critic=prm critic.model=DIR
                                 treesearch search -m search.options.c_puct=0.5,1,2   (a sweep)
                                 treesearch search --cfg job        (print the composed config)
  view RUN [PROBLEM_ID]     write RUN/view.html (an index over the run) and RUN/view/<id>.html
                            for every tree (or only PROBLEM_ID's page)
  harvest RUN [RUN...] OUT  write OUT/sft.parquet, prm.parquet, preference.parquet from runs' trees
                            (treesearch harvest --help for options)
  export-model MODEL OUT    save MODEL ("smollm2", a GGUF-backed name, or a HF id) as a plain Hugging
                            Face folder that TRL, vLLM and transformers take as it is
  selftrain [overrides]     rounds of search -> harvest -> train policy and PRM -> evaluate,
                            e.g. treesearch selftrain task.path=TRAIN.jsonl selftrain.dev.path=DEV.jsonl
  synthesize [overrides]    SELF-GUIDE: the policy writes new problems from the task's problems,
                            rule-filtered, to synthesize.out (JSONL), e.g.
                            treesearch synthesize task=arith task.limit=20 synthesize.out=new.jsonl

Config groups (configs/): task, policy, critic, search, cluster, job.
`treesearch search --help` lists them with their options.
"""


def _hydra_command(config_name: str, body: Callable, args: Sequence[str]) -> None:
    import hydra

    register_schemas()

    @hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")
    def entry(cfg):
        try:
            return body(cfg)
        except USER_ERRORS as err:  # bad input or a stopped job: one line, not a traceback
            print(f"treesearch {config_name}: error: {err}", file=sys.stderr)
            raise SystemExit(1) from None

    saved = sys.argv
    sys.argv = [f"treesearch {config_name}", *args]
    try:
        entry()
    finally:
        sys.argv = saved


def _search(cfg) -> None:
    from treesearch.jobs import run_job
    from treesearch.report import print_run
    from treesearch.runfolder import RunFolder

    folder = RunFolder(run_job(cfg))
    print_run(folder.path)
    metrics = folder.metrics()
    if metrics["problems"] and metrics["errors"] == metrics["problems"]:
        raise SystemExit(f"every problem failed; see the error column of {folder.path / RunFolder.TABLE}")


def _selftrain(cfg) -> None:
    from treesearch.selftrain import SelfTraining

    trainer = SelfTraining(cfg)  # its run() names any mandatory value left unset before anything runs
    summary = trainer.run(on_round=_print_round)
    print(f"self-training folder: {trainer.root}")
    if summary.get("baseline"):
        print(f"baseline: {_accuracies(summary['baseline'])}")


def _synthesize(cfg) -> None:
    import json

    from treesearch.components import build_policy, build_task, load_problems, plain
    from treesearch.self_guide import report_path, synthesize, write_rows

    options = plain(cfg["synthesize"])
    out = Path(options.pop("out"))
    report_file = report_path(out)  # refused before any model loads
    task = build_task(plain(cfg["task"]))
    seeds = load_problems(task, plain(cfg["task"]))
    policy = build_policy(plain(cfg["policy"]))
    try:
        rows, report = synthesize(policy, seeds, options.pop("count"), **options)
    finally:
        getattr(policy, "shutdown", lambda: None)()
    write_rows(rows, out)
    report_file.write_text(json.dumps(report, indent=2))
    print(f"{report['kept']} problems of {report['attempts']} attempts kept (rejected: {report['rejected']}): {out}")


def _accuracies(record: dict) -> str:
    from treesearch.round_stats import evaluations

    parts = []
    for label, key, metrics in evaluations(record, ""):
        acc, se = metrics.get("accuracy"), metrics.get("se")
        text = "n/a" if acc is None else f"{acc:.1%}" + (f" ± {se:.1%}" if se is not None else "")
        name = f"{key}[{label}]" if label else key
        parts.append(f"{name} {text}")
    return ", ".join(parts) or "no evaluation"


def _print_round(record: dict) -> None:
    bstar = (record.get("bstar") or {}).get("by_temperature", {})
    extra = "; ".join(
        f"T={t}: pass@k {m.get('pass_at_k', 0):.2f}, exploitation {m.get('exploitation', 0):.2f}, "
        f"balance {m.get('balance_score', 0):.3f}"
        for t, m in bstar.items()
    )
    print(f"round {record['round']}: {_accuracies(record)}" + (f" | B-STaR {extra}" if extra else ""), flush=True)


def _view(args: Sequence[str]) -> int:
    from treesearch.viewer import write_view

    if not args or len(args) > 2:
        print("usage: treesearch view RUN [PROBLEM_ID]", file=sys.stderr)
        return 2
    page = write_view(Path(args[0]), args[1] if len(args) > 1 else None)
    print(page)
    return 0


def _export_model(args: Sequence[str]) -> int:
    from treesearch.models import export_hf_folder

    if len(args) != 2:
        print("usage: treesearch export-model MODEL OUT", file=sys.stderr)
        return 2
    print(export_hf_folder(args[0], Path(args[1])))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    try:
        if command == "search":
            _hydra_command("search", _search, rest)
            return 0
        if command == "selftrain":
            _hydra_command("selftrain", _selftrain, rest)
            return 0
        if command == "synthesize":
            _hydra_command("synthesize", _synthesize, rest)
            return 0
        if command == "view":
            return _view(rest)
        if command == "export-model":
            return _export_model(rest)
        if command == "harvest":
            from treesearch.harvest_cli import main as harvest_main

            return harvest_main(rest)
    except USER_ERRORS as err:
        print(f"treesearch {command}: error: {err}", file=sys.stderr)
        return 1
    print(f"treesearch: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
