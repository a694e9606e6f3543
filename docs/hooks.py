"""MkDocs hook: the pages show pictures and data files that live under reports/ (written by the commands that
make them), so the site serves them from there instead of keeping a second copy under docs/.

A page links such a file as the repository lays it out (`../reports/report/top1.png` from docs/results.md), which
also works where the Markdown is read on a Git host; the hook adds each linked file to the site at
`reports/...` and rewrites the link to that copy. A link to a file that does not exist is left as it is, so
`mkdocs build --strict` fails on it."""

from __future__ import annotations

import os
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"
LINK = re.compile(r"(\]\s*)\((\.\./[^)\s#]+)\)")


def _linked(page_dir: Path, target: str) -> Path | None:
    """The file under reports/ that a relative link from `page_dir` names, if it exists."""
    path = (page_dir / target).resolve()
    return path if path.is_relative_to(REPORTS) and path.is_file() else None


def on_files(files, config):
    docs = Path(config["docs_dir"])
    wanted = set()
    for page in files.documentation_pages():
        text = Path(page.abs_src_path).read_text(encoding="utf-8")
        here = (docs / page.src_uri).parent
        wanted.update(p for _, target in LINK.findall(text) if (p := _linked(here, target)))
    for path in sorted(wanted):
        files.append(File.generated(config, path.relative_to(ROOT).as_posix(), abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    docs = Path(config["docs_dir"])
    here = (docs / page.file.src_uri).parent

    def served(match: re.Match) -> str:
        path = _linked(here, match[2])
        if path is None:
            return match[0]
        return f"{match[1]}({Path(os.path.relpath(docs / path.relative_to(ROOT), here)).as_posix()})"

    return LINK.sub(served, markdown)
