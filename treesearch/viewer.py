"""A self-contained HTML page showing one search tree (no scripts, no external files)."""

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
.stats { color: #666; font-size: .85em; margin-left: .6em; }
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


def render_tree(tree: Tree, chosen: set[int], title: str, meta: str, backup: str = "mean") -> str:
    """The HTML of a tree; children ordered by visits, then value."""

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
        text = html.escape(tree.text[i]) if i else "(prompt)"
        kids = sorted(tree.children(i).tolist(), key=lambda k: (-tree.visits[k], -(tree.value(k, backup) or 0)))
        cls = ' class="chosen"' if i in chosen else ""
        opened = " open" if i in chosen or i == 0 or tree.visits[i] > 0 else ""
        inner = "".join(node_html(k) for k in kids)
        return (
            f"<details{cls}{opened}><summary><span class='step'>{text}</span>{badge}"
            f"<span class='stats'>{stats}</span></summary>{inner}</details>"
        )

    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<div class='meta'>{html.escape(meta)}</div>"
        "<div class='legend'><span>N: visits</span><span>Q: backed-up value</span>"
        "<span>critic: the critic's value</span><span>P: prior</span>"
        "<span class='chosen'><span class='step' style='background:#fff3b0'>chosen path</span></span></div>"
        f"{node_html(0)}</body></html>"
    )


def write_view(run: Path, problem_id: Optional[str] = None) -> Path:
    """Write `RUN/view/<id>.html` for one problem of a run folder and return its path."""
    from treesearch.runfolder import RunFolder

    folder = RunFolder.existing(Path(run))
    ids = folder.manifest()["problem_ids"]
    if problem_id is None:
        done = folder.finished()
        candidates = [i for i in ids if i in done and folder.tree_path(i).exists()]
        if not candidates:
            raise FileNotFoundError(f"{folder.path} has no finished problem with a saved tree yet")
        problem_id = candidates[0]
    if problem_id not in ids:
        raise KeyError(f"problem {problem_id!r} is not in {folder.path} (first ids: {ids[:5]})")
    if not folder.tree_path(problem_id).exists():
        raise FileNotFoundError(f"no tree saved for problem {problem_id!r} in {folder.path}")
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
