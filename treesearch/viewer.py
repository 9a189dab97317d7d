"""Self-contained HTML pages of a run (no scripts, no external files): an index over its
problems, and one page per search tree."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Optional

from treesearch.tree import Tree

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.3em; } .meta { color: #555; margin-bottom: 1em; white-space: pre-wrap; }
details { margin-left: 1.4em; border-left: 1px solid #ddd; padding-left: .5em; }
summary { cursor: pointer; list-style-position: outside; }
.step { font-family: ui-monospace, monospace; white-space: pre-wrap; }
.stats { color: #666; font-size: .85em; margin-left: .6em; white-space: nowrap; display: inline-block; }
.id { color: #999; font-size: .8em; margin-right: .4em; font-family: ui-monospace, monospace; }
table { border-collapse: collapse; } td, th { padding: .2em .8em; border-bottom: 1px solid #eee; text-align: left; }
.chosen > summary .step { background: #fff3b0; font-weight: 600; }
.answer { border-radius: 3px; padding: 0 .35em; margin-left: .4em; font-size: .85em; background: #e8e8e8; }
.right { background: #c8f0c8; } .wrong { background: #f6c9c9; }
.legend span { margin-right: 1.2em; }
"""


def _num(x: float, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def chosen_path(tree: Tree, solution: Optional[str]) -> set[int]:
    """Nodes on the path whose steps spell the chosen solution (empty if none does)."""
    if not solution:
        return set()
    node, path = 0, {0}
    consumed = ""
    while consumed != solution:
        nxt = [int(k) for k in tree.children(node) if solution.startswith(consumed + tree.text[k]) and tree.text[k]]
        if not nxt:
            return set()
        node = nxt[0]
        consumed += tree.text[node]
        path.add(node)
    return path


def step_html(text: str) -> str:
    """A step's text as shown: line breaks it starts or ends with become a visible ⏎
    (a step that begins with a newline would otherwise look empty)."""
    body = text.strip("\n")
    lead = "⏎" * (len(text) - len(text.lstrip("\n")))
    trail = "⏎" if body and text.endswith("\n") else ""
    return html.escape(lead + body) + (f"<span class='id'>{trail}</span>" if trail else "")


def render_tree(tree: Tree, chosen: set[int], title: str, meta: str, backup: str = "mean") -> str:
    """The HTML of a tree: node ids (the order the search created them in), the chosen
    path first among siblings, then children by visits and value."""

    def node_html(i: int) -> str:
        q = float(tree.value(i, backup))
        stats = (
            f"N={int(tree.visits[i])} Q={_num(q)} critic={_num(float(tree.critic_value[i]))} "
            f"P={_num(float(tree.prior[i]))} tokens={int(tree.num_tokens[i])}"
        )
        if tree.duplicates[i]:
            stats += f" ×{int(tree.duplicates[i]) + 1}"
        badge = ""
        if tree.terminal[i]:
            reward = float(tree.reward[i])
            cls = "" if math.isnan(reward) else (" right" if reward > 0.5 else " wrong")
            badge = f'<span class="answer{cls}">answer: {html.escape(str(tree.answer[i]))}</span>'
        text = step_html(tree.text[i]) if i else "(prompt)"
        kids = sorted(tree.children(i).tolist(),
                      key=lambda k: (k not in chosen, -tree.visits[k], -(tree.value(k, backup) or 0)))
        cls = ' class="chosen"' if i in chosen else ""
        opened = " open" if i in chosen or i == 0 or tree.visits[i] > 0 else ""
        inner = "".join(node_html(k) for k in kids)
        return (
            f"<details{cls}{opened}><summary><span class='id'>#{i}</span><span class='step'>{text}</span>{badge}"
            f"<span class='stats'>{stats}</span></summary>{inner}</details>"
        )

    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<div class='meta'>{html.escape(meta)}</div>"
        "<div class='legend'><span>#: node id (creation order)</span><span>N: visits</span><span>Q: backed-up value</span>"
        "<span>critic: the critic's value</span><span>P: prior</span>"
        "<span class='chosen'><span class='step' style='background:#fff3b0'>chosen path</span></span></div>"
        f"{node_html(0)}</body></html>"
    )


def write_view(run: Path, problem_id: Optional[str] = None) -> Path:
    """Write the pages of a run folder and return the one to open: with `problem_id`,
    `RUN/view/<id>.html` for that problem; without, a page for every problem with a saved
    tree and `RUN/view.html`, an index linking them (returned; outside `view/`, so no
    problem's page can take its name)."""
    from treesearch.runfolder import RunFolder

    folder = RunFolder.existing(Path(run))
    ids = folder.manifest()["problem_ids"]
    if problem_id is not None:
        if problem_id not in ids:
            raise KeyError(f"problem {problem_id!r} is not in {folder.path} (first ids: {ids[:5]})")
        if not folder.tree_path(problem_id).exists():
            raise FileNotFoundError(f"no tree saved for problem {problem_id!r} in {folder.path}")
        return _write_tree_page(folder, problem_id)
    pages = {pid: _write_tree_page(folder, pid) for pid in ids if folder.tree_path(pid).exists()}
    if not pages:
        raise FileNotFoundError(f"{folder.path} has no finished problem with a saved tree yet")
    return _write_index(folder, ids, pages)


def _write_tree_page(folder, problem_id: str) -> Path:
    tree = folder.load_tree(problem_id)
    row = folder.result(problem_id) or {}
    prompt = tree.prompt if isinstance(tree.prompt, str) else "\n".join(m.get("content", "") for m in tree.prompt)
    meta = (
        f"{prompt}\n\nanswer: {row.get('answer')} | gold: {row.get('gold')} | correct: {row.get('correct')} | "
        f"algorithm: {row.get('algorithm')} ({row.get('answer_selection')}) | nodes: {len(tree)} | "
        f"generated tokens: {row.get('generated_tokens')}"
    )
    page = render_tree(tree, chosen_path(tree, row.get("solution")), f"Problem {problem_id}", meta)
    out = folder.path / "view" / f"{folder.key(problem_id)}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def _write_index(folder, ids: list, pages: dict) -> Path:
    """`RUN/view.html`: every problem of the run with its answer, gold, correctness,
    tokens and error, linked to its tree page where one was written."""
    results = {pid: folder.result(pid) for pid in ids}  # each result file read once
    rows = []
    for pid in ids:
        row = results[pid] or {}
        name = html.escape(str(pid))
        link = f"<a href='view/{html.escape(pages[pid].name)}'>{name}</a>" if pid in pages else name
        correct = row.get("correct")
        cls = "" if correct is None else (" class='right'" if correct else " class='wrong'")
        cells = [link, html.escape(str(row.get("answer"))), html.escape(str(row.get("gold"))),
                 f"<span{cls}>{'-' if correct is None else correct}</span>", str(row.get("generated_tokens", "-")),
                 html.escape(str(row.get("error") or "")[:120]) if row else "not finished"]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    correct = sum(1 for r in results.values() if r and r.get("correct"))
    title = f"Run {folder.path.name}"
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<div class='meta'>{len(ids)} problems, {correct} correct, {len(pages)} trees</div>"
        "<table><tr><th>problem</th><th>answer</th><th>gold</th><th>correct</th><th>generated tokens</th>"
        f"<th>error</th></tr>{''.join(rows)}</table></body></html>"
    )
    out = folder.path / "view.html"
    out.write_text(page, encoding="utf-8")
    return out
