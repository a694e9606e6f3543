import numpy as np
import pytest
import torch

from dpt_repro.config import ClassifierConfig
from dpt_repro.data import augment
from dpt_repro.errors import UserError
from dpt_repro.runtime import generator
from dpt_repro.ssl.algorithms import ALGORITHMS, build_algorithm
from dpt_repro.ssl.backbones import build_backbone
from dpt_repro.ssl.train import (ClassifierData, normalize, recalibrate_batchnorm, to_float, train_classifier,
                                 validate_batch_sizes)


def logits_for(classes, confidence):
    """Logits whose softmax puts `confidence` on each given class (10 classes)."""
    out = torch.full((len(classes), 10), 0.0)
    other = (1 - confidence) / 9
    out[:] = np.log(other)
    out[torch.arange(len(classes)), torch.tensor(classes)] = np.log(confidence)
    return out


def test_fixmatch_masks_only_confident_weak_predictions():
    algo = build_algorithm(ClassifierConfig(algorithm="fixmatch", threshold=0.9), 10)
    logits_x = logits_for([0, 1], 0.99)
    weak = logits_for([2, 3, 4, 5], 0.5)
    weak[:2] = logits_for([2, 3], 0.95)
    strong = logits_for([7, 7, 7, 7], 0.99).requires_grad_()
    loss, stats = algo.loss(logits_x, torch.tensor([0, 1]), weak, strong)
    assert stats["mask_rate"] == pytest.approx(0.5)
    loss.backward()
    assert strong.grad[:2].abs().sum() > 0 and strong.grad[2:].abs().sum() == 0


def test_supervised_ignores_unlabelled_and_freematch_threshold_adapts():
    sup = build_algorithm(ClassifierConfig(algorithm="supervised"), 10)
    assert not sup.uses_unlabelled
    loss, _ = sup.loss(logits_for([0], 0.5), torch.tensor([0]), None, None)
    assert loss.item() == pytest.approx(-np.log(0.5), rel=1e-5)

    fm = build_algorithm(ClassifierConfig(algorithm="freematch"), 10)
    before = fm.time_p.item()
    weak = logits_for(list(range(10)) * 4, 0.9)
    _, stats = fm.loss(logits_for([0], 0.9), torch.tensor([0]), weak, weak.clone())
    assert fm.time_p.item() > before  # confident unlabelled predictions raise the global threshold
    assert stats["threshold"] < 0.9  # far below FixMatch's fixed 0.95 early in training
    restored = build_algorithm(ClassifierConfig(algorithm="freematch"), 10)
    restored.load_state_dict(fm.state_dict())
    assert torch.equal(restored.p_model, fm.p_model)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UserError, match="valid: fixmatch, freematch, supervised"):
        build_algorithm(ClassifierConfig(algorithm="meanteacher"), 10)
    with pytest.raises(UserError, match="valid: cnn, wrn28_2"):
        build_backbone("resnet9000", 1, 10, 28)
    assert {"supervised", "fixmatch", "freematch"} <= set(ALGORITHMS)


@pytest.mark.parametrize("backbone", ["cnn", "wrn28_2", "timm:resnet18"])
def test_backbones_give_logits_and_features(backbone):
    net = build_backbone(backbone, 1, 10, 28 if backbone != "wrn28_2" else 32)
    x = torch.randn(2, 1, 28 if backbone != "wrn28_2" else 32, 28 if backbone != "wrn28_2" else 32)
    assert net(x).shape == (2, 10)
    assert net.features(x).ndim == 2


def test_augmentations_keep_shape_and_range_and_follow_the_generator():
    x = torch.rand(64, 1, 28, 28)
    for fn in (augment.weak, augment.strong):
        a, b = fn(x, generator(0, 1, 5)), fn(x, generator(0, 1, 5))
        assert a.shape == x.shape and torch.equal(a, b)
        assert a.min() >= 0 and a.max() <= 1
        assert not torch.equal(a, fn(x, generator(0, 1, 6)))
    strong = augment.strong(x, generator(0, 1, 7))
    assert (strong - x).abs().mean() > (augment.weak(x, generator(0, 1, 7)) - x).abs().mean() * 0.5


def test_zero_padding_shifts_in_black_where_reflection_repeats_the_image():
    white = torch.ones(64, 1, 28, 28)
    assert torch.equal(augment.weak(white, generator(0, 1, 5)), white)
    shifted = augment.weak(white, generator(0, 1, 5), augment.Policy(padding="zeros"))
    assert shifted.amin(dim=(1, 2, 3)).lt(0.01).float().mean() > 0.5  # most images got a black border
    x = torch.rand(64, 1, 28, 28)
    a, b = (augment.strong(x, generator(0, 1, 5), augment.Policy(padding=p)) for p in ("reflection", "zeros"))
    assert not torch.equal(a, b) and b.min() >= 0 and b.max() <= 1


def tiny_data(toy_images):
    images, labels = toy_images
    lab = np.concatenate([np.flatnonzero(labels == c)[:2] for c in range(10)])
    val = np.concatenate([np.flatnonzero(labels == c)[-5:] for c in range(10)])
    return ClassifierData(images[lab], labels[lab], images, images[val], labels[val])


def test_batch_larger_than_labelled_set_is_refused(toy_images):
    with pytest.raises(UserError, match="batch_size 64 is larger than the labelled set"):
        validate_batch_sizes(ClassifierConfig(batch_size=64), tiny_data(toy_images), "stage1")


@pytest.mark.parametrize("bn_images", [0, 40])
def test_training_learns_and_a_killed_run_resumes_to_the_same_weights(toy_images, tmp_path, bn_images):
    cfg = ClassifierConfig(algorithm="fixmatch", steps=30, batch_size=10, mu=2, eval_every=10, checkpoint_every=10,
                           ema_decay=0.9, lr=0.05, bn_recalibration_images=bn_images)
    data = tiny_data(toy_images)
    kw = dict(num_classes=10, seed=0, stream=1, device=torch.device("cpu"))
    full = train_classifier(cfg, data, **kw)
    assert full.best_val_acc > 0.3  # the stripes are easy: far above chance (0.1)

    ckpt = tmp_path / "ckpt.pt"

    def die(step, row):
        if step == 25:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(cfg, data, checkpoint=ckpt, on_log=die, **kw)
    assert ckpt.is_file()
    resumed = train_classifier(cfg, data, checkpoint=ckpt, **kw)
    assert resumed.resumed_from == 20
    assert resumed.best_step == full.best_step and resumed.best_val_acc == full.best_val_acc
    for k, v in full.state_dict.items():
        assert torch.equal(v, resumed.state_dict[k]), k


def test_batchnorm_recalibration_gives_the_statistics_of_the_ema_weights(toy_images):
    images = toy_images[0]
    model = build_backbone("cnn", 1, 10, 28)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first_norm = model.body[0][1]
    first_norm.running_mean.fill_(5.0)  # stale statistics, as copied from a newer live model
    recalibrate_batchnorm(model, images, 64, 16, generator(0, 1), torch.device("cpu"))

    idx = np.sort(torch.randperm(len(images), generator=generator(0, 1))[:64].numpy())
    with torch.no_grad():
        conv = model.body[0][0](normalize(to_float(images[idx])))
    torch.testing.assert_close(first_norm.running_mean, conv.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not model.training and first_norm.momentum == 0.1  # PyTorch's default, put back
    for k, v in model.state_dict().items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, before[k]), k


def test_stage3_mix_sets_the_generated_share_of_each_labelled_batch():
    from dpt_repro.ssl.train import labelled_batch

    x = np.zeros((110, 4, 4, 1), np.uint8)
    data = ClassifierData(x, np.zeros(110, np.int64), x, x[:2], np.zeros(2, np.int64), n_generated=100)
    for share, generated in ((0.0, 0), (0.25, 8), (1.0, 32)):
        data.generated_share = share
        idx = labelled_batch(data, 32, generator(0, 1))
        assert len(idx) == 32 and int((idx >= 10).sum()) == generated
    data.generated_share = -1.0  # as in the pool: the draw it always was
    assert torch.equal(labelled_batch(data, 32, generator(0, 1)), torch.randint(110, (32,), generator=generator(0, 1)))


def test_probe_fits_a_logistic_head_on_frozen_features_and_folds_it_into_the_network(toy_images):
    from dpt_repro.ssl.probe import L2_GRID, encode, fit_probe
    from dpt_repro.ssl.train import accuracy, build_classifier

    data = tiny_data(toy_images)
    torch.manual_seed(0)
    encoder = build_classifier(ClassifierConfig(), 1, 10, 28)
    body_before = {k: v.clone() for k, v in encoder.state_dict().items() if not k.startswith("head.")}
    state, record = fit_probe(encoder, data, 10, 64, torch.device("cpu"))
    assert [row["l2"] for row in record["l2_curve"]] == list(L2_GRID)
    assert record["val_acc"] == max(row["val_acc"] for row in record["l2_curve"])
    assert all(torch.equal(state[k], v) for k, v in body_before.items())  # the encoder stays frozen
    rebuilt = build_classifier(ClassifierConfig(), 1, 10, 28)
    rebuilt.load_state_dict(state)
    # The folded head on raw features scores validation exactly as the regression did on standardised ones.
    assert accuracy(rebuilt, data.val_x, data.val_y, 64, torch.device("cpu")) == pytest.approx(record["val_acc"])
    assert record["val_acc"] > 0.5  # brightness classes are linearly separable even in random-conv features
    feats = encode(rebuilt, data.val_x, 64, torch.device("cpu"))
    assert feats.shape == (50, rebuilt.head.in_features)
