"""reports/ holds only what a command makes: a README in every folder, raw grid rows folded into CSVs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLD = ROOT / "analysis" / "fold_grid_rows.py"


def test_every_reports_folder_has_a_readme_naming_a_command():
    tracked = subprocess.run(["git", "ls-files", "reports"], cwd=ROOT, capture_output=True, text=True, check=True)
    folders = {Path(p).parent for p in tracked.stdout.split()} | {Path("reports")}
    for folder in sorted(folders):
        readme = ROOT / folder / "README.md"
        assert readme.is_file(), f"{folder}/ has no README.md naming the command that wrote it"
        text = readme.read_text()
        assert any(word in text for word in ("dpt-repro ", "python ", "bash ", "dvc ")), readme


def grid_file(path: Path, rows: list[dict], table: str | None = None) -> Path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from stage1_grid import summary_table
    finally:
        sys.path.pop(0)
    path.write_text(json.dumps({"command": "benchmarks/stage1_grid.py --lpc 4", "hardware": "x86_64 CPU, 1 threads",
                                "rows": rows, "table": table if table is not None else summary_table(rows)}))
    return path


def row(seed: int, top1: float) -> dict:
    return {"profile": "long", "algorithm": "freematch", "labels_per_class": 4, "seed": seed, "test_top1": top1,
            "val_acc": 0.7283333333333334, "steps": 4000, "batch_size": 10, "mu": 14, "seconds": 1601.3,
            "images_per_second": 726.3}


def fold(*args: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(FOLD), *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def test_fold_keeps_every_value_and_replaces_a_refolded_file(tmp_path):
    from importlib.util import module_from_spec, spec_from_file_location

    a = grid_file(tmp_path / "a.json", [row(0, 0.7205), row(1, 0.1 + 0.2)])
    b = grid_file(tmp_path / "b.json", [row(2, 0.6842)])
    out = tmp_path / "study.csv"
    assert fold(out, a).returncode == 0
    result = fold(out, b, a)
    assert result.returncode == 0, result.stderr
    spec = spec_from_file_location("fold_grid_rows", FOLD)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    back = module.read_csv(out)
    assert set(back) == {"a", "b"}
    assert back["a"]["rows"] == json.loads(a.read_text())["rows"]  # 0.30000000000000004 survives the CSV
    assert back["b"]["command"] == "benchmarks/stage1_grid.py --lpc 4"
    assert len(out.read_text().splitlines()) == 1 + 3  # a refolded file replaces its rows


def test_fold_refuses_a_file_whose_table_does_not_follow_from_its_rows(tmp_path):
    bad = grid_file(tmp_path / "bad.json", [row(0, 0.7205)], table="| edited by hand |")
    result = fold(tmp_path / "study.csv", bad)
    assert result.returncode != 0 and "does not follow from its rows" in result.stderr
    assert not (tmp_path / "study.csv").exists()
