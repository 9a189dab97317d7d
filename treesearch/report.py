"""Printing a run folder's results and metrics for people."""

from __future__ import annotations

from pathlib import Path

from treesearch.runfolder import RunFolder


def _short(text, width: int) -> str:
    text = "" if text is None else str(text).replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _percent(x) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def print_run(folder: Path, max_rows: int = 50) -> None:
    """Print one line per problem (answer, gold, correct, tokens, calls, seconds) and totals."""
    run = RunFolder(Path(folder))
    rows, metrics = run.table_rows(), run.metrics()
    header = f"{'id':<18} {'answer':>10} {'gold':>10} {'ok':>3} {'tokens':>7} {'calls':>6} {'sec':>7}  error"
    print(header)
    print("-" * len(header))
    for row in rows[:max_rows]:
        ok = {True: "yes", False: "no", None: "-"}[row["correct"]]
        print(
            f"{_short(row['id'], 18):<18} {_short(row['answer'], 10):>10} {_short(row['gold'], 10):>10} "
            f"{ok:>3} {row['generated_tokens'] or 0:>7} {row['policy_calls'] or 0:>6} "
            f"{row['seconds'] or 0:>7.1f}  {_short(row['error'], 40)}"
        )
    if len(rows) > max_rows:
        print(f"... {len(rows) - max_rows} more rows in {RunFolder.TABLE}")
    acc = metrics.get("accuracy")
    acc_text = f"{acc:.1%} ({metrics['correct']}/{metrics['graded']})" if acc is not None else "n/a"
    tokens = metrics["generated_tokens"]["mean"]
    print(
        f"\naccuracy {acc_text} | problems {metrics['problems']} | errors {metrics['errors']} | "
        f"mean generated tokens {tokens if tokens is None else round(tokens, 1)} | "
        f"skipped as already done {metrics.get('resumed_skipped', 0)}"
    )
    selective = metrics.get("selective") or {}
    half = next((p for p in selective.get("curve", []) if p["coverage"] == 0.5 and p["accuracy"] is not None), None)
    if half is not None:
        print(f"selective: {half['accuracy']:.1%} on the most confident half (value >= {half['threshold']:.3g})"
              + (f"; abstain below {selective['abstain_below']}: {len(selective['abstained'])} abstained, "
                 f"answered accuracy {_percent(selective['accuracy_answered'])}" if "abstain_below" in selective else ""))
    session = metrics.get("last_session") or {}
    if session:
        print(
            f"this session: wall {session['wall_seconds']:.1f}s, engine share {session['engine_share']:.1%}, "
            f"policy mean batch {session['policy']['mean_batch_size']:.1f}, "
            f"critic mean batch {session['critic']['mean_batch_size']:.1f}"
        )
    print(f"run folder: {folder}")
