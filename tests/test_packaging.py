"""The wheel carries every module and config, and an installed (non-editable) copy runs
the CLI from another directory."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources (a build in the checkout would leave a
    `build/` folder whose stale files later wheels would carry)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("treesearch", "critics", "configs"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(source)], check=True, cwd=out)
    (built,) = out.glob("treesearch-*.whl")
    return built


def test_the_wheel_holds_every_module_config_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for pkg in ("treesearch", "critics") for p in (ROOT / pkg).rglob("*.py")}
    configs = {"treesearch/configs/" + p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml")}
    data = {p.relative_to(ROOT).as_posix() for p in (ROOT / "treesearch" / "data").iterdir() if p.is_file()}
    assert configs and "treesearch/configs/search.yaml" in configs
    assert not modules - names, f"modules missing from the wheel: {sorted(modules - names)}"
    assert not configs - names, f"configs missing from the wheel: {sorted(configs - names)}"
    assert not data - names, f"data files missing from the wheel: {sorted(data - names)}"


def test_an_installed_wheel_composes_the_cli_config_from_another_directory(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the editable checkout
    code = ("import sys, treesearch.cli as cli; print(cli.config_dir()); "
            "sys.argv = ['treesearch', 'search', '--cfg', 'job', 'task.limit=3']; cli.main()")
    done = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    first, config = done.stdout.split("\n", 1)
    assert Path(first) == site / "treesearch" / "configs"
    assert "limit: 3" in config and "backend: auto" in config
