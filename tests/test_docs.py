"""The docs site: the generated pages are current, the site builds with --strict, the README stays short."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path

from dpt_repro import config, docs_gen

ROOT = Path(__file__).resolve().parents[1]


def mkdocs_build(project: Path, site: Path) -> subprocess.CompletedProcess:
    """`mkdocs build --strict` in `project`; the docs extra is installed by `make setup`, so no skip."""
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=project,
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_generated_pages_are_current():
    stale = docs_gen.stale()
    assert not stale, f"{', '.join(map(str, stale))} differ from what the code generates: run `make docs-gen`"


def test_params_page_has_every_key_with_its_stages():
    page = docs_gen.params_page()
    sections = typing.get_type_hints(config.Config)
    for section in dataclasses.fields(config.Config):
        part = page.split(f"## `{section.name}`", 1)[1].split("\n## ", 1)[0]
        for f in dataclasses.fields(sections[section.name]):
            assert f"| `{f.name}` |" in part, f"{section.name}.{f.name} missing from the params page"
    stage1 = page.split("## `stage1`", 1)[1].split("\n## ", 1)[0]
    steps = next(line for line in stage1.splitlines() if line.startswith("| `steps` |"))
    assert "`stage1`" in steps and "at least 1" in steps and "`1500`" in steps
    seed = next(line for line in page.splitlines() if line.startswith("| `seed` |"))
    assert "in [0, 4294967296)" in seed and "`split`" in seed  # split lists it; later stages' folders hold it


def test_a_changed_comment_makes_the_params_page_stale(tmp_path):
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    text = (tmp_path / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text.replace("  steps: 1500\n", "  steps: 1500  # how long stage 1 trains\n",
                                                       1))
    page = docs_gen.params_page(tmp_path)
    assert page != docs_gen.params_page(ROOT)
    assert "how long stage 1 trains" in page


def test_params_comments_join_continuation_lines():
    sections, keys = docs_gen.params_comments(
        "gates:   # thresholds\n  a: 1   # first\n      # and more\n  b: \"\"  # empty\n\nc:\n  d: x\n")
    assert sections == {"gates": "thresholds", "c": ""}
    assert keys == {"gates.a": "first and more", "gates.b": "empty", "c.d": ""}


def test_cli_page_has_every_command_and_option():
    import typer.main

    from dpt_repro.cli import app

    page = docs_gen.cli_page()
    group = typer.main.get_command(app)
    ctx = group.make_context("dpt-repro", [], resilient_parsing=True)
    for name in group.list_commands(ctx):
        assert f"## `dpt-repro {name}`" in page
        section = page.split(f"## `dpt-repro {name}`", 1)[1].split("\n## ", 1)[0]
        for p in group.get_command(ctx, name).params:
            assert all(f"`{o}`" in section for o in p.opts) or f"`{p.name.upper()}`" in section, (name, p.name)


def test_site_builds_strict_with_the_report_pictures(tmp_path):
    result = mkdocs_build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "params" / "index.html").is_file()
    if (ROOT / "reports" / "report" / "top1.png").is_file():
        assert (tmp_path / "site" / "reports" / "report" / "top1.png").is_file()
        assert 'src="../reports/report/top1.png"' in (tmp_path / "site" / "results" / "index.html").read_text()


def test_a_broken_link_fails_the_build(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "mkdocs.yml", project)
    shutil.copytree(ROOT / "docs", project / "docs")
    shutil.copytree(ROOT / "reports", project / "reports")
    with (project / "docs" / "index.md").open("a") as page:
        page.write("\nSee [the missing page](no-such-page.md).\n")
    result = mkdocs_build(project, tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stderr


def test_make_docs_without_the_extra_says_how_to_install_it(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MAKEFLAGS", "MAKELEVEL")}
    result = subprocess.run(["make", "-s", "docs", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True,
                            env=env)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if not line.startswith("make:")]
    assert len(ours) == 1 and "pip install" in ours[0] and ".[docs]" in ours[0], result.stderr


def test_readme_is_short_and_keeps_the_test_command():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines (at most 150): move the detail to docs/"
    assert "make test" in lines, "CI runs the README's test command: keep the line `make test`"


def test_readme_links_resolve():
    targets = re.findall(r"\]\(([^)#\s]+)", (ROOT / "README.md").read_text())
    missing = [t for t in targets if not t.startswith("http") and not (ROOT / t).exists()]
    assert targets and not missing, f"README.md links to missing files: {missing}"
