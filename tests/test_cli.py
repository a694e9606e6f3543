import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dpt_repro.cli import app

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["prepare", "split", "stage1", "pseudo-label", "validate", "stage2", "sample", "fid-reference", "stage3",
          "evaluate"]
runner = CliRunner()


def test_help_lists_every_stage_without_importing_heavy_libraries():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for stage in STAGES:
        assert stage in result.output
    code = ("import sys, dpt_repro.cli; heavy = {'torch', 'mlflow', 'great_expectations', 'diffusers', 'dvc'};"
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_checkout_runs_its_own_source_not_the_installed_copy(tmp_path):
    """As in a queued DVC experiment: the command runs in a copy of the repository whose src/ DVC hashed."""
    package = tmp_path / "src" / "dpt_repro"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "cli.py").write_text("import sys\nprint('checkout copy', sys.argv[1:])\n")
    out = subprocess.run([sys.executable, "-m", "dpt_repro.cli", "report", "--out", "x"], cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "checkout copy ['report', '--out', 'x']"
    chosen = subprocess.run([sys.executable, "-m", "dpt_repro.cli", "--help"], cwd=tmp_path, capture_output=True,
                            text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert "fid-reference" in chosen.stdout  # a package chosen through PYTHONPATH is kept
    installed = subprocess.run([sys.executable, "-m", "dpt_repro.cli", "--help"], cwd=ROOT, capture_output=True,
                               text=True, check=True)
    assert "fid-reference" in installed.stdout  # the installed checkout itself: no re-run, the real CLI answers


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def one_error_line(result):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("args, needle", [
    (["split", "--labels-per-class", "0"], "base.labels_per_class must be at least 1, got 0"),
    (["split", "--labels-per-class", "-2"], "got -2"),
    (["prepare", "-S", "base.dataset=cifar100"], "base.dataset: unknown 'cifar100'"),
    (["stage1", "--params", "missing.yaml"], "params file not found: missing.yaml"),
    (["stage2", "--labels-per-class", "1"], "missing input"),
    (["sample"], "missing input: stage-2 generator (models/stage2/lpc1-seed0); run `dpt-repro stage2 "
                 "--labels-per-class 1 --seed 0` first"),
    (["stage1", "--labels-per-class", "2"], "missing input: prepared data (data/prepared/fashion-mnist); run "
                                            "`dpt-repro prepare` first"),
    (["stage1", "-S", "stage1.lr=3e-4", "-S", "stage1.lr=-3e-4"], "stage1.lr must be positive, got -0.0003"),
    (["evaluate"], "missing input"),
    (["validate", "bogus"], "unknown gate 'bogus' (valid: prepared, split, pseudo_labels, generated, mix)"),
    (["validate", "pseudo_labels"], "missing input: pseudo-labels"),
])
def test_user_mistakes_give_one_line_and_exit_code_2(workdir, args, needle):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert needle in one_error_line(result)
    assert not (workdir / "models").exists() and not (workdir / "data" / "generated").exists()


@pytest.fixture
def tiny_prepared(workdir):
    """A prepared dataset of 4 images per class (an .npz source); returns the options that select it."""
    images = np.zeros((40, 28, 28, 1), np.uint8)
    labels = np.repeat(np.arange(10), 4)
    np.savez(workdir / "tiny.npz", images=images, labels=labels, test_images=images, test_labels=labels)
    common = ["-S", "base.dataset=npz", "-S", "base.data_path=tiny.npz", "-S", "base.val_per_class=1"]
    assert runner.invoke(app, ["prepare", *common]).exit_code == 0
    return common


def test_a_stage1_batch_larger_than_the_labelled_set_is_refused_first_with_the_value_to_use(workdir):
    result = runner.invoke(app, ["stage1", "-S", "base.num_classes=5"])  # no data here: refused before reading any
    assert result.exit_code == 2
    assert one_error_line(result) == (
        "error: stage1.batch_size 10 is larger than the labelled set (base.labels_per_class 1 x base.num_classes 5 "
        "= 5 images): use stage1.batch_size: 5 (with stage1.mu: 14 for an unlabelled batch of 70, about the 70 of "
        "now), or more labels per class")
    missing = runner.invoke(app, ["stage1", "-S", "base.num_classes=5", "-S", "base.labels_per_class=2"])
    assert "missing input" in one_error_line(missing)  # 10 labelled images: the batch fits, the data is missing


def test_labels_above_what_a_class_has_is_refused(workdir, tiny_prepared):
    result = runner.invoke(app, ["split", "--labels-per-class", "4", *tiny_prepared])
    assert result.exit_code == 2
    assert "labels_per_class 4 plus base.val_per_class 1 is above what class 0 has (4 images)" in one_error_line(result)
    assert not (workdir / "data" / "splits").exists()


def test_a_stage_before_the_split_of_its_labels_per_class_names_the_split_and_the_command(tiny_prepared):
    result = runner.invoke(app, ["stage1", "--labels-per-class", "2", "-S", "stage1.lr=3e-4", *tiny_prepared])
    assert result.exit_code == 2
    assert one_error_line(result) == ("error: missing input: split (data/splits/lpc2-seed0/split.json); run "
                                      "`dpt-repro split --labels-per-class 2 --seed 0` first")


def test_an_empty_params_file_is_refused_not_run_on_defaults(workdir):
    (workdir / "empty.yaml").write_text("")
    result = runner.invoke(app, ["split", "--params", "empty.yaml"])
    assert result.exit_code == 2
    assert "params file empty.yaml is empty" in one_error_line(result)
    assert not (workdir / "data").exists()


def test_malformed_params_file(workdir):
    (workdir / "params.yaml").write_text("base:\n  seed: [1,\n")
    result = runner.invoke(app, ["split"])
    assert result.exit_code == 2
    assert "not valid YAML" in one_error_line(result)


def test_profile_overlays_params(workdir):
    (workdir / "configs").mkdir()
    (workdir / "configs" / "quick.yaml").write_text("stage1:\n  steps: 7\n")
    result = runner.invoke(app, ["profile", "quick", "-o", "params-quick.yaml"])
    assert result.exit_code == 0, result.output
    from dpt_repro.config import load_config

    assert load_config(workdir / "params-quick.yaml").stage1.steps == 7
    assert load_config(workdir / "params.yaml").stage1.steps != 7


def test_a_corrupt_pseudo_label_table_is_reported(workdir):
    table = workdir / "data" / "pseudo_labels" / "lpc1-seed0" / "pseudo_labels.parquet"
    table.parent.mkdir(parents=True)
    table.write_bytes(b"PAR1 truncated")
    split = workdir / "data" / "splits" / "lpc1-seed0" / "split.json"  # the gate's other input: present
    split.parent.mkdir(parents=True)
    split.write_text("{}")
    result = runner.invoke(app, ["validate", "pseudo_labels"])
    assert result.exit_code == 2
    assert "corrupt input: pseudo-labels" in one_error_line(result)


def test_log_lines_go_to_the_stderr_of_the_moment_after_an_earlier_one_is_closed(monkeypatch):
    import io

    from dpt_repro import runtime

    monkeypatch.setattr(runtime.log, "handlers", [])
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    runtime.configure_logging()
    runtime.log.info("first command")
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    runtime.configure_logging()
    runtime.log.info("second command")
    assert "second command" in second.getvalue() and "Logging error" not in second.getvalue()
