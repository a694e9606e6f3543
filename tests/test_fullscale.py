"""The full-scale configurations (configs/cifar10.yaml, configs/imagenet256.yaml) on tiny made-up data: they load,
read their data with the real loaders, build their models and take one training step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from dpt_repro.config import load_config, merge_profile, read_params_file
from dpt_repro.data.sources import load_raw
from dpt_repro.diffusion.train import train_diffusion
from dpt_repro.ssl.train import ClassifierData, train_classifier

ROOT = Path(__file__).resolve().parents[1]


def profile(name: str, tmp_path: Path, overrides=()):
    import yaml

    merged = merge_profile(read_params_file(ROOT / "params.yaml"), read_params_file(ROOT / "configs" / f"{name}.yaml"))
    path = tmp_path / f"params-{name}.yaml"
    path.write_text(yaml.safe_dump(merged))
    return load_config(path, overrides)


def test_cifar10_profile_reads_cifar_files_and_trains_wrn_and_the_ddpm_unet_one_step(tmp_path, cifar10_files):
    cfg = profile("cifar10", tmp_path, [f"base.data_path={cifar10_files}"])
    assert (cfg.launcher.processes, cfg.sample.images_per_class * cfg.base.num_classes) == (8, 50000)
    assert (cfg.eval.fid_ref_images, cfg.eval.fid_resize, cfg.stage3.generated_per_class) == \
        (50000, "legacy_tensorflow", 1000)
    raw = load_raw(cfg.base, cfg.prepare)
    assert raw.train_images.shape == (50, 32, 32, 3)

    x, y = raw.train_images, raw.train_labels
    data = ClassifierData(x[:10], y[:10], x[10:], raw.test_images, raw.test_labels)
    c1 = dataclasses.replace(cfg.stage1, steps=1, batch_size=10, mu=1, eval_every=1)
    result = train_classifier(c1, data, num_classes=10, seed=0, stream=1, device=torch.device("cpu"))
    assert result.best_step == 0 and np.isfinite(result.curve[0]["loss"])
    assert sum(v.numel() for k, v in result.state_dict.items() if "running" not in k and "num_batches" not in k) \
        == pytest.approx(1.47e6, rel=0.02)  # WRN-28-2

    c2 = dataclasses.replace(cfg.stage2, steps=1, batch_size=2, warmup_steps=1, compile=False)
    out = train_diffusion(c2, x[:4], y[:4], num_classes=10, seed=0, device=torch.device("cpu"))
    assert np.isfinite(out.curve[0]["loss"])
    assert sum(p.numel() for p in out.unet.parameters()) == pytest.approx(35.7e6, rel=0.01)  # DDPM CIFAR-10 UNet


@pytest.fixture
def imagenet_tree(tmp_path):
    """A tiny tree in ImageNet's layout (train/ and val/, one folder per WordNet id, JPEG files)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "imagenet"
    for split, n in (("train", 6), ("val", 2)):
        for c, wnid in enumerate(("n01440764", "n01443537")):
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                img = (rng.integers(0, 60, (80, 96, 3)) + 150 * c).astype(np.uint8)
                Image.fromarray(img).save(root / split / wnid / f"{wnid}_{i}.JPEG")
    return root


@pytest.fixture
def tiny_autoencoder(tmp_path):
    """A randomly initialised AutoencoderKL with SD's shape rules (4 levels: 8x downsampling, 4 latent channels),
    saved as a diffusers folder: what stage2.autoencoder points at."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 32, 32),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, norm_num_groups=32, scaling_factor=0.18215)
    vae.save_pretrained(tmp_path / "vae")
    return tmp_path / "vae"


def test_imagenet256_profile_reads_an_imagenet_tree_probes_a_pretrained_encoder_and_trains_latent_diffusion(
        tmp_path, imagenet_tree, tiny_autoencoder):
    import timm
    from safetensors.torch import save_file

    from dpt_repro.diffusion.latent import decoder, encode, load_autoencoder
    from dpt_repro.diffusion.sample import guided_sample
    from dpt_repro.diffusion.train import make_scheduler
    from dpt_repro.ssl.probe import fit_probe
    from dpt_repro.ssl.train import build_classifier

    # "Pretrained" weights of a small ViT (DeiT-Ti: ImageNet mean and std) in a local file, as a user would pass
    # MSN or DINO weights.
    weights = tmp_path / "vit.safetensors"
    reference = timm.create_model("deit_tiny_patch16_224", num_classes=0)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    cfg = profile("imagenet256", tmp_path, [f"base.data_path={imagenet_tree}", "base.num_classes=2",
                                            "base.image_size=64", f"stage2.autoencoder={tiny_autoencoder}",
                                            "stage1.backbone=timm:deit_tiny_patch16_224", "stage1.pretrained=false",
                                            f"stage1.weights={weights}"])
    assert (cfg.stage1.algorithm, cfg.stage3.protocol, cfg.sample.images_per_class) == ("probe", "probe", 128)
    assert (cfg.eval.fid_images_per_class, cfg.stage2.profile) == (50, "latent32")
    raw = load_raw(cfg.base, cfg.prepare)
    assert raw.train_images.shape == (12, 64, 64, 3) and raw.test_images.shape == (4, 64, 64, 3)

    # Stage 1: the encoder carries the file's weights; the probe fits a head on its frozen features.
    encoder = build_classifier(cfg.stage1, 3, 2, 64)
    assert torch.equal(encoder.net.blocks[0].attn.qkv.weight, reference.blocks[0].attn.qkv.weight)
    assert encoder.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])  # timm's pretrained_cfg
    x, y = raw.train_images, raw.train_labels
    data = ClassifierData(x[::2], y[::2], x[:0], x[1::2], y[1::2])
    state, record = fit_probe(encoder, data, 2, cfg.stage1.eval_batch_size, torch.device("cpu"))
    assert record["fitted_on"] == 6 and 0.0 <= record["val_acc"] <= 1.0
    assert torch.equal(state["net.blocks.0.attn.qkv.weight"], reference.blocks[0].attn.qkv.weight)  # frozen
    full = build_classifier(dataclasses.replace(cfg.stage1, backbone="timm:vit_base_patch16_224.dino",
                                                pretrained=False, weights=""), 3, 1000, 256)
    assert sum(p.numel() for p in full.parameters()) == pytest.approx(86.6e6, rel=0.01)  # the config's ViT-B/16

    # Stage 2: 64x64 images -> 8x8x4 latents through the autoencoder, one step of the latent UNet, then a
    # guided sample decoded back to an image.
    vae = load_autoencoder(cfg.stage2.autoencoder, torch.device("cpu"))
    latents = encode(vae, x, 4, torch.device("cpu"))
    assert latents.shape == (12, 8, 8, 4) and latents.dtype == np.float32
    c2 = dataclasses.replace(cfg.stage2, steps=1, batch_size=2, warmup_steps=1, compile=False)
    out = train_diffusion(c2, latents, y, num_classes=2, seed=0, device=torch.device("cpu"))
    assert np.isfinite(out.curve[0]["loss"]) and out.unet.config.in_channels == 4
    assert sum(p.numel() for p in out.unet.parameters()) == pytest.approx(172e6, rel=0.01)
    images = guided_sample(out.ema_unet, dict(make_scheduler(c2).config), torch.tensor([0, 1]), [1, 2],
                           guidance_scale=cfg.sample.guidance_scale, steps=2, null_class=2,
                           device=torch.device("cpu"), decode=decoder(vae))
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8


def test_missing_pretrained_weights_say_what_to_download(tmp_path):
    from dpt_repro.diffusion.latent import load_autoencoder
    from dpt_repro.errors import UserError
    from dpt_repro.ssl.train import build_classifier

    cfg = profile("imagenet256", tmp_path)
    with pytest.raises(UserError, match="huggingface-cli download timm/vit_base_patch16_224.dino"):
        build_classifier(cfg.stage1, 3, 1000, 256)
    with pytest.raises(UserError, match="huggingface-cli download stabilityai/sd-vae-ft-ema"):
        load_autoencoder(cfg.stage2.autoencoder, torch.device("cpu"))
    with pytest.raises(UserError, match="not found at '/nonexistent.safetensors'"):
        build_classifier(dataclasses.replace(cfg.stage1, weights="/nonexistent.safetensors"), 3, 1000, 256)


def test_imagenet_stage1_probe_runs_through_the_cli_and_pseudo_labels(tmp_path, imagenet_tree):
    """prepare -> split -> stage1 (frozen encoder + probe) -> pseudo-label, as `dvc repro` runs them."""
    import json
    import subprocess
    import sys

    import timm
    import yaml
    from safetensors.torch import save_file

    weights = tmp_path / "deit.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("deit_tiny_patch16_224", num_classes=0)
               .state_dict().items()}, str(weights))
    merged = merge_profile(read_params_file(ROOT / "params.yaml"), read_params_file(ROOT / "configs" / "imagenet256.yaml"))
    merged["base"].update(data_path=str(imagenet_tree), num_classes=2, image_size=64, val_per_class=2)
    merged["stage1"].update(backbone="timm:deit_tiny_patch16_224", pretrained=False, weights=str(weights))
    merged["launcher"]["nproc_per_node"] = 1
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(merged))
    for stage in ("prepare", "split", "stage1", "pseudo-label"):
        result = subprocess.run([sys.executable, "-m", "dpt_repro.cli", stage], cwd=work, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, (stage, result.stderr[-3000:])
    conf = json.loads((work / "models/stage1/lpc1-seed0/config.json").read_text())
    assert conf["protocol"] == "probe" and conf["labelled_images"] == 2 and conf["l2"] in (1e-4, 1e-3, 1e-2, 1e-1)
    pseudo = json.loads((work / "metrics/pseudo_label.json").read_text())
    assert sum(pseudo["class_counts"]) == 12  # every train image, through the probed encoder
