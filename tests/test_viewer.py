"""The run viewer in a real headless browser (Chromium): the index over a run's problems
and a tree page, as a reader opens them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.test_job_inputs import scripted_job
from tests.test_jobs import compose
from treesearch.jobs import run_job
from treesearch.viewer import write_view

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def rendered_dom(page: Path, tmp_path: Path) -> str:
    """The page's DOM after Chromium loaded and rendered it (and a screenshot of it)."""
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / f"{page.stem}.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 5000, "the page rendered to an empty picture"
    done = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120,
                          check=True)
    return done.stdout


class Outline(HTMLParser):
    """The tree page's nodes as the browser laid them out: (depth, id, chosen) in
    document order; a node's id is the first span of its summary."""

    def __init__(self):
        super().__init__()
        self.depth, self.nodes, self.chosen, self.state = 0, [], False, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "details":
            self.depth += 1
            self.chosen = "chosen" in (attrs.get("class") or "").split()
        elif tag == "summary":
            self.state = "summary"
        elif tag == "span" and self.state == "summary" and attrs.get("class") == "id":
            self.state = "id"

    def handle_endtag(self, tag):
        if tag == "details":
            self.depth -= 1
        elif tag == "summary":
            self.state = None

    def handle_data(self, data):
        if self.state == "id":
            self.nodes.append((self.depth, int(data.strip().lstrip("#")), self.chosen))
            self.state = "done"


@pytest.mark.slow  # runs a headless browser
@pytest.mark.skipif(CHROMIUM is None, reason="needs a Chromium binary (Debian: apt-get install chromium)")
def test_the_index_and_a_tree_page_render_in_chromium_with_node_ids_and_the_chosen_path_first(tmp_path):
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"input": f"Question {i}?", "target": i}) + "\n" for i in range(3)))
    folder = run_job(compose(scripted_job(data, tmp_path / "run")))
    index = write_view(folder)

    dom = rendered_dom(index, tmp_path)
    links = re.findall(r'<a href="(view/[^"]+\.html)">([^<]+)</a>', dom)
    assert [name for _, name in links] == ["problems-1", "problems-2", "problems-3"]  # every problem, linked
    assert "3 problems" in dom and "generated tokens" in dom

    page = folder / links[0][0]
    outline = Outline()
    outline.feed(rendered_dom(page, tmp_path))
    nodes = outline.nodes
    assert nodes and sorted(n for _, n, _ in nodes) == list(range(len(nodes))), "every node shows its id"
    chosen = [(depth, node) for depth, node, is_chosen in nodes if is_chosen]
    assert chosen, "the chosen path is marked"
    # in document order, the first node at each depth of the chosen path is the chosen one:
    # the chosen child is listed first under its parent, with its own subtree before its siblings
    first_at_depth: dict = {}
    for depth, node, is_chosen in nodes:
        first_at_depth.setdefault(depth, is_chosen)
    assert all(first_at_depth[depth] for depth, _ in chosen), nodes
    assert len(chosen) >= 2, "a path from the root to an answer"
