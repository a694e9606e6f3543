"""The generation metrics against direct implementations of their definitions."""

import numpy as np
import pytest
import torch

from dpt_repro.config import Config
from dpt_repro.errors import UserError
from dpt_repro.io import file_sha256
from dpt_repro.metrics import fid, generation
from dpt_repro.stages.evaluate import check_inputs


def direct_precision_recall(real, fake, k=3):
    """The paper's definition, written out: all pairwise squared distances, the k-th nearest other point."""
    def radii(x):
        d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        return np.sort(d, 1)[:, k]  # column 0 is the point itself

    d_fake_real = ((fake[:, None, :] - real[None, :, :]) ** 2).sum(-1)
    precision = (d_fake_real <= radii(real)[None, :]).any(1).mean()
    recall = (d_fake_real.T <= radii(fake)[None, :]).any(1).mean()
    return precision, recall


def test_precision_recall_equal_the_definition_on_two_gaussians_in_blocks_or_not(monkeypatch):
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 8))
    same, shifted = rng.normal(size=(250, 8)), rng.normal(1.5, 0.5, size=(250, 8))
    for fake in (same, shifted):
        expected = direct_precision_recall(real, fake)
        assert generation.precision_recall(real, fake) == expected
        monkeypatch.setattr(generation, "BLOCK_ELEMENTS", 1000)  # blocks of 3-4 rows
        assert generation.precision_recall(real, fake) == expected
        monkeypatch.undo()
    p_same, r_same = generation.precision_recall(real, same)
    p_shift, r_shift = generation.precision_recall(real, shifted)
    assert p_same > 0.8 and r_same > 0.8
    assert r_shift < 0.5 * r_same  # a narrower, shifted set covers little of the real one


def test_a_copier_keeps_precision_and_loses_recall():
    real = np.random.default_rng(1).normal(size=(200, 8))
    copier = np.repeat(real[:10], 20, axis=0)  # 10 reference points, each returned 20 times
    precision, recall = generation.precision_recall(real, copier)
    assert (precision, recall) == direct_precision_recall(real, copier)
    assert precision == 1.0 and recall == 10 / 200  # radius 0: each copy covers only the point it copies


def test_precision_recall_refuse_fewer_than_k_plus_one_points():
    with pytest.raises(UserError, match="at least 4 generated images, got 3"):
        generation.precision_recall(np.zeros((10, 2)), np.zeros((3, 2)))


def test_precision_recall_equal_torch_fidelitys_on_the_same_features():
    """torch-fidelity (an independent implementation: Euclidean distances, torch.cdist) on the same rows and k."""
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    rng = np.random.default_rng(2)
    real = rng.normal(size=(400, 64))
    for fake in (rng.normal(size=(300, 64)), rng.normal(0.3, 0.8, size=(300, 64)), np.repeat(real[:30], 10, 0)):
        theirs = calculate_precision_recall_full(torch.as_tensor(fake), torch.as_tensor(real), neighborhood=3)
        precision, recall = generation.precision_recall(real, fake)
        # the same points covered (torch-fidelity returns float32 shares, so compare the counts)
        assert (round(precision * len(fake)), round(recall * len(real))) == \
            (round(theirs[0] * len(fake)), round(theirs[1] * len(real)))
        assert (precision, recall) == pytest.approx(theirs, abs=1e-6)


def test_inception_score_agrees_with_torch_fidelitys_on_the_same_logits_and_splits():
    """torch-fidelity's IS on our shuffled order (its own shuffle uses another RNG), the same near-equal splits."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = np.random.default_rng(3).normal(scale=3.0, size=(1234, 1008))
    mean, std, splits = generation.inception_score(logits, 250)
    shuffled = logits[np.random.default_rng(generation.IS_SEED).permutation(len(logits))]
    theirs = isc_features_to_metric(torch.as_tensor(shuffled), splits=splits, shuffle=False)
    assert splits == 4
    assert mean == pytest.approx(theirs["inception_score_mean"], rel=1e-9)
    assert std == pytest.approx(theirs["inception_score_std"], rel=1e-6)


def test_inception_score_of_uniform_and_one_hot_logits():
    uniform = np.zeros((40, 1008))
    assert generation.inception_score(uniform, 10) == (pytest.approx(1.0), pytest.approx(0.0), 4)
    one_hot = np.zeros((1008 * 2, 1008))
    one_hot[np.arange(len(one_hot)), np.arange(len(one_hot)) % 1008] = 1e4
    mean, std, splits = generation.inception_score(one_hot, len(one_hot))
    assert (mean, std, splits) == (pytest.approx(1008.0, rel=1e-9), 0.0, 1)  # confident and all classes: the maximum
    ten = np.zeros((40, 1008))
    ten[np.arange(40), np.arange(40) % 10] = 1e4
    assert generation.inception_score(ten, 40)[0] == pytest.approx(10.0, rel=1e-9)  # confident, 10 classes: 10
    with pytest.raises(UserError, match="inception_score_split is 41, but the set has 40 images"):
        generation.inception_score(uniform, 41)


def test_inception_score_averages_splits_of_a_shuffled_set():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 3, size=(60, 1008))
    shuffled = logits[np.random.default_rng(generation.IS_SEED).permutation(60)]

    def one(part):
        p = np.exp(part - part.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return np.exp((p * (np.log(p) - np.log(p.mean(0)))).sum(1).mean())

    scores = [one(shuffled[i:i + 20]) for i in (0, 20, 40)]
    mean, std, splits = generation.inception_score(logits, 20)
    assert splits == 3 and mean == pytest.approx(np.mean(scores), rel=1e-12) and std == pytest.approx(np.std(scores))


def test_user_softmax_weights_are_checked_by_hash_and_shape(tmp_path):
    weights = np.random.default_rng(3).normal(size=generation.LOGITS_SHAPE).astype(np.float32)
    path = tmp_path / "softmax.npy"
    np.save(path, weights)
    digest = file_sha256(path)
    assert np.array_equal(generation.load_logits_weights(str(path), digest), weights)
    with pytest.raises(UserError, match=f"has SHA-256 {digest}, but eval.inception_logits_sha256 is 0+"):
        generation.load_logits_weights(str(path), "0" * 64)
    np.save(tmp_path / "small.npy", weights[:, :10])
    with pytest.raises(UserError, match=r"shape \(2048, 10\), expected \(2048, 1008\)"):
        generation.load_logits_weights(str(tmp_path / "small.npy"), file_sha256(tmp_path / "small.npy"))
    with pytest.raises(UserError, match="not found"):
        generation.load_logits_weights(str(tmp_path / "none.npy"), digest)


def test_set_features_accumulate_every_metrics_input_with_bounded_rows():
    rng = np.random.default_rng(4)
    n, k = 90, 3
    feats = rng.normal(size=(n, fid.POOL3_DIM + fid.SPATIAL_DIM))
    labels = np.repeat(np.arange(k), n // k)
    weights = rng.normal(size=generation.LOGITS_SHAPE).astype(np.float32)
    acc = generation.SetFeatures(n, num_classes=k, pr_images=50, class_images=20, logits_weights=weights)
    for start in range(0, n, 25):
        acc.update(feats[start:start + 25], labels[start:start + 25])
    out = acc.result()
    spatial = feats[:, fid.POOL3_DIM:]
    np.testing.assert_allclose(out["spatial_mu"], spatial.mean(0))
    np.testing.assert_allclose(out["spatial_sigma"], np.cov(spatial, rowvar=False), atol=1e-10)
    np.testing.assert_allclose(out["mu"], feats[:, :fid.POOL3_DIM].mean(0))
    assert out["pr_features"].shape == (50, fid.POOL3_DIM) and out["features"].shape == (n, fid.POOL3_DIM)
    assert np.bincount(out["class_labels"]).tolist() == [20, 20, 20]
    np.testing.assert_allclose(out["class_features"][20:40], feats[30:50, :fid.POOL3_DIM].astype(np.float32))
    np.testing.assert_allclose(out["logits"], feats[:, :fid.POOL3_DIM] @ weights.astype(np.float64), rtol=1e-5)
    assert acc.class_totals.tolist() == [30, 30, 30]


def test_the_frechet_distance_from_rows_equals_the_covariance_one():
    rng = np.random.default_rng(5)
    for n1, n2, d in ((30, 25, 64), (200, 150, 16)):  # fewer and more rows than dimensions
        a, b = rng.normal(size=(n1, d)), rng.normal(0.2, 1.3, size=(n2, d))
        expected = fid.frechet_distance(*fid.statistics(a), *fid.statistics(b))
        assert fid.frechet_distance_of_rows(a, b) == pytest.approx(expected, rel=1e-7)


def test_sfid_is_the_frechet_distance_of_mixed_6_conv_from_the_same_pass():
    images = np.random.default_rng(6).integers(0, 256, size=(6, 28, 28, 1), dtype=np.uint8)
    plain = fid.FeatureExtractor(torch.device("cpu"))
    both = fid.FeatureExtractor(torch.device("cpu"), spatial=True)
    out = both(images)
    assert out.shape == (6, 2048 + 2023)
    np.testing.assert_allclose(out[:, :2048], plain(images), rtol=1e-5, atol=1e-6)  # pool3 as the plain forward
    layers = both.net.net.layers
    with torch.inference_mode():  # mixed_6/conv computed on its own: the 1x1 branch on mixed_5's output
        x = fid.resize_clean(torch.from_numpy(images).permute(0, 3, 1, 2).float()).sub_(128).div_(128)
        x = x.expand(-1, 3, -1, -1).contiguous()
        for name, block in layers.named_children():
            if name == "mixed_6":
                break
            x = block(x)
        conv = layers.mixed_6.conv(x)[:, :7].permute(0, 2, 3, 1).reshape(6, -1).double().numpy()
    np.testing.assert_allclose(out[:, 2048:], conv, rtol=1e-4, atol=1e-5)
    acc = generation.SetFeatures(6, num_classes=1, pr_images=6, class_images=6)
    acc.update(out, np.zeros(6, np.int64))
    half = generation.SetFeatures(3, num_classes=1, pr_images=3, class_images=3)
    half.update(out[:3], np.zeros(3, np.int64))
    expected = fid.frechet_distance(*fid.statistics(conv), *fid.statistics(conv[:3]))
    assert generation.sfid(acc.result(), half.result()) == pytest.approx(expected, rel=1e-6)


@pytest.fixture(scope="module")
def fashion():
    from dpt_repro.config import BaseConfig, PrepareConfig
    from dpt_repro.data.sources import FASHION_MNIST_DEBIAN, fashion_mnist

    assert FASHION_MNIST_DEBIAN.is_dir(), "Fashion-MNIST (Debian dataset-fashion-mnist) missing: run `make data`"
    return fashion_mnist(BaseConfig(), PrepareConfig())


def test_class_fid_of_same_class_real_images_is_well_below_other_classes(fashion):
    net = fid.FeatureExtractor(torch.device("cpu"), spatial=True)
    classes, n = (1, 7, 8), 24  # trouser, sneaker, bag

    def features(images, labels):
        rows, ys = [], []
        for new, c in enumerate(classes):
            rows.append(images[labels == c][:n])
            ys.append(np.full(n, new))
        acc = generation.SetFeatures(n * 3, num_classes=3, pr_images=10, class_images=n)
        acc.update(fid.extract_features(np.concatenate(rows), net, batch_size=24), np.concatenate(ys))
        return acc.result()

    test = features(fashion.test_images, fashion.test_labels)
    train = features(fashion.train_images, fashion.train_labels)
    mean_same, per_class = generation.class_fid(test, train, 3)
    assert [r["n_generated"] for r in per_class] == [n] * 3 == [r["n_reference"] for r in per_class]
    rotated = {**train, "class_labels": (train["class_labels"] + 1) % 3}  # class c's reference: another class
    mean_other, _ = generation.class_fid(test, rotated, 3)
    assert mean_same < 0.5 * mean_other


def test_evaluate_refuses_bad_sizes_before_any_network_runs(tmp_path):
    cfg = Config()
    cfg.base.num_classes = 3
    ref = {"spatial_mu": 0, "spatial_sigma": 0, "pr_features": 0, "class_features": 0,
           "class_labels": np.array([0, 0, 1, 1, 2, 2])}
    assert check_inputs(cfg, ref, 30, 10) is None  # no softmax weights: IS absent, nothing to load
    with pytest.raises(UserError, match="at least 4 generated images, got 3"):
        check_inputs(cfg, ref, 3, 1)
    with pytest.raises(UserError, match="class_fid: class 0 has 1 generated images"):
        check_inputs(cfg, ref, 6, 1)
    with pytest.raises(UserError, match="class_fid: class 2 has 0 reference images"):
        check_inputs(cfg, {**ref, "class_labels": np.array([0, 0, 1, 1])}, 30, 10)
    with pytest.raises(UserError, match="lacks spatial_mu"):
        check_inputs(cfg, {k: v for k, v in ref.items() if k != "spatial_mu"}, 30, 10)
    cfg.eval.inception_logits_weights, cfg.eval.inception_logits_sha256 = str(tmp_path / "w.npy"), "0" * 64
    with pytest.raises(UserError, match="inception_score_split is 500, but evaluate has 30 generated images"):
        check_inputs(cfg, ref, 30, 10)
    cfg.eval.inception_score_split = 30
    with pytest.raises(UserError, match="w.npy not found"):
        check_inputs(cfg, ref, 30, 10)
