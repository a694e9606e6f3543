"""The data-parallel helpers and the launcher settings (the two-process pipeline run is in test_pipeline.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dpt_repro import distributed
from dpt_repro.config import load_config
from dpt_repro.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("n", [0, 1, 7, 10, 1001])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_cover_every_item_once_in_rank_order(monkeypatch, n, world):
    parts = []
    for r in range(world):
        monkeypatch.setenv("RANK", str(r))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        parts += list(range(n))[distributed.shard(n)]
    assert parts == list(range(n))


def test_the_launch_command_is_torchrun_standalone_on_one_node_and_c10d_across_nodes():
    one = distributed.launch_command(2, 1, "", "dpt", ["stage2", "--seed", "1"])
    assert one[1:4] == ["-m", "torch.distributed.run", "--nproc-per-node=2"] and "--standalone" in one
    assert one[-5:] == ["-m", "dpt_repro.cli", "stage2", "--seed", "1"]
    many = distributed.launch_command(8, 4, "node0:29400", "job7", ["stage2"])
    assert "--standalone" not in many
    assert {"--nnodes=4", "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29400", "--rdzv-id=job7"} <= set(many)


@pytest.mark.parametrize("overrides, message", [
    (["launcher.nproc_per_node=3"], r"stage1.batch_size 10 must be divisible by 3 \(the launcher's 3 processes\)"),
    (["launcher.nproc_per_node=2", "stage2.grad_accum=3"],
     r"stage2.batch_size 64 must be divisible by 6 \(the launcher's 2 processes x stage2.grad_accum\)"),
    (["launcher.nnodes=2"], r"launcher.rdzv_endpoint must be host:port of the first node"),
    (["launcher.nproc_per_node=0"], r"launcher.nproc_per_node must be in \[1, 4096\], got 0"),
])
def test_launcher_settings_that_cannot_split_the_batches_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(ROOT / "params.yaml", overrides)


def test_a_bad_launcher_setting_stops_the_cli_before_launching(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dpt_repro.cli", "stage1", "--params", str(ROOT / "params.yaml"),
                             "-S", "launcher.nproc_per_node=3"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert "stage1.batch_size 10 must be divisible by 3" in result.stderr and "Traceback" not in result.stderr


def test_collectives_on_two_gloo_ranks(tmp_path):
    """gather, broadcast and all_mean between two real processes started by torchrun."""
    script = tmp_path / "collectives.py"
    script.write_text(textwrap.dedent("""
        import json, os, sys
        import numpy as np, torch
        from dpt_repro import distributed
        distributed.init("cpu")
        r = distributed.rank()
        part = np.arange(10)[distributed.shard(10)]
        out = {"gathered": distributed.gather(part * 10).tolist(),
               "broadcast": distributed.broadcast({"from": r}),
               "mean": distributed.all_mean(torch.tensor([float(r), 2.0 * r])).tolist()}
        with open(os.path.join(sys.argv[1], f"rank{r}.json"), "w") as fh:
            json.dump(out, fh)
        distributed.finish()
    """))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", str(script),
           str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for r in (0, 1):
        out = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert out["gathered"] == [i * 10 for i in range(10)]
        assert out["broadcast"] == {"from": 0}
        assert out["mean"] == [0.5, 1.0]
