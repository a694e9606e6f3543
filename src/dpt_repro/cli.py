"""The `dpt-repro` command line: one thin command per stage.

Each command loads params.yaml (or `--params FILE`), applies the overrides, and calls `stages.<name>.run`.
Heavy libraries are imported inside the commands so `dpt-repro --help` answers at once. A user mistake
(`UserError`) prints one line and exits with code 2; a failed quality gate exits with code 1.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from dpt_repro import distributed

app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich", add_completion=False,
                  help="Dual Pseudo Training (DPT), reproducible: run one pipeline stage at a time, or all with "
                       "[bold]dvc repro[/bold].")

ParamsOpt = Annotated[Path, typer.Option("--params", help="Params file to read (default: params.yaml).")]
LpcOpt = Annotated[Optional[int], typer.Option("--labels-per-class", help="Override base.labels_per_class.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Override base.seed.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="Override base.device (auto, cpu, cuda).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-S", help="Override any param: section.key=value.")]


def _fail(message: str, code: int) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _run_stage(module: str, params: Path, lpc: int | None, seed: int | None, device: str | None,
               sets: list[str] | None, **kwargs: str) -> None:
    from dpt_repro import tracking
    from dpt_repro.config import load_config
    from dpt_repro.errors import GateFailed, UserError
    from dpt_repro.runtime import configure_logging, timed

    configure_logging()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    overrides = list(sets or [])
    for key, value in (("base.labels_per_class", lpc), ("base.seed", seed), ("base.device", device)):
        if value is not None:
            overrides.append(f"{key}={value}")
    try:
        cfg = load_config(params, overrides)
        if module in distributed.DATA_PARALLEL and cfg.launcher.processes > 1 and not distributed.launched():
            _launch(cfg)
        if distributed.launched():
            from dpt_repro.runtime import setup

            setup(cfg.base)  # every rank joins the process group, even one with no collective work
        with timed("_".join([module, *kwargs.values()]), cfg.run_key), tracking.pipeline_outcome(cfg):
            importlib.import_module(f"dpt_repro.stages.{module}").run(cfg, params, **kwargs)
        distributed.finish()
    except UserError as exc:
        _fail(str(exc), 2)
    except GateFailed as exc:
        _fail(str(exc), 1)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        where = f" {exc.filename}" if exc.filename else ""
        _fail(f"could not write{where}: {exc.strerror or exc} (disk full or file-size limit); free space and "
              "rerun: outputs are renamed into place only when complete, so earlier outputs are intact", 1)


def _launch(cfg) -> None:
    """Run this very command again on `launcher` processes through torchrun, and exit with its status."""
    import subprocess

    n = cfg.launcher
    cmd = distributed.launch_command(n.nproc_per_node, n.nnodes, n.rdzv_endpoint, n.rdzv_id, sys.argv[1:])
    from dpt_repro.runtime import log

    log.info("launching %d processes per node on %d node(s): %s", n.nproc_per_node, n.nnodes, " ".join(cmd))
    raise typer.Exit(subprocess.run(cmd).returncode)


def _stage_command(name: str, module: str, help_text: str) -> None:
    def command(params: ParamsOpt = Path("params.yaml"), labels_per_class: LpcOpt = None, seed: SeedOpt = None,
                device: DeviceOpt = None, set_: SetOpt = None) -> None:
        _run_stage(module, params, labels_per_class, seed, device, set_)

    command.__doc__ = help_text
    app.command(name)(command)


_stage_command("prepare", "prepare", "Import the raw dataset into .npz shards under data/prepared/.")
_stage_command("split", "split", "Draw labelled and validation indices per class with a seed.")
_stage_command("stage1", "stage1", "Train the semi-supervised classifier (stage 1).")
_stage_command("pseudo-label", "pseudo_label", "Pseudo-label every train image with the stage-1 EMA classifier.")


@app.command("validate")
def validate(gate: Annotated[str, typer.Argument(help="prepared, split, pseudo_labels, generated or mix.")],
             params: ParamsOpt = Path("params.yaml"), labels_per_class: LpcOpt = None, seed: SeedOpt = None,
             device: DeviceOpt = None, set_: SetOpt = None) -> None:
    """Run one data-quality gate (Great Expectations); exit 1 with a summary when it fails."""
    _run_stage("validate", params, labels_per_class, seed, device, set_, gate=gate)


_stage_command("stage2", "stage2", "Train the class-conditional diffusion model on the pseudo-labels (stage 2).")
_stage_command("sample", "sample", "Generate pseudo images per class with guided DPM-Solver++.")
_stage_command("fid-reference", "fid_reference", "Compute the real images' Inception features for every generation "
               "metric.")
_stage_command("stage3", "stage3", "Retrain the classifier on real + generated images (stage 3).")
_stage_command("evaluate", "evaluate", "Test top-1 of stages 1 and 3, the DPT gain and the generation metrics "
               "(FID, KID, sFID, IS, precision, recall, class FID, near-copies).")


@app.command("profile")
def profile(name: Annotated[str, typer.Argument(help="A profile in configs/, e.g. smoke.")],
            params: ParamsOpt = Path("params.yaml"),
            output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here instead.")] = None,
            ) -> None:
    """Overlay configs/NAME.yaml on the params file (in place, or to --output), for `dvc repro`."""
    import yaml

    from dpt_repro.config import load_config, profile_params
    from dpt_repro.errors import UserError
    from dpt_repro.io import atomic_path

    try:
        merged = profile_params(params, name)
        target = output or params
        with atomic_path(target) as tmp:
            tmp.write_text(yaml.safe_dump(merged, sort_keys=False))
            load_config(tmp)
    except UserError as exc:
        _fail(str(exc), 2)
    typer.echo(f"wrote {target} with profile {name}")


@app.command("report")
def report(num: Annotated[int, typer.Option("--num", help="Experiments of the last N commits.")] = 1,
           out: Annotated[Path, typer.Option("--out", help="Folder for report.md and its pictures.")] = Path("reports"),
           rows: Annotated[Optional[Path], typer.Option(
               "--rows", help="Rebuild from an earlier report.json's rows instead of dvc exp show.")] = None,
           ) -> None:
    """Collect the experiments (dvc exp show) into reports/report.md: each claim decided over seeds, plots."""
    from dpt_repro.errors import UserError
    from dpt_repro.report import write_report

    if num < 1:
        _fail(f"--num must be at least 1 (the experiments of the last N commits), got {num}", 2)
    try:
        path = write_report(out, num, " ".join(["dpt-repro report", *sys.argv[2:]]), rows)
    except UserError as exc:
        _fail(str(exc), 2)
    typer.echo(f"wrote {path}")


_FROM_CHECKOUT = "DPT_REPRO_FROM_CHECKOUT"


def _run_checkout_source() -> None:
    """Re-run this command on ./src/dpt_repro when the imported package is another copy.

    `dvc exp run --queue` runs each experiment in its own copy of the repository and records that copy's
    `src/` as the stages' code dependency, while an editable install imports the workspace's `src/`: code
    edited during a sweep would run in experiments that record the old code. Re-executing with ./src first on
    the path makes the code that runs the code that DVC hashed. A package found through PYTHONPATH was chosen
    on purpose and is kept.
    """
    local = Path.cwd() / "src" / "dpt_repro"
    if os.environ.get(_FROM_CHECKOUT) or not (local / "__init__.py").is_file():
        return
    imported = Path(__file__).resolve().parent
    chosen = [Path(entry).resolve() for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    if local.resolve() == imported or imported.parent in chosen:
        return
    path = [str(local.parent.resolve()), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), **{_FROM_CHECKOUT: "1"})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "dpt_repro.cli", *sys.argv[1:]], env)


def main() -> None:
    _run_checkout_source()
    app(prog_name="dpt-repro")


if __name__ == "__main__":  # `python -m dpt_repro.cli`, as torchrun starts each process
    main()
