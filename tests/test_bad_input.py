"""The bad-input battery: every `dpt-repro` command, in one finished smoke workspace, with each of its inputs
missing, truncated and replaced by garbage, and with each params key set to a value of the wrong type, out of
range, empty and absurd. Every case must end with exit code 2 (1 only for a gate that ran and failed), one
`error:` line on stderr, no traceback, and every finished output byte for byte as it was.

The cases are generated, not listed: the commands and their inputs come from `dvc.lock` (each stage's data
dependencies), the bad values from the params declarations in `config.py` (`param`). A new stage, input or key
is covered without editing this file; docs/reliability.md lists what the battery covers.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import shutil
import typing
from pathlib import Path

import numpy as np
import pytest
import typer.testing
import yaml
from typer.testing import CliRunner

from dpt_repro.cli import app
from dpt_repro.config import Config

runner = CliRunner()
OUTPUT_FOLDERS = ("data", "models", "metrics", "plots", "reports")
MODES = ("missing", "truncated", "garbage")


def finished_outputs(repo: Path) -> dict[str, str]:
    """SHA-256 of every file a stage wrote, and of the files that say what was run."""
    files = [f for top in OUTPUT_FOLDERS for f in (repo / top).rglob("*") if f.is_file()]
    files += [repo / "dvc.lock", repo / "params.yaml"]
    return {str(f.relative_to(repo)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(files)}


def lock_commands(repo: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Each DVC stage's command line (after `dpt-repro`) and the data it reads, from dvc.lock. The gate markers
    (`*.passed`) only order the stages for DVC: no command reads them."""
    stages = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    commands = {}
    for name, stage in stages.items():
        args = stage["cmd"].split()
        assert args[0] == "dpt-repro", stage["cmd"]
        inputs = [d["path"] for d in stage.get("deps", [])
                  if not d["path"].startswith(("src/", "pyproject.toml")) and not d["path"].endswith(".passed")]
        commands[name] = (args[1:], inputs)
    return commands


# Inputs `dvc.yaml` declares for a stage that the stage reads only under other params than the smoke profile's:
# the battery damages them under those params (unread, a damaged input would rightly go unnoticed).
READ_ONLY_WITH = {("stage2", "data/splits/"): ["-S", "stage2.labels=labelled"],
                  ("stage3", "models/stage1/"): ["-S", "stage3.protocol=probe"]}


def read_under(args: list[str], inp: str) -> list[str]:
    extra = [o for (command, prefix), o in READ_ONLY_WITH.items() if args[0] == command and inp.startswith(prefix)]
    return [*args, *(extra[0] if extra else [])]


def invoke(repo: Path, args: list[str]):
    """The real CLI in this process (imports paid once); the package logger rebinds to this run's stderr."""
    logging.getLogger("dpt_repro").handlers.clear()
    return runner.invoke(app, args)


def assert_refused(result, args: list[str], needle: str = "") -> None:
    where = f"dpt-repro {' '.join(args)}"
    assert isinstance(result.exception, SystemExit), f"{where}: {result.exception!r}\n{result.output[-2000:]}"
    assert "Traceback" not in result.output, f"{where}:\n{result.output[-2000:]}"
    gate_ran = result.exit_code == 1 and args[0] == "validate"
    assert result.exit_code == 2 or gate_ran, f"{where}: exit {result.exit_code}\n{result.output[-2000:]}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, f"{where}: stderr\n{result.stderr[-2000:]}"
    assert gate_ran or lines == errors, f"{where}: more than the error line on stderr\n{result.stderr[-2000:]}"
    assert needle in errors[0], f"{where}: {errors[0]!r} does not name {needle!r}"


def damage(path: Path, mode: str, backup: Path) -> None:
    """Move `path` (a file or folder) to `backup` and leave in its place nothing, or every file cut to half, or
    every file replaced by as many random bytes. The original bytes are never written to, so outputs that are
    links into DVC's cache stay intact."""
    shutil.move(str(path), str(backup))
    if mode == "missing":
        return
    rng = np.random.default_rng(0)
    files = [backup] if backup.is_file() else sorted(f for f in backup.rglob("*") if f.is_file())
    for original in files:
        target = path / original.relative_to(backup) if backup.is_dir() else path
        target.parent.mkdir(parents=True, exist_ok=True)
        data = original.read_bytes()
        target.write_bytes(data[:len(data) // 2] if mode == "truncated" else rng.bytes(max(len(data), 64)))


def restore(path: Path, backup: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    shutil.move(str(backup), str(path))


@pytest.fixture(scope="module")
def workspace(smoke_repo, tmp_path_factory, monkeypatch_module):
    repo, _ = smoke_repo
    monkeypatch_module.chdir(repo)
    # typer's CliRunner rebuilds the click command on every call (25 ms): once is enough for 5,000 calls
    monkeypatch_module.setattr(typer.testing, "_get_command", functools.lru_cache(typer.testing._get_command))
    # a failing case that got as far as tracking would log to this store, not the workspace's
    store = tmp_path_factory.mktemp("battery-mlflow") / "mlflow.db"
    monkeypatch_module.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    before = finished_outputs(repo)
    yield repo, before
    assert finished_outputs(repo) == before


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def raw_source_copy(folder: Path) -> Path:
    """The raw Fashion-MNIST files `prepare` reads, copied (the originals belong to a Debian package)."""
    from dpt_repro.data.sources import FASHION_MNIST_DEBIAN

    folder.mkdir()
    for f in FASHION_MNIST_DEBIAN.iterdir():
        shutil.copy(f, folder / f.name)
    return folder


def test_every_command_refuses_each_of_its_inputs_missing_truncated_or_garbage(workspace, tmp_path):
    repo, before = workspace
    commands = lock_commands(repo)
    cases = [(read_under(args, inp), Path(inp), mode) for args, inputs in commands.values() for inp in inputs
             for mode in MODES]
    raw = raw_source_copy(tmp_path / "raw")  # prepare's input: the raw dataset named by base.data_path
    cases += [(["prepare", "-S", f"base.data_path={raw}"], raw, mode) for mode in MODES]
    # every command's first input, its params file; not truncated: a shorter mapping is a valid params file that
    # keeps the default profile's values for the keys it leaves out
    params = tmp_path / "params.yaml"
    shutil.copy(repo / "params.yaml", params)
    cases += [([*args, "--params", str(params)], params, mode) for args, _ in commands.values()
              for mode in ("missing", "garbage")]
    assert {args[0] for args, _, _ in cases} >= {"prepare", "split", "stage1", "pseudo-label", "validate", "stage2",
                                                  "sample", "fid-reference", "stage3", "evaluate"}
    for i, (args, target, mode) in enumerate(cases):
        path = target if target.is_absolute() else repo / target
        backup = tmp_path / f"backup-{i}"
        damage(path, mode, backup)
        try:
            result = invoke(repo, args)
        finally:
            restore(path, backup)
        needle = "missing input" if mode == "missing" and path not in (raw, params) else ""
        assert_refused(result, args, needle)
        assert finished_outputs(repo) == before, f"dpt-repro {' '.join(args)} with {target} {mode} changed outputs"
    print(f"input battery: {len(cases)} cases over {len({a[0] for a, _, _ in cases})} commands")


def bad_values(key: str, tp: type, default, meta: dict) -> list[tuple[str, str]]:
    """(what, raw -S value) a user could type that `key` must refuse, from its declaration."""
    cases = [("empty", "")] if not (tp is str and meta.get("empty")) else []
    if tp is bool:
        return cases + [("wrong type", "5"), ("absurd", "maybe")]
    if typing.get_origin(tp) is tuple:  # a list of names
        return cases + [("wrong type", "5"), ("out of range", "[no-such-value]"), ("empty list", "[]"),
                        ("repeated", f"[{default[0]}, {default[0]}]"), ("absurd", f"[{'x' * 5000}]")]
    if tp is str:
        cases += [("wrong type", "[a, b]"), ("absurd", "x" * 5000)]
        if meta.get("choices"):
            cases.append(("out of range", "no-such-value"))
        return cases
    cases.append(("wrong type", "abc"))
    if meta.get("choices"):
        cases.append(("out of range", str(max(meta["choices"]) + 1)))
    for bound, outside in (("ge", -1), ("gt", 0), ("le", +1), ("lt", 0)):
        if meta.get(bound) is not None:
            value = meta[bound] + outside
            cases.append(("out of range", str(int(value) if tp is int else float(value))))
    assert meta.get("choices") or any(meta.get(b) is not None for b in ("ge", "gt", "le", "lt")), \
        f"{key}: a numeric key declares its range (config.param)"
    cases.append(("absurd", ".nan" if tp is float else "1e30"))
    return cases


def params_cases() -> list[tuple[str, str, str]]:
    """(key, what, raw value) for every key of every params section."""
    cases = []
    for section in dataclasses.fields(Config):
        cls = type(getattr(Config(), section.name))
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{section.name}.{f.name}"
            cases += [(key, what, raw) for what, raw in bad_values(key, hints[f.name], f.default, dict(f.metadata))]
    return cases


def test_every_command_refuses_each_params_key_set_to_a_bad_value(workspace):
    repo, before = workspace
    commands = [args for args, _ in lock_commands(repo).values()]
    cases = params_cases()
    keys = {key for key, _, _ in cases}
    assert len(keys) == sum(len(dataclasses.fields(getattr(Config(), s.name))) for s in dataclasses.fields(Config))
    for key, what, raw in cases:
        for args in commands:
            result = invoke(repo, [*args, "-S", f"{key}={raw}"])
            assert_refused(result, [*args, "-S", f"{key}={raw[:40]}"], key)
    assert finished_outputs(repo) == before
    print(f"params battery: {len(cases)} bad values of {len(keys)} keys x {len(commands)} commands "
          f"= {len(cases) * len(commands)} cases")


def test_profile_and_report_refuse_bad_files_names_and_options(workspace, tmp_path):
    repo, before = workspace
    params = tmp_path / "params.yaml"
    for mode, text in (("garbage", np.random.default_rng(0).bytes(300)), ("not a mapping", b"- a\n- b\n"),
                       ("empty", b""), ("invalid YAML", b"base: [1,\n")):
        params.write_bytes(text)
        args = ["profile", "smoke", "--params", str(params), "-o", str(tmp_path / "out.yaml")]
        assert_refused(invoke(repo, args), args, str(params))
    for args, needle in ((["profile", "no-such-profile", "-o", str(tmp_path / "out.yaml")], "no-such-profile"),
                         (["profile", "smoke", "--params", str(tmp_path / "nope.yaml")], "nope.yaml"),
                         (["report", "--num", "0", "--out", str(tmp_path / "r")], "--num must be at least 1")):
        assert_refused(invoke(repo, args), args, needle)
    assert not (tmp_path / "out.yaml").exists() and not (tmp_path / "r").exists()
    assert finished_outputs(repo) == before


@pytest.mark.parametrize("sets, needle", [
    (["eval.fid_images_per_class=1"], "class_fid: class 0 has 1 generated images, needs at least 2"),
    (["eval.inception_logits_weights=w.npy", f"eval.inception_logits_sha256={'a' * 64}"],
     "eval.inception_score_split is 500, but evaluate has 80 generated images"),
])
def test_evaluate_refuses_generation_metric_sizes_the_sets_cannot_meet(workspace, sets, needle):
    """Checked on the finished smoke pipeline's real outputs, before the test set or the Inception network runs
    (`w.npy` does not exist: the size check comes before the weights are read)."""
    repo, before = workspace
    args = ["evaluate", *(a for s in sets for a in ("-S", s))]
    assert_refused(invoke(repo, args), args, needle)
    assert finished_outputs(repo) == before
