"""Typed configuration: one dataclass per section of params.yaml.

`load_config` reads a params file, applies `section.key=value` overrides, checks every key and type, and
returns a `Config`. Any mistake raises `UserError` naming the key, the value and what was expected.
The paths every stage reads and writes are derived here too, so the CLI, the stages and dvc.yaml agree.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dpt_repro.errors import UserError

DATASETS = ("fashion-mnist", "cifar10", "imagefolder", "npz")
DEVICES = ("auto", "cpu", "cuda")
# What an augmentation's shift, rotation or shear brings in from outside the image (grid_sample's modes):
# "reflection" is FixMatch's pad-and-crop on CIFAR; "zeros" is black, the background of Fashion-MNIST and
# MNIST, where a reflected border mirrors a sleeve or a strap into the picture.
PADDINGS = ("reflection", "zeros", "border")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
FID_RESIZES = ("clean", "legacy_tensorflow")
GENERATOR_LABELS = ("pseudo", "oracle", "labelled")
SAMPLERS = ("dpmsolver++", "ddim", "ddpm")  # diffusion/sample.py SCHEDULERS


@dataclass
class BaseConfig:
    profile: str = "default"  # the profile's name, set by `dpt-repro profile NAME`; the report groups by it
    dataset: str = "fashion-mnist"
    data_path: str = ""  # raw source: IDX folder (fashion-mnist), class-folder tree (imagefolder) or .npz file
    num_classes: int = 10
    image_size: int = 28
    channels: int = 1
    labels_per_class: int = 1
    val_per_class: int = 100
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # 0: all cores


@dataclass
class PrepareConfig:
    shard_size: int = 20000
    test_fraction: float = 0.2  # only for imagefolder/npz sources without a test split


@dataclass
class ClassifierConfig:
    """Stage 1 and stage 3 share this section's shape: one training loop, two data mixes."""

    algorithm: str = "freematch"
    backbone: str = "cnn"
    pretrained: bool = False  # timm backbones only; needs network access or a local Hugging Face cache
    weights: str = ""         # timm backbones: a local file of pretrained weights (implies pretrained)
    steps: int = 1500
    batch_size: int = 32
    mu: int = 7
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 5e-4
    ema_decay: float = 0.999
    threshold: float = 0.95
    lambda_u: float = 1.0
    fairness_weight: float = 0.0
    eval_every: int = 250
    checkpoint_every: int = 500
    eval_batch_size: int = 1000
    bn_recalibration_images: int = 0  # >0: EMA BatchNorm statistics recomputed on this many images per evaluation
    padding: str = "reflection"       # what augmentations shift in from outside the image: reflection | zeros | border


@dataclass
class Stage3Config(ClassifierConfig):
    """Stage 3 runs the classifier loop on real plus generated labelled images; what it adds is the mix."""

    protocol: str = "retrain"      # retrain (CIFAR-10: SSL from scratch) | probe (ImageNet: frozen stage-1 encoder)
    generated_share: float = -1.0  # generated images per labelled batch: -1 as in the pool, 0 none (baseline)
    generated_per_class: int = 0   # the first N generated images of each class join the labelled set (0: all K);
                                   # the sample stage may draw more, e.g. 5,000 per class for FID-50K


@dataclass
class PseudoConfig:
    batch_size: int = 1000


@dataclass
class GatesConfig:
    pseudo_max_kl: float = 0.25
    pseudo_min_share: float = 0.001
    pseudo_max_share: float = 0.5
    pseudo_min_mean_confidence: float = 0.5
    pseudo_min_labelled_agreement: float = 0.5
    generated_min_agreement: float = 0.5
    mix_tolerance: float = 0.001


@dataclass
class DiffusionConfig:
    labels: str = "pseudo"      # pseudo | oracle (true labels of all images) | labelled (the labelled images only)
    profile: str = "small28"
    autoencoder: str = ""       # latent diffusion: a diffusers AutoencoderKL folder or hub id; empty: pixel space
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    label_dropout: float = 0.1
    prediction_type: str = "v_prediction"
    beta_schedule: str = "squaredcos_cap_v2"
    num_train_timesteps: int = 1000
    grad_accum: int = 1
    checkpoint_every: int = 500
    fid_every: int = 0          # guided FID of the EMA weights every N steps (0: off), for the FID-vs-steps plot
    fid_images: int = 200       # generated and reference images of that FID (small: a trend, not the result)
    mixed_precision: str = "bf16"  # bf16 | no: bf16 autocast on CUDA and on CPUs with native bf16, else float32
    compile: bool = False       # torch.compile the UNet on CUDA


@dataclass
class SampleConfig:
    scheduler: str = "dpmsolver++"
    images_per_class: int = 200
    guidance_scale: float = 1.5
    steps: int = 20
    batch_size: int = 100
    shard_size: int = 1000


@dataclass
class EvalConfig:
    fid_ref_split: str = "train"
    fid_ref_images: int = 2000
    fid_images_per_class: int = 0    # generated images per class in the FID (e.g. 50 for ImageNet FID-50K); 0: all
    fid_resize: str = "clean"        # clean | legacy_tensorflow (the resize of the CIFAR-10 literature's FIDs)
    fid_precision: str = "float32"   # float32 | bfloat16 (CUDA only: ~2x faster Inception)
    batch_size: int = 50
    kid_subset_size: int = 1000
    pr_images: int = 10000           # precision/recall: a seeded sample of at most this many per side (ADM: 10k)
    class_fid_images: int = 200      # class FID: at most this many images per class and side
    inception_score_split: int = 500  # images per Inception Score split (ADM: 5,000)
    inception_logits_weights: str = ""  # .npy of the TF graph's 2048x1008 softmax weight; "": no Inception Score
    inception_logits_sha256: str = ""   # its SHA-256, checked before use


@dataclass
class LauncherConfig:
    """How many processes run the data-parallel stages (`torchrun`); hardware only, so no stage depends on it.

    Batch sizes in params are global: each of the `processes` ranks takes batch_size / processes, so the same
    params describe the same experiment on a laptop and on a cluster."""

    nproc_per_node: int = 1     # processes per machine: GPUs per node (or CPU processes, with gloo)
    nnodes: int = 1             # machines; > 1 needs rdzv_endpoint
    rdzv_endpoint: str = ""     # host:port of the first node for multi-node runs (torchrun's c10d rendezvous)
    rdzv_id: str = "dpt"        # the job's rendezvous id: every node of one run passes the same

    @property
    def processes(self) -> int:
        return self.nproc_per_node * self.nnodes


@dataclass
class Config:
    base: BaseConfig = field(default_factory=BaseConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    stage1: ClassifierConfig = field(default_factory=ClassifierConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    gates: GatesConfig = field(default_factory=GatesConfig)
    stage2: DiffusionConfig = field(default_factory=DiffusionConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    stage3: Stage3Config = field(default_factory=Stage3Config)
    eval: EvalConfig = field(default_factory=EvalConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)

    @property
    def run_key(self) -> str:
        """Everything downstream of `split` lives under this key, so several settings coexist."""
        return f"lpc{self.base.labels_per_class}-seed{self.base.seed}"

    def section(self, name: str) -> dict[str, Any]:
        return dataclasses.asdict(getattr(self, name))


@dataclass(frozen=True)
class Paths:
    """Where each stage reads and writes; mirrored by the templated paths in dvc.yaml."""

    prepared: Path
    split: Path
    stage1: Path
    pseudo_labels: Path
    gates: Path
    gate_docs: Path
    stage2: Path
    generated: Path
    samples_png: Path
    fid_ref: Path
    stage3: Path
    metrics: Path
    plots: Path


def paths(cfg: Config, root: Path | str = ".") -> Paths:
    root = Path(root)
    key = cfg.run_key
    return Paths(
        prepared=root / "data" / "prepared" / cfg.base.dataset,
        split=root / "data" / "splits" / key / "split.json",
        stage1=root / "models" / "stage1" / key,
        pseudo_labels=root / "data" / "pseudo_labels" / key / "pseudo_labels.parquet",
        gates=root / "metrics" / "gates",
        gate_docs=root / "reports" / "gates",
        stage2=root / "models" / "stage2" / key,
        generated=root / "data" / "generated" / key,
        samples_png=root / "reports" / key / "samples.png",
        fid_ref=root / "data" / "fid_ref" / f"{cfg.base.dataset}-{cfg.eval.fid_ref_split}.npz",
        stage3=root / "models" / "stage3" / key,
        metrics=root / "metrics",
        plots=root / "plots",
    )


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check one value against its annotated type; ints are accepted where floats are expected."""
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise UserError(f"params: '{key}' must be {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"params: section '{prefix}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        where = f"key '{prefix}.{unknown[0]}'" if prefix else f"section '{unknown[0]}'"
        raise UserError(f"params: unknown {where} (valid: {', '.join(sorted(known))})")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}.{name}" if prefix else name)
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}.{name}")
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, raw: str) -> None:
    parts = dotted.split(".")
    if len(parts) != 2 or not all(parts):
        raise UserError(f"override '{dotted}={raw}': expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        raise UserError(f"override '{dotted}={raw}': the value is not valid YAML") from None
    tree.setdefault(parts[0], {})
    if not isinstance(tree[parts[0]], dict):
        raise UserError(f"params: section '{parts[0]}' must be a mapping")
    tree[parts[0]][parts[1]] = value


def read_params_file(path: Path | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"params file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"params file {path} is not valid YAML{where}") from None
    if not isinstance(tree, dict):
        raise UserError(f"params file {path} must hold a mapping of sections, got {type(tree).__name__}")
    return tree


def load_config(path: Path | str = "params.yaml", overrides: typing.Sequence[str] = ()) -> Config:
    return config_from_tree(read_params_file(path), overrides)


def config_from_tree(tree: dict, overrides: typing.Sequence[str] = ()) -> Config:
    """A checked Config from a params tree, after `section.key=value` overrides."""
    tree = copy.deepcopy(tree)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}': expected section.key=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), raw.strip())
    cfg = _build(Config, tree, "")
    validate(cfg)
    return cfg


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def validate(cfg: Config) -> None:
    """Cross-field checks that can be made before any data is read."""
    b = cfg.base
    _check(b.dataset in DATASETS, f"base.dataset: unknown dataset {b.dataset!r} (valid: {', '.join(DATASETS)})")
    _check(b.device in DEVICES, f"base.device: unknown device {b.device!r} (valid: {', '.join(DEVICES)})")
    _check(b.num_classes >= 2, f"base.num_classes must be at least 2, got {b.num_classes}")
    _check(b.labels_per_class >= 1, f"base.labels_per_class must be at least 1, got {b.labels_per_class}")
    _check(b.val_per_class >= 1, f"base.val_per_class must be at least 1, got {b.val_per_class}")
    _check(b.channels in (1, 3), f"base.channels must be 1 or 3, got {b.channels}")
    _check(b.image_size >= 8, f"base.image_size must be at least 8, got {b.image_size}")
    _check(b.seed >= 0, f"base.seed must be non-negative, got {b.seed}")
    _check(0.0 < cfg.prepare.test_fraction < 1.0,
           f"prepare.test_fraction must be in (0, 1), got {cfg.prepare.test_fraction}")
    for name in ("stage1", "stage3"):
        c: ClassifierConfig = getattr(cfg, name)
        _check(c.steps >= 1, f"{name}.steps must be at least 1, got {c.steps}")
        _check(c.batch_size >= 1, f"{name}.batch_size must be at least 1, got {c.batch_size}")
        _check(c.mu >= 1, f"{name}.mu must be at least 1, got {c.mu}")
        _check(0.0 < c.threshold < 1.0, f"{name}.threshold must be in (0, 1), got {c.threshold}")
        _check(c.padding in PADDINGS, f"{name}.padding: unknown {c.padding!r} (valid: {', '.join(PADDINGS)})")
        _check(0.0 <= c.ema_decay < 1.0, f"{name}.ema_decay must be in [0, 1), got {c.ema_decay}")
        _check(c.bn_recalibration_images >= 0,
               f"{name}.bn_recalibration_images must be 0 or more, got {c.bn_recalibration_images}")
        _check(c.lr > 0, f"{name}.lr must be positive, got {c.lr}")
        for key in ("eval_every", "checkpoint_every", "eval_batch_size"):
            _check(getattr(c, key) >= 1, f"{name}.{key} must be at least 1, got {getattr(c, key)}")
    _check(cfg.stage3.protocol in ("retrain", "probe"),
           f"stage3.protocol: unknown {cfg.stage3.protocol!r} (valid: retrain, probe)")
    share = cfg.stage3.generated_share
    _check(share == -1 or 0 <= share <= 1, f"stage3.generated_share must be -1 (as in the pool) or in [0, 1], "
                                           f"got {share}")
    _check(cfg.stage3.protocol != "probe" or share in (-1, 0),
           f"stage3.generated_share {share} sets the share of each labelled batch, which only the retrain protocol "
           "draws; the probe fits on the whole labelled set at once: use -1 (with the generated images) or 0 "
           "(without)")
    _check(cfg.stage3.generated_per_class >= 0,
           f"stage3.generated_per_class must be at least 0 (0: all), got {cfg.stage3.generated_per_class}")
    _check(cfg.stage2.labels in GENERATOR_LABELS,
           f"stage2.labels: unknown {cfg.stage2.labels!r} (valid: {', '.join(GENERATOR_LABELS)})")
    d = cfg.stage2
    _check(d.steps >= 1, f"stage2.steps must be at least 1, got {d.steps}")
    _check(0.0 <= d.label_dropout < 1.0, f"stage2.label_dropout must be in [0, 1), got {d.label_dropout}")
    _check(d.prediction_type in ("epsilon", "v_prediction"),
           f"stage2.prediction_type: unknown {d.prediction_type!r} (valid: epsilon, v_prediction)")
    for key in ("grad_accum", "batch_size", "checkpoint_every"):
        _check(getattr(d, key) >= 1, f"stage2.{key} must be at least 1, got {getattr(d, key)}")
    _check(d.fid_every >= 0, f"stage2.fid_every must be at least 0 (0: off), got {d.fid_every}")
    _check(d.fid_images >= 2, f"stage2.fid_images must be at least 2, got {d.fid_images}")
    _check(d.num_train_timesteps >= 2, f"stage2.num_train_timesteps must be at least 2, got {d.num_train_timesteps}")
    _check(d.warmup_steps >= 0, f"stage2.warmup_steps must be at least 0, got {d.warmup_steps}")
    _check(d.mixed_precision in ("bf16", "no"),
           f"stage2.mixed_precision: unknown {d.mixed_precision!r} (valid: bf16, no)")
    _check(d.beta_schedule in BETA_SCHEDULES,
           f"stage2.beta_schedule: unknown {d.beta_schedule!r} (valid: {', '.join(BETA_SCHEDULES)})")
    for key, value in (("prepare.shard_size", cfg.prepare.shard_size), ("pseudo.batch_size", cfg.pseudo.batch_size),
                       ("sample.batch_size", cfg.sample.batch_size), ("sample.shard_size", cfg.sample.shard_size),
                       ("eval.batch_size", cfg.eval.batch_size)):
        _check(value >= 1, f"{key} must be at least 1, got {value}")
    _check(cfg.eval.kid_subset_size >= 2, f"eval.kid_subset_size must be at least 2, got {cfg.eval.kid_subset_size}")
    s = cfg.sample
    _check(s.images_per_class >= 1, f"sample.images_per_class must be at least 1, got {s.images_per_class}")
    _check(s.guidance_scale >= 0, f"sample.guidance_scale must be at least 0, got {s.guidance_scale}")
    _check(s.steps >= 1, f"sample.steps must be at least 1, got {s.steps}")
    _check(s.scheduler in SAMPLERS, f"sample.scheduler: unknown {s.scheduler!r} (valid: {', '.join(SAMPLERS)})")
    e = cfg.eval
    _check(e.fid_ref_split in ("train", "test"), f"eval.fid_ref_split must be train or test, got {e.fid_ref_split!r}")
    _check(e.fid_resize in FID_RESIZES,
           f"eval.fid_resize: unknown protocol {e.fid_resize!r} (valid: {', '.join(FID_RESIZES)})")
    _check(e.fid_precision in ("float32", "bfloat16"),
           f"eval.fid_precision: unknown {e.fid_precision!r} (valid: float32, bfloat16)")
    _check(e.fid_ref_images >= 2, f"eval.fid_ref_images must be at least 2, got {e.fid_ref_images}")
    _check(e.fid_images_per_class >= 0, f"eval.fid_images_per_class must be at least 0 (0: all), got "
                                        f"{e.fid_images_per_class}")
    _check(e.pr_images >= 4, f"eval.pr_images must be at least 4 (k = 3 nearest neighbours + 1), got {e.pr_images}")
    _check(e.class_fid_images >= 2, f"eval.class_fid_images must be at least 2, got {e.class_fid_images}")
    _check(e.inception_score_split >= 1,
           f"eval.inception_score_split must be at least 1, got {e.inception_score_split}")
    _check(not e.inception_logits_weights or re.fullmatch(r"[0-9a-f]{64}", e.inception_logits_sha256) is not None,
           f"eval.inception_logits_sha256 must be the 64-hex-digit SHA-256 of eval.inception_logits_weights "
           f"({e.inception_logits_weights}), got {e.inception_logits_sha256!r}")
    validate_launcher(cfg)


def validate_launcher(cfg: Config) -> None:
    """Global batches must split evenly over the processes (see `LauncherConfig`)."""
    n = cfg.launcher
    _check(n.nproc_per_node >= 1, f"launcher.nproc_per_node must be at least 1, got {n.nproc_per_node}")
    _check(n.nnodes >= 1, f"launcher.nnodes must be at least 1, got {n.nnodes}")
    _check(n.nnodes == 1 or ":" in n.rdzv_endpoint,
           f"launcher.rdzv_endpoint must be host:port of the first node when launcher.nnodes is {n.nnodes}, "
           f"got {n.rdzv_endpoint!r}")
    trained = [("stage1.batch_size", cfg.stage1.batch_size, n.processes, cfg.stage1.algorithm != "probe"),
               ("stage2.batch_size", cfg.stage2.batch_size, n.processes * cfg.stage2.grad_accum, True),
               ("stage3.batch_size", cfg.stage3.batch_size, n.processes, cfg.stage3.protocol != "probe")]
    for key, batch, per in [t[:3] for t in trained if t[3]]:  # a probe fits on one process, in one batch
        _check(batch % per == 0, f"{key} {batch} must be divisible by {per} (the launcher's {n.processes} "
                                 f"processes{' x stage2.grad_accum' if key.startswith('stage2') else ''})")


def profile_params(params: Path | str, name: str) -> dict:
    """The params tree with configs/<name>.yaml laid over it and base.profile set: what `dpt-repro profile` writes."""
    merged = merge_profile(read_params_file(params), read_params_file(Path("configs") / f"{name}.yaml"))
    merged.setdefault("base", {})["profile"] = name
    return merged


def merge_profile(base_tree: dict, profile_tree: dict) -> dict:
    """Overlay a profile (configs/<name>.yaml) on params: same sections, same keys."""
    merged = {}
    for section, values in base_tree.items():
        if values is not None and not isinstance(values, dict):
            raise UserError(f"params: section '{section}' must be a mapping, got {values!r}")
        merged[section] = dict(values or {})
    for section, values in profile_tree.items():
        if not isinstance(values, dict):
            raise UserError(f"profile: section '{section}' must be a mapping")
        merged.setdefault(section, {}).update(values)
    return merged
