"""Fold the JSON files of `benchmarks/stage1_grid.py` into one CSV per study, losing nothing.

Each JSON file holds the command, the hardware, the raw rows and a Markdown summary of them. The CSV gets one line
per raw row with the file's name (its stem), command and hardware beside it. The summary is not stored: it is
`stage1_grid.summary_table` of the rows, and this script refuses to fold a file whose summary it cannot regenerate
from the rows, and checks that the CSV read back gives every file's values exactly. Rows of a file already in the
CSV are replaced, so a study grows by folding its new files in:

    python analysis/fold_grid_rows.py reports/stage1-cpu/long-profile.csv /tmp/grid/new-run.json ...

The JSON files are left in place; delete them once the CSV is committed.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import sys
from pathlib import Path

from dpt_repro.io import atomic_path

ROW_KEYS = ("profile", "algorithm", "labels_per_class", "seed", "test_top1", "val_acc", "steps", "batch_size", "mu",
            "seconds", "images_per_second")
COLUMNS = ("file", *ROW_KEYS, "command", "hardware")
INTS = {"labels_per_class", "seed", "steps", "batch_size", "mu"}
FLOATS = {"test_top1", "val_acc", "seconds", "images_per_second"}


def _summary_table():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "stage1_grid.py"
    spec = importlib.util.spec_from_file_location("stage1_grid", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.summary_table


def _typed(key: str, text: str):
    return int(text) if key in INTS else float(text) if key in FLOATS else text


def read_csv(path: Path) -> dict[str, dict]:
    """file stem -> {"command", "hardware", "rows"} as the JSON file held them."""
    files: dict[str, dict] = {}
    if not path.is_file():
        return files
    for line in csv.DictReader(io.StringIO(path.read_text())):
        entry = files.setdefault(line["file"], {"command": line["command"], "hardware": line["hardware"], "rows": []})
        entry["rows"].append({k: _typed(k, line[k]) for k in ROW_KEYS})
    return files


def fold(out: Path, sources: list[Path]) -> int:
    summary_table = _summary_table()
    files = read_csv(out)
    for source in sources:
        data = json.loads(source.read_text())
        if set(data) != {"command", "hardware", "rows", "table"} or any(set(r) != set(ROW_KEYS) for r in data["rows"]):
            raise SystemExit(f"{source}: not a stage1_grid.py result (keys {sorted(data)})")
        if summary_table(data["rows"]) != data["table"]:
            raise SystemExit(f"{source}: its table does not follow from its rows; not folded")
        files[source.stem] = {k: data[k] for k in ("command", "hardware", "rows")}
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    for stem in sorted(files):
        for row in files[stem]["rows"]:
            writer.writerow({"file": stem, **row, "command": files[stem]["command"],
                             "hardware": files[stem]["hardware"]})
    with atomic_path(out) as tmp:
        tmp.write_text(text.getvalue())
    back = read_csv(out)
    for source in sources:
        data = json.loads(source.read_text())
        if back[source.stem] != {k: data[k] for k in ("command", "hardware", "rows")}:
            raise SystemExit(f"{source}: the CSV does not give its values back exactly")
    print(f"{out}: {sum(len(f['rows']) for f in back.values())} rows from {len(back)} files")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the study's CSV (created or updated)")
    ap.add_argument("sources", type=Path, nargs="+", help="stage1_grid.py JSON files")
    args = ap.parse_args()
    return fold(args.out, args.sources)


if __name__ == "__main__":
    sys.exit(main())
