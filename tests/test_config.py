from pathlib import Path

import pytest

from dpt_repro.config import load_config, merge_profile, paths, read_params_file
from dpt_repro.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_default_params_load_and_every_profile_merges():
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.base.dataset == "fashion-mnist"
    assert cfg.run_key == "lpc1-seed0"
    for profile in (ROOT / "configs").glob("*.yaml"):
        merged = merge_profile(read_params_file(ROOT / "params.yaml"), read_params_file(profile))
        assert set(merged) >= {"base", "stage1", "stage2", "sample", "stage3", "eval"}


def test_overrides_and_paths_follow_the_run_key():
    cfg = load_config(ROOT / "params.yaml", ["base.labels_per_class=5", "base.seed=2", "sample.guidance_scale=3"])
    assert cfg.sample.guidance_scale == 3.0
    p = paths(cfg)
    assert p.stage2.as_posix() == "models/stage2/lpc5-seed2"
    assert p.split.as_posix() == "data/splits/lpc5-seed2/split.json"


@pytest.mark.parametrize("text, needle", [
    ("base:\n  labels_per_class: 0\n", "base.labels_per_class must be at least 1, got 0"),
    ("base:\n  labels_per_class: -3\n", "got -3"),
    ("base:\n  dataset: cifar100\n", "base.dataset: unknown 'cifar100'"),
    ("base:\n  seed: 'abc'\n", "'base.seed' must be int, got 'abc'"),
    ("base:\n  colour: red\n", "unknown key 'base.colour'"),
    ("stage1:\n  threshold: 1.5\n", "stage1.threshold must be in (0, 1), got 1.5"),
    ("stage1:\n  mu: 0\n", "stage1.mu must be at least 1, got 0"),
    ("stage3:\n  padding: mirror\n", "stage3.padding: unknown 'mirror' (valid: reflection, zeros, border)"),
    ("stage3:\n  bn_recalibration_images: -1\n", "stage3.bn_recalibration_images must be at least 0, got -1"),
    ("sample:\n  guidance_scale: -1\n", "sample.guidance_scale must be at least 0"),
    ("sample:\n  steps: 0\n", "sample.steps must be at least 1"),
    ("base: [1, 2\n", "not valid YAML"),
    ("- a\n- b\n", "must hold a mapping"),
    ("stage2:\n  prediction_type: x0\n", "unknown 'x0'"),
])
def test_bad_params_name_the_key_and_value(tmp_path, text, needle):
    with pytest.raises(UserError) as err:
        load_config(write(tmp_path, text))
    assert needle in str(err.value)


def test_bad_override_syntax(tmp_path):
    with pytest.raises(UserError, match="expected section.key=value"):
        load_config(write(tmp_path, "{}\n"), ["labels_per_class=1"])


def test_missing_params_file(tmp_path):
    with pytest.raises(UserError, match="params file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("override, needle", [
    ("stage1.checkpoint_every=0", "stage1.checkpoint_every must be at least 1, got 0"),
    ("pseudo.batch_size=0", "pseudo.batch_size must be at least 1, got 0"),
    ("stage2.batch_size=0", "stage2.batch_size must be at least 1, got 0"),
    ("stage2.beta_schedule=foo", "stage2.beta_schedule: unknown 'foo'"),
    ("eval.kid_subset_size=1", "eval.kid_subset_size must be at least 2"),
    ("eval.pr_images=3", "eval.pr_images must be at least 4, got 3"),
    ("eval.class_fid_images=1", "eval.class_fid_images must be at least 2, got 1"),
    ("eval.inception_score_split=0", "eval.inception_score_split must be at least 1, got 0"),
    ("eval.inception_logits_weights=w.npy", "eval.inception_logits_sha256 must be the 64-hex-digit SHA-256 of "
                                            "eval.inception_logits_weights (w.npy), got ''"),
    ("base.dataset=[", "not valid YAML"),
])
def test_impossible_sizes_and_bad_override_values(override, needle):
    with pytest.raises(UserError) as err:
        load_config(ROOT / "params.yaml", [override])
    assert needle in str(err.value)


def test_unknown_section_and_empty_sections(tmp_path):
    with pytest.raises(UserError, match="unknown section 'stage4'"):
        load_config(write(tmp_path, "stage4:\n  steps: 1\n"))
    merged = merge_profile({"pseudo": None, "base": {"seed": 1}}, {"pseudo": {"batch_size": 5}})
    assert merged == {"pseudo": {"batch_size": 5}, "base": {"seed": 1}}


def test_stage_mix_and_generator_label_source_are_checked(tmp_path):
    from dpt_repro.config import load_config

    params = tmp_path / "params.yaml"
    params.write_text("base:\n  seed: 0\n")
    assert load_config(params, ["stage3.generated_share=0"]).stage3.generated_share == 0.0
    assert load_config(params, ["stage2.labels=oracle"]).stage2.labels == "oracle"
    with pytest.raises(UserError, match=r"stage3.generated_share must be in \[-1, 1\], got 1.5"):
        load_config(params, ["stage3.generated_share=1.5"])
    with pytest.raises(UserError, match=r"stage3.generated_share must be -1 \(as in the pool\) or in \[0, 1\], got -0.5"):
        load_config(params, ["stage3.generated_share=-0.5"])
    with pytest.raises(UserError, match="stage3.generated_share 0.5 sets the share of each labelled batch, which "
                                        "only the retrain protocol draws"):
        load_config(params, ["stage3.protocol=probe", "stage3.generated_share=0.5"])
    assert load_config(params, ["stage3.protocol=probe", "stage3.generated_share=0"]).stage3.generated_share == 0.0
    with pytest.raises(UserError, match="stage2.labels: unknown 'truth' \\(valid: pseudo, oracle, labelled\\)"):
        load_config(params, ["stage2.labels=truth"])


@pytest.mark.parametrize("key, raw, expected", [
    ("stage1.lr", "3e-4", 3e-4),                     # PyYAML alone: the string '3e-4'
    ("stage2.lr", "1E-3", 1e-3),
    ("stage1.weight_decay", "5e-4", 5e-4),
    ("stage1.steps", "1e4", 10000),                  # an integral float for an int
    ("sample.images_per_class", "1_000", 1000),
    ("stage2.mixed_precision", "no", "no"),          # PyYAML alone: False
    ("stage2.compile", "off", False),
    ("stage1.pretrained", "yes", True),
    ("base.seed", "017", 17),                        # PyYAML alone: octal 15
    ("base.profile", "2026-12-03", "2026-12-03"),    # PyYAML alone: a date
    ("base.profile", "1:30", "1:30"),                # PyYAML alone: 90 (base 60)
])
def test_params_values_parse_as_dvc_and_a_user_read_them(tmp_path, key, raw, expected):
    """The same in a params file and in a `-S` override: one parser."""
    section, name = key.split(".")
    from_file = load_config(write(tmp_path, f"{section}:\n  {name}: {raw}\n"))
    from_override = load_config(ROOT / "params.yaml", [f"{key}={raw}"])
    for cfg in (from_file, from_override):
        value = getattr(getattr(cfg, section), name)
        assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("override, needle", [
    ("stage1.lr=.nan", "stage1.lr must be a finite number, got nan"),
    ("stage2.lr=.inf", "stage2.lr must be a finite number, got inf"),
    ("base.seed=1e30", "base.seed 1000000000000000019884624838656 does not fit in 64 bits"),
    ("stage1.steps=2.5", "'stage1.steps' must be int, got 2.5"),
    ("stage1.momentum=1", "stage1.momentum must be in [0, 1), got 1"),
    ("base.profile=", "base.profile must not be empty"),
    ("stage1.backbone=resnet", "stage1.backbone: unknown 'resnet' (valid: cnn, wrn28_2, timm:<model name>)"),
    ("stage3.algorithm=probe", "stage3.algorithm: unknown 'probe'"),
    ("stage2.profile=huge", "stage2.profile: unknown 'huge' (valid: small28, medium, ddpm-cifar10, latent32)"),
    ("stage2.compile=maybe", "'stage2.compile' must be bool, got 'maybe'"),
])
def test_non_finite_oversized_empty_and_unknown_values_are_refused(override, needle):
    with pytest.raises(UserError) as err:
        load_config(ROOT / "params.yaml", [override])
    assert needle in str(err.value)


@pytest.mark.parametrize("override, needle", [
    ("stage1.randaugment_ops=[rotate, warp]", "stage1.randaugment_ops: unknown 'warp' (valid: rotate, shear_x,"),
    ("stage3.randaugment_ops=[]", "stage3.randaugment_ops must name at least one (valid: rotate,"),
    ("stage1.randaugment_ops=[rotate, rotate]", "stage1.randaugment_ops names an op twice"),
    ("stage1.randaugment_ops=rotate", "'stage1.randaugment_ops' must be a list of names, e.g. [a, b], got 'rotate'"),
    ("stage1.randaugment_magnitude_max=1.5", "stage1.randaugment_magnitude_max must be in [0, 1], got 1.5"),
    ("stage3.shift=0.6", "stage3.shift must be in [0, 0.5], got 0.6"),
    ("stage3.cutout=-0.1", "stage3.cutout must be in [0, 1], got -0.1"),
    ("stage1.randaugment_num_ops=15", "stage1.randaugment_num_ops must be in [0, 14], got 15"),
])
def test_bad_augmentation_values_name_the_value_and_the_valid_ones(override, needle):
    with pytest.raises(UserError) as err:
        load_config(ROOT / "params.yaml", [override])
    assert needle in str(err.value)


def test_the_magnitude_range_is_a_range():
    with pytest.raises(UserError, match=r"^stage3.randaugment_magnitude_min 0.8 is above "
                                        r"stage3.randaugment_magnitude_max 0.5$"):
        load_config(ROOT / "params.yaml", ["stage3.randaugment_magnitude_min=0.8",
                                           "stage3.randaugment_magnitude_max=0.5"])


def test_a_profile_that_forbids_flips_refuses_one():
    no_flips = ["base.profile=digits", "base.allow_flips=false", "stage1.hflip=false", "stage3.hflip=false"]
    cfg = load_config(ROOT / "params.yaml", no_flips)
    assert not cfg.stage1.hflip and not cfg.stage3.vflip
    for override in ("stage3.hflip=true", "stage1.vflip=true"):
        with pytest.raises(UserError) as err:
            load_config(ROOT / "params.yaml", [*no_flips, override])
        key = override.split("=")[0]
        assert str(err.value) == (f"{key}: true is refused by profile 'digits' (base.allow_flips: false: a mirrored "
                                  "image is another class or none) (valid: false)")
    ops = load_config(ROOT / "params.yaml", ["stage1.randaugment_ops=[rotate, equalize]"]).stage1.randaugment_ops
    assert ops == ("rotate", "equalize")


def test_an_empty_params_file_is_refused_and_an_explicit_empty_mapping_means_defaults(tmp_path):
    for text in ("", "# only a comment\n"):
        with pytest.raises(UserError, match="is empty: name a params file with sections"):
            load_config(write(tmp_path, text))
    assert load_config(write(tmp_path, "{}\n")).base.labels_per_class == 1


def test_name_lists_in_config_match_the_registries():
    from dpt_repro.config import ALGORITHMS, SAMPLERS, UNET_PROFILES
    from dpt_repro.diffusion.sample import SCHEDULERS
    from dpt_repro.diffusion.unet import PROFILES
    from dpt_repro.ssl.algorithms import ALGORITHMS as REGISTRY

    assert set(ALGORITHMS) == set(REGISTRY)
    assert tuple(UNET_PROFILES) == tuple(PROFILES)
    assert tuple(SAMPLERS) == tuple(SCHEDULERS)


def test_the_built_in_defaults_are_the_default_profile():
    """A params file that leaves keys out gets params.yaml's values for them, not another set of defaults."""
    from dpt_repro.config import Config

    assert load_config(ROOT / "params.yaml") == Config()
