from dataclasses import replace

import numpy as np
import pytest
import torch

from dpt_repro.config import DiffusionConfig
from dpt_repro.diffusion.sample import class_plan, guided_sample, image_seed
from dpt_repro.diffusion import train
from dpt_repro.diffusion.train import ema_unet_from_checkpoint, train_diffusion
from dpt_repro.diffusion.unet import build_unet
from dpt_repro.errors import UserError
from dpt_repro.runtime import cpu_has_native_bf16, cpu_model, hardware

CPU = torch.device("cpu")


def tiny_cfg(**kw):
    return DiffusionConfig(steps=6, batch_size=8, warmup_steps=2, checkpoint_every=3, **kw)


def test_seeds_are_distinct_per_class_and_index_and_stable():
    labels, index, seeds = class_plan(10, 50, base_seed=0)
    assert len(set(seeds.tolist())) == 500
    assert seeds[0] == image_seed(0, 0, 0) and seeds[57] == image_seed(0, 1, 7)
    assert image_seed(1, 0, 0) != image_seed(0, 0, 0)


def test_unknown_profile_and_bad_sizes_are_refused():
    with pytest.raises(UserError, match="unknown UNet profile 'huge'"):
        build_unet("huge", 28, 1, 10)
    with pytest.raises(UserError, match="divisible by 8"):
        build_unet("ddpm-cifar10", 28, 1, 10)


def test_sampler_shape_determinism_and_guidance(toy_images):
    torch.manual_seed(0)
    unet = build_unet("small28", 28, 1, 10).eval()
    from dpt_repro.diffusion.train import make_scheduler

    sched = dict(make_scheduler(DiffusionConfig()).config)
    labels = torch.tensor([0, 1, 2, 3])
    seeds = [image_seed(0, c, 0) for c in range(4)]
    kw = dict(steps=3, null_class=10, device=CPU)
    a = guided_sample(unet, sched, labels, seeds, guidance_scale=2.0, **kw)
    b = guided_sample(unet, sched, labels, seeds, guidance_scale=2.0, **kw)
    assert a.shape == (4, 28, 28, 1) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    alone = guided_sample(unet, sched, labels[2:3], seeds[2:3], guidance_scale=2.0, **kw)
    assert np.abs(alone[0].astype(int) - a[2].astype(int)).max() <= 1  # regenerated alone
    other = guided_sample(unet, sched, labels, [s + 1 for s in seeds], guidance_scale=2.0, **kw)
    assert not np.array_equal(a, other)
    with pytest.raises(UserError, match="guidance_scale must be at least 0"):
        guided_sample(unet, sched, labels, seeds, guidance_scale=-1.0, **kw)


def test_no_guidance_and_unconditional_sampling_run_one_pass_with_the_same_images():
    """w = 1 (conditional) and w = 0 (unconditional) skip the other pass; their images are those of the two-pass
    formula at a scale next to them."""
    torch.manual_seed(0)
    unet = build_unet("small28", 28, 1, 10).eval()
    batches = []
    unet.register_forward_pre_hook(lambda module, args: batches.append(len(args[0])))
    sched = dict(train.make_scheduler(DiffusionConfig()).config)
    labels, seeds = torch.tensor([0, 1, 2]), [image_seed(0, c, 0) for c in range(3)]
    kw = dict(steps=3, null_class=10, device=CPU)
    for w in (1.0, 0.0):
        batches.clear()
        one = guided_sample(unet, sched, labels, seeds, guidance_scale=w, **kw)
        assert batches == [3, 3, 3]
        two = guided_sample(unet, sched, labels, seeds, guidance_scale=w + 1e-6, **kw)
        assert batches[3:] == [6, 6, 6]
        assert np.abs(one.astype(int) - two.astype(int)).max() <= 1
    conditional = guided_sample(unet, sched, labels, seeds, guidance_scale=1.0, **kw)
    assert not np.array_equal(conditional, guided_sample(unet, sched, labels, seeds, guidance_scale=0.0, **kw))


def test_bf16_autocast_runs_only_where_the_hardware_computes_bf16(monkeypatch):
    def matmul_dtype(mixed_precision: str) -> torch.dtype:
        with train.autocast(CPU, mixed_precision):
            return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype

    assert train.precision(torch.device("cuda"), "bf16") == "bf16"
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)  # emulated bf16 is slower than fp32
    assert train.precision(CPU, "bf16") == "fp32" and matmul_dtype("bf16") == torch.float32
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)
    assert train.precision(CPU, "bf16") == "bf16" and matmul_dtype("bf16") == torch.bfloat16
    assert train.precision(CPU, "no") == "fp32" and matmul_dtype("no") == torch.float32


def test_hardware_names_the_cpu_model_and_whether_it_computes_bf16():
    text = hardware(CPU)
    assert text.endswith(f"{torch.get_num_threads()} threads")
    assert ("native bf16" in text) == cpu_has_native_bf16()
    assert not cpu_model() or text.startswith(cpu_model())


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_bf16_sampling_on_this_cpu_is_deterministic_and_regenerates_an_image_alone():
    torch.manual_seed(0)
    unet = build_unet("small28", 28, 1, 10).eval()
    sched = dict(train.make_scheduler(DiffusionConfig()).config)
    labels = torch.tensor([0, 1, 2, 3])
    seeds = [image_seed(0, c, 0) for c in range(4)]
    kw = dict(steps=3, null_class=10, device=CPU, guidance_scale=1.5)
    a = guided_sample(unet, sched, labels, seeds, mixed_precision="bf16", **kw)
    assert np.array_equal(a, guided_sample(unet, sched, labels, seeds, mixed_precision="bf16", **kw))
    alone = guided_sample(unet, sched, labels[1:2], seeds[1:2], mixed_precision="bf16", **kw)
    assert np.abs(alone[0].astype(int) - a[1].astype(int)).max() <= 1
    assert not np.array_equal(a, guided_sample(unet, sched, labels, seeds, mixed_precision="no", **kw))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_a_killed_diffusion_run_resumes_to_the_same_weights(toy_images, tmp_path, prediction_type):
    images, labels = toy_images
    cfg = tiny_cfg(prediction_type=prediction_type)
    full = train_diffusion(cfg, images, labels, num_classes=10, seed=0, device=CPU)
    ckpt = tmp_path / "ckpt.pt"

    def die(step, row):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_diffusion(cfg, images, labels, num_classes=10, seed=0, device=CPU, checkpoint=ckpt, on_log=die)
    resumed = train_diffusion(cfg, images, labels, num_classes=10, seed=0, device=CPU, checkpoint=ckpt)
    assert resumed.resumed_from == 3
    assert 0 < resumed.images_per_second < float("inf")
    for (k, v), (_, w) in zip(full.ema_unet.state_dict().items(), resumed.ema_unet.state_dict().items()):
        assert torch.equal(v, w), k
    assert np.isfinite(full.curve[-1]["loss"])


def test_the_ema_weights_of_a_checkpoint_are_those_of_a_run_that_stopped_there(toy_images, tmp_path):
    images, labels = toy_images
    cfg = tiny_cfg()
    ckpt = tmp_path / "ckpt.pt"
    train_diffusion(cfg, images, labels, num_classes=10, seed=0, device=CPU, checkpoint=ckpt)
    unet, step = ema_unet_from_checkpoint(ckpt, cfg, images.shape[1:], 10)
    assert step == 3 and not unet.training
    short = train_diffusion(replace(cfg, steps=step), images, labels, num_classes=10, seed=0, device=CPU)
    longer = train_diffusion(cfg, images, labels, num_classes=10, seed=0, device=CPU)
    for (k, v), (_, w), (_, x) in zip(unet.state_dict().items(), short.ema_unet.state_dict().items(),
                                      longer.ema_unet.state_dict().items()):
        assert torch.equal(v, w), k
    assert any(not torch.equal(v, x) for v, x in zip(unet.state_dict().values(), longer.ema_unet.state_dict().values()))


def test_default_schedule_and_prediction_keep_samples_in_range():
    """Epsilon prediction under the cosine schedule divides by sqrt(alpha_bar_T) ~ 5e-5 at the first solver step
    and saturates every pixel; the default (v prediction) must not."""
    from dpt_repro.diffusion.train import make_scheduler

    torch.manual_seed(0)
    unet = build_unet("small28", 28, 1, 10).eval()
    seeds = [image_seed(0, 0, i) for i in range(8)]

    def saturated(cfg):
        images = guided_sample(unet, dict(make_scheduler(cfg).config), torch.zeros(8, dtype=torch.long), seeds,
                               guidance_scale=1.0, steps=5, null_class=10, device=CPU)
        return float(np.mean((images == 0) | (images == 255)))

    assert saturated(DiffusionConfig()) < 0.5
    assert saturated(DiffusionConfig(prediction_type="epsilon")) > 0.9


def test_a_checkpoint_of_another_configuration_is_refused_and_left_in_place(toy_images, tmp_path):
    images, labels = toy_images
    ckpt = tmp_path / "ckpt.pt"

    def die(step, row):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_diffusion(tiny_cfg(), images, labels, num_classes=10, seed=0, device=CPU, checkpoint=ckpt, on_log=die)
    before = ckpt.read_bytes()
    with pytest.raises(UserError, match=r"another configuration \(stage2.lr: checkpoint 0.001, params 0.002\)"):
        train_diffusion(tiny_cfg(lr=0.002), images, labels, num_classes=10, seed=0, device=CPU, checkpoint=ckpt)
    with pytest.raises(UserError, match="different seed, labels or data"):
        train_diffusion(tiny_cfg(), images, labels, num_classes=10, seed=1, device=CPU, checkpoint=ckpt)
    assert ckpt.read_bytes() == before


def test_sampling_refuses_a_generator_trained_for_another_shape(tmp_path):
    from dpt_repro.config import Config
    from dpt_repro.stages.sample import check_generator

    unet = build_unet("small28", 28, 1, 10)
    cfg = Config()
    check_generator(cfg, tmp_path, unet, {"num_classes": 10}, None)
    cfg.base.num_classes = 5
    with pytest.raises(UserError, match="trained with num_classes 10, but params say base.num_classes 5"):
        check_generator(cfg, tmp_path, unet, {"num_classes": 10}, None)
    cfg.base.num_classes, cfg.base.channels = 10, 3
    with pytest.raises(UserError, match="channels 1, but params say base.channels 3"):
        check_generator(cfg, tmp_path, unet, {"num_classes": 10}, None)


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
def test_other_samplers_keep_one_noise_stream_per_image(scheduler):
    from dpt_repro.diffusion.train import make_scheduler

    torch.manual_seed(0)
    unet = build_unet("small28", 28, 1, 10).eval()
    sched = dict(make_scheduler(DiffusionConfig()).config)
    labels, seeds = torch.tensor([0, 1, 2]), [image_seed(0, c, 0) for c in range(3)]
    kw = dict(steps=4, null_class=10, device=CPU, guidance_scale=1.5, scheduler=scheduler)
    batch = guided_sample(unet, sched, labels, seeds, **kw)
    alone = guided_sample(unet, sched, labels[1:2], seeds[1:2], **kw)
    assert batch.shape == (3, 28, 28, 1)
    assert np.abs(alone[0].astype(int) - batch[1].astype(int)).max() <= 1  # DDPM's step noise is per image too
    dpm = guided_sample(unet, sched, labels, seeds, **{**kw, "scheduler": "dpmsolver++"})
    assert not np.array_equal(dpm, batch)
    with pytest.raises(UserError, match="unknown sampler scheduler 'euler'"):
        guided_sample(unet, sched, labels, seeds, **{**kw, "scheduler": "euler"})
    with pytest.raises(UserError, match="sample.steps must be at least 1, got 0"):
        guided_sample(unet, sched, labels, seeds, **{**kw, "steps": 0})


def test_generator_baselines_train_on_true_labels_of_all_or_of_the_labelled_images(tmp_path, monkeypatch):
    from dpt_repro.config import Config, paths
    from dpt_repro.io import write_json
    from dpt_repro.stages.stage2 import generator_training_set

    monkeypatch.chdir(tmp_path)
    images = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1)
    labels = np.arange(20) % 10
    cfg = Config()
    write_json(paths(cfg).split, {"labelled": [3, 17], "validation": [0]})
    cfg.stage2.labels = "oracle"
    x, y = generator_training_set(cfg, images, labels)
    assert x is images and np.array_equal(y, labels)
    cfg.stage2.labels = "labelled"
    x, y = generator_training_set(cfg, images, labels)
    assert x[:, 0, 0, 0].tolist() == [3, 17] and y.tolist() == [3, 7]
