import json

import numpy as np
import pytest
import torch

from dpt_repro.errors import UserError
from dpt_repro.io import write_npz
from dpt_repro.metrics import fid


@pytest.fixture(scope="module")
def net():
    return fid.FeatureExtractor(torch.device("cpu"))


def real_like(n, seed, shift=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 120, size=(n, 28, 28, 1)).astype(np.int16)
    x[:, 8:20, 8:20] += 100
    return np.clip(x + shift, 0, 255).astype(np.uint8)


def test_frechet_distance_matches_clean_fid():
    from cleanfid.fid import frechet_distance as reference

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 16)), rng.normal(0.3, 1.2, size=(300, 16))
    mu1, s1 = fid.statistics(a)
    mu2, s2 = fid.statistics(b)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference(mu1, s1, mu2, s2), rel=1e-6)
    assert fid.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_a_rank_deficient_covariance_matches_the_general_eigensolver():
    """The pipeline's case: fewer generated images (80) than feature dimensions (2048), so S1 is singular; the
    trace term from the eigenvalues of S1 S2 by a general eigensolver is the definition."""
    rng = np.random.default_rng(1)
    mu1, s1 = fid.statistics(rng.normal(size=(20, 64)))
    mu2, s2 = fid.statistics(rng.normal(0.2, 0.8, size=(500, 64)) @ rng.normal(size=(64, 64)))
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    definition = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(definition, rel=1e-9)
    assert fid.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(definition, rel=1e-9)


def test_fid_is_near_zero_for_identical_sets_and_large_for_shifted(net):
    a = real_like(24, 0)
    fa = fid.extract_features(a, net, batch_size=12)
    assert fa.shape == (24, 2048)
    fb = fid.extract_features(real_like(24, 0, shift=-120), net, batch_size=12)
    fc = fid.extract_features(real_like(24, 1), net, batch_size=12)
    same = fid.frechet_distance(*fid.statistics(fa), *fid.statistics(fa))
    near = fid.frechet_distance(*fid.statistics(fa), *fid.statistics(fc))
    far = fid.frechet_distance(*fid.statistics(fa), *fid.statistics(fb))
    assert abs(same) < 1e-3
    assert far > 2 * near > 0
    assert fid.kid(fa, fb, 24) > fid.kid(fa, fc, 24)


def test_weights_are_checked_against_their_hash():
    assert fid.weights_path().name == "default_1.pt"
    proto = fid.protocol("clean", 10, "fashion-mnist train", 20)
    assert proto["weights_sha256"] == fid.WEIGHTS_SHA256 and proto["n_generated"] == 10


def test_streaming_statistics_equal_the_in_memory_ones_and_keep_a_bounded_sample():
    rng = np.random.default_rng(1)
    feats = rng.normal(5.0, 2.0, size=(1000, 32)) + rng.normal(size=32)
    stats = fid.StreamingStatistics(total=1000, keep=100, seed=3)
    stats.update(feats[:0])  # an empty first batch changes nothing
    for start in range(0, 1000, 130):  # uneven batches
        stats.update(feats[start:start + 130])
    mu, sigma, kept = stats.result()
    ref_mu, ref_sigma = fid.statistics(feats)
    np.testing.assert_allclose(mu, ref_mu, rtol=1e-10)
    np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-8, atol=1e-10)
    assert kept.shape == (100, 32)
    np.testing.assert_allclose(kept, feats[stats.keep_index].astype(np.float32))
    assert len(np.unique(stats.keep_index)) == 100 and stats.keep_index.max() > 500  # spread, not the first rows


def test_stream_statistics_over_shards_matches_extract_features(net):
    images = real_like(20, 2)
    mu, sigma, kept = fid.stream_statistics(iter([images[:7], images[7:]]), 20, net, batch_size=5, keep=8)
    ref = fid.extract_features(images, net, batch_size=20)
    np.testing.assert_allclose(mu, ref.mean(0), rtol=1e-5, atol=1e-6)
    assert fid.frechet_distance(mu, sigma, *fid.statistics(ref)) == pytest.approx(0.0, abs=1e-3)
    assert kept.shape == (8, 2048)


def test_one_pass_over_shards_gives_the_in_memory_features_statistics(net):
    from dpt_repro.metrics import generation

    images, labels = real_like(20, 2), np.arange(20) % 2
    both = fid.FeatureExtractor(torch.device("cpu"), spatial=True)
    acc = generation.SetFeatures(20, num_classes=2, pr_images=8, class_images=10)
    out = generation.stream_features(iter([(images[:7], labels[:7]), (images[7:], labels[7:])]), 20, both, acc,
                                     batch_size=5, description="test")
    ref = fid.extract_features(images, net, batch_size=20)
    np.testing.assert_allclose(out["mu"], ref.mean(0), rtol=1e-5, atol=1e-6)
    assert fid.frechet_distance(out["mu"], out["sigma"], *fid.statistics(ref)) == pytest.approx(0.0, abs=1e-3)
    assert out["pr_features"].shape == (8, 2048) and out["spatial_mu"].shape == (2023,)
    fresh = generation.SetFeatures(21, num_classes=2, pr_images=8, class_images=10)
    with pytest.raises(UserError, match="had 20 images, expected 21"):
        generation.stream_features(iter([(images, labels)]), 21, both, fresh, batch_size=5, description="test")


@pytest.mark.parametrize("shape", [(6, 28, 28, 1), (4, 32, 32, 3), (2, 320, 310, 3)])
def test_clean_resize_on_tensors_equals_clean_fids_pil_resizer(shape):
    from cleanfid.resize import make_resizer

    images = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    pil = make_resizer("PIL", False, "bicubic", (299, 299))
    expected = np.stack([pil(np.repeat(img, 3 // img.shape[2], axis=2)) for img in images])[..., :shape[3]]
    ours = fid.resize_clean(torch.from_numpy(images).permute(0, 3, 1, 2).float()).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - expected).max() < 0.01  # grey levels; bilinear (no antialias) differs by ~60


def test_legacy_tensorflow_resize_samples_at_i_times_in_over_out_without_half_pixel_offset():
    ramp = torch.arange(28, dtype=torch.float32).view(1, 1, 1, 28).expand(1, 1, 28, 28)
    out = fid.resize_legacy_tensorflow(ramp)[0, 0, 0].numpy()
    expected = np.minimum(np.arange(299) * 28 / 299, 27)  # TF1 align_corners=False: src = i * in / out
    np.testing.assert_allclose(out, expected, atol=1e-4)
    half_pixel = torch.nn.functional.interpolate(ramp, size=(299, 299), mode="bilinear", align_corners=False)
    assert np.abs(half_pixel[0, 0, 0].numpy() - expected).max() > 0.4  # PyTorch's bilinear is another protocol


def test_the_two_resize_protocols_give_different_features_and_the_protocol_records_them(net):
    images = real_like(8, 3)
    tf = fid.FeatureExtractor(torch.device("cpu"), resize="legacy_tensorflow")
    assert np.abs(tf(images) - net(images)).max() > 1e-2
    assert fid.protocol("legacy_tensorflow", 1, "x", 1)["resize_impl"].startswith("TensorFlow 1")
    with pytest.raises(UserError, match="bfloat16"):
        fid.FeatureExtractor(torch.device("cpu"), precision="bfloat16")
    with pytest.raises(UserError, match="'bilinear'"):
        fid.FeatureExtractor(torch.device("cpu"), resize="bilinear")


def test_a_reference_of_another_resize_or_precision_is_refused_naming_both(tmp_path):
    path = tmp_path / "ref.npz"
    meta = {"split": "train", "n": 3, "resize": "clean", "precision": "bfloat16"}
    write_npz(path, mu=np.zeros(2), sigma=np.eye(2), features=np.zeros((3, 2), np.float32),
              meta=np.array(json.dumps(meta)))
    ref, got = fid.load_reference(path, "clean", "bfloat16")
    assert got == meta and ref["features"].shape == (3, 2)
    with pytest.raises(UserError, match=r"\('clean', 'bfloat16'\).*\('clean', 'float32'\)"):
        fid.load_reference(path, "clean", "float32")
    with pytest.raises(UserError, match="legacy_tensorflow"):
        fid.load_reference(path, "legacy_tensorflow", "bfloat16")
