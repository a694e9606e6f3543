import os
import time

import numpy as np
import pytest
import torch

from dpt_repro.errors import UserError
from dpt_repro.io import atomic_dir, atomic_path, load_checkpoint, read_npz, save_checkpoint, write_json, write_npz


def test_atomic_path_leaves_nothing_on_error_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text().strip().startswith("{") and '"v": 1' in target.read_text()
    assert os.listdir(tmp_path) == ["out.json"]


def test_atomic_dir_swaps_only_on_success(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError
    assert (target / "a").read_text() == "1"
    assert sorted(os.listdir(tmp_path)) == ["model"]


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/dpt-repro-pwned",))


def test_a_pickle_carrying_code_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(UserError, match="corrupt or unsafe"):
        load_checkpoint(path)
    assert not os.path.exists("/tmp/dpt-repro-pwned")


def test_checkpoint_roundtrip_and_truncated_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"w": torch.ones(3), "step": 4, "curve": [{"loss": 0.5}]})
    state = load_checkpoint(path)
    assert state["step"] == 4 and torch.equal(state["w"], torch.ones(3))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(path)


def test_corrupt_npz_is_reported(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="corrupt input"):
        read_npz(path, "shard")


def test_npz_shards_are_byte_deterministic_and_readable(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28, 1)
    write_npz(tmp_path / "a.npz", images=images, labels=np.array([3, 4]))
    time.sleep(2.1)  # zip timestamps have a 2-second resolution
    write_npz(tmp_path / "b.npz", images=images, labels=np.array([3, 4]))
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    data = read_npz(tmp_path / "a.npz", "shard")
    assert np.array_equal(data["images"], images) and data["labels"].tolist() == [3, 4]
