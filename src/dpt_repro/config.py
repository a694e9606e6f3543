"""Typed configuration: one dataclass per section of params.yaml.

`load_config` reads a params file, applies `section.key=value` overrides, checks every key and type, and
returns a `Config`. Any mistake raises `UserError` naming the key, the value and what was expected.
The paths every stage reads and writes are derived here too, so the CLI, the stages and dvc.yaml agree.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dpt_repro.errors import UserError

DATASETS = ("fashion-mnist", "cifar10", "imagefolder", "npz", "sklearn-digits")
DEVICES = ("auto", "cpu", "cuda")
# What an augmentation's shift, rotation or shear brings in from outside the image (grid_sample's modes):
# "reflection" is FixMatch's pad-and-crop on CIFAR; "zeros" is black, the background of Fashion-MNIST and
# MNIST, where a reflected border mirrors a sleeve or a strap into the picture.
PADDINGS = ("reflection", "zeros", "border")
# RandAugment's ops, in the order of data/augment.py's OPS (a test keeps them equal): geometric, then colour.
AUGMENT_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y", "identity", "autocontrast",
               "brightness", "color", "contrast", "posterize", "sharpness", "solarize", "equalize")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
FID_RESIZES = ("clean", "legacy_tensorflow")
GENERATOR_LABELS = ("pseudo", "oracle", "labelled")
SAMPLERS = ("dpmsolver++", "ddim", "ddpm")  # diffusion/sample.py SCHEDULERS
ALGORITHMS = ("supervised", "fixmatch", "freematch")  # ssl/algorithms.py's registry (a test keeps them equal)
STAGE1_ALGORITHMS = (*ALGORITHMS, "probe")  # probe: DPT's ImageNet stage 1, a logistic regression on frozen features
UNET_PROFILES = ("small28", "medium", "ddpm-cifar10", "latent32")  # diffusion/unet.py PROFILES (tested equal)
MAX_STRING = 4096  # longest string value (PATH_MAX): a longer one is a pasting accident, not a path or a name


def param(default: Any, *, choices: typing.Sequence[Any] = (), ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None, empty: bool = False) -> Any:
    """A params key with the values it accepts: `choices`, or bounds (`ge`/`gt` below, `le`/`lt` above); for a
    string, `empty` says whether "" is a valid value; for a list of names (`tuple[str, ...]`), `choices` are the
    names it may hold, each once, at least one. `check_field` enforces them, the tests derive bad values
    from them, so a key declared here is validated and tested without further code."""
    return field(default=default, metadata={"choices": tuple(choices), "ge": ge, "gt": gt, "le": le, "lt": lt,
                                            "empty": empty})


@dataclass
class BaseConfig:
    profile: str = param("default")  # the profile's name, set by `dpt-repro profile NAME`; the report groups by it
    dataset: str = param("fashion-mnist", choices=DATASETS)
    data_path: str = param("", empty=True)  # raw source: IDX folder, class-folder tree or .npz file; "": default
    num_classes: int = param(10, ge=2)
    image_size: int = param(28, ge=8)
    channels: int = param(1, choices=(1, 3))
    labels_per_class: int = param(1, ge=1)
    val_per_class: int = param(100, ge=1)
    allow_flips: bool = True  # false: a mirrored image is another class or none (digits, text): flips refused
    seed: int = param(0, ge=0, lt=2 ** 32)  # numpy and torch seeds are 32-bit on some paths
    device: str = param("auto", choices=DEVICES)
    threads: int = param(0, ge=0, le=4096)  # 0: all cores


@dataclass
class PrepareConfig:
    shard_size: int = param(20000, ge=1)
    test_fraction: float = param(0.2, gt=0.0, lt=1.0)  # only for imagefolder/npz sources without a test split


@dataclass
class ClassifierConfig:
    """Stage 1 and stage 3 share this section's shape: one training loop, two data mixes. The defaults here, as
    in every section, are params.yaml's (a test keeps them equal): a params file that leaves a key out gets the
    default profile's value."""

    algorithm: str = param("freematch", choices=STAGE1_ALGORITHMS)
    backbone: str = param("cnn")  # cnn | wrn28_2 | timm:<model> (checked in `validate`)
    pretrained: bool = False  # timm backbones only; needs network access or a local Hugging Face cache
    weights: str = param("", empty=True)  # timm backbones: a local file of pretrained weights (implies pretrained)
    steps: int = param(1500, ge=1)
    batch_size: int = param(10, ge=1)  # labelled batch B (at most the labelled set)
    mu: int = param(7, ge=1)
    lr: float = param(0.03, gt=0.0)
    momentum: float = param(0.9, ge=0.0, lt=1.0)
    weight_decay: float = param(5e-4, ge=0.0)
    ema_decay: float = param(0.99, ge=0.0, lt=1.0)
    threshold: float = param(0.6, gt=0.0, lt=1.0)
    lambda_u: float = param(1.0, ge=0.0)
    fairness_weight: float = param(0.0, ge=0.0)
    eval_every: int = param(250, ge=1)
    checkpoint_every: int = param(250, ge=1)
    eval_batch_size: int = param(1000, ge=1)
    bn_recalibration_images: int = param(0, ge=0)  # >0: EMA BatchNorm statistics recomputed on this many images
    # The views (data/augment.py's Policy): the defaults are FixMatch's; docs/augmentations.md says which suit
    # which data
    hflip: bool = True  # random left-right mirror
    vflip: bool = False  # random up-down mirror (aerial, microscopy images)
    shift: float = param(0.125, ge=0.0, le=0.5)  # pad-and-crop shift, up to this share of the side
    padding: str = param("reflection", choices=PADDINGS)  # what augmentations shift in from outside the image
    randaugment_ops: tuple[str, ...] = param(AUGMENT_OPS, choices=AUGMENT_OPS)  # the strong view's op pool
    randaugment_num_ops: int = param(2, ge=0, le=len(AUGMENT_OPS))  # ops per strong view; 0: no RandAugment
    randaugment_magnitude_min: float = param(0.0, ge=0.0, le=1.0)  # each op's magnitude is drawn in [min, max]
    randaugment_magnitude_max: float = param(1.0, ge=0.0, le=1.0)  # of its largest (rotate 30 degrees, ...)
    cutout: float = param(0.5, ge=0.0, le=1.0)  # largest cutout square's side, share of the image; 0: none


@dataclass
class Stage3Config(ClassifierConfig):
    """Stage 3 runs the classifier loop on real plus generated labelled images; what it adds is the mix."""

    algorithm: str = param("freematch", choices=ALGORITHMS)  # the probe is stage3.protocol's, not an algorithm
    batch_size: int = param(32, ge=1)  # labelled batch drawn from real labelled + generated images
    mu: int = param(2, ge=1)
    threshold: float = param(0.95, gt=0.0, lt=1.0)
    protocol: str = param("retrain", choices=("retrain", "probe"))  # retrain (CIFAR-10: SSL from scratch) |
                                                                      # probe (ImageNet: frozen stage-1 encoder)
    generated_share: float = param(-1.0, ge=-1.0, le=1.0)  # generated images per labelled batch: -1 as in the
                                                            # pool, 0 none (baseline); checked in `validate`
    generated_per_class: int = param(0, ge=0)  # the first N generated images of each class join the labelled
                                               # set (0: all K); sample may draw more, e.g. 5,000 for FID-50K


@dataclass
class PseudoConfig:
    batch_size: int = param(1000, ge=1)


@dataclass
class GatesConfig:
    pseudo_max_kl: float = param(0.25, ge=0.0)
    pseudo_min_share: float = param(0.001, ge=0.0, le=1.0)
    pseudo_max_share: float = param(0.5, ge=0.0, le=1.0)
    pseudo_min_mean_confidence: float = param(0.5, ge=0.0, le=1.0)
    pseudo_min_labelled_agreement: float = param(0.5, ge=0.0, le=1.0)
    generated_min_agreement: float = param(0.5, ge=0.0, le=1.0)
    mix_tolerance: float = param(0.001, ge=0.0, le=1.0)


@dataclass
class DiffusionConfig:
    labels: str = param("pseudo", choices=GENERATOR_LABELS)  # pseudo | oracle (true labels of all images) |
                                                              # labelled (the labelled images only)
    profile: str = param("small28", choices=UNET_PROFILES)
    autoencoder: str = param("", empty=True)  # latent diffusion: an AutoencoderKL folder or hub id; "": pixels
    steps: int = param(2000, ge=1)
    batch_size: int = param(64, ge=1)
    lr: float = param(1e-3, gt=0.0)
    warmup_steps: int = param(100, ge=0)
    weight_decay: float = param(0.0, ge=0.0)
    ema_decay: float = param(0.999, ge=0.0, lt=1.0)
    label_dropout: float = param(0.1, ge=0.0, lt=1.0)
    prediction_type: str = param("v_prediction", choices=("epsilon", "v_prediction"))
    beta_schedule: str = param("squaredcos_cap_v2", choices=BETA_SCHEDULES)
    num_train_timesteps: int = param(1000, ge=2)
    grad_accum: int = param(1, ge=1)
    checkpoint_every: int = param(250, ge=1)
    fid_every: int = param(1000, ge=0)  # guided FID of the EMA weights every N steps (0: off), for the FID plot
    fid_images: int = param(200, ge=2)  # generated and reference images of that FID (a trend, not the result)
    mixed_precision: str = param("bf16", choices=("bf16", "no"))  # bf16 autocast on CUDA and native-bf16 CPUs
    compile: bool = False       # torch.compile the UNet on CUDA


@dataclass
class SampleConfig:
    scheduler: str = param("dpmsolver++", choices=SAMPLERS)
    images_per_class: int = param(200, ge=1)
    guidance_scale: float = param(1.5, ge=0.0)
    steps: int = param(20, ge=1)
    batch_size: int = param(100, ge=1)
    shard_size: int = param(1000, ge=1)


@dataclass
class EvalConfig:
    fid_ref_split: str = param("train", choices=("train", "test"))
    fid_ref_images: int = param(2000, ge=2)
    fid_images_per_class: int = param(0, ge=0)  # generated images per class in the FID (ImageNet FID-50K: 50);
                                                # 0: all
    fid_resize: str = param("clean", choices=FID_RESIZES)  # clean | legacy_tensorflow (CIFAR-10 literature's)
    fid_precision: str = param("float32", choices=("float32", "bfloat16"))  # bfloat16: CUDA only, ~2x faster
    batch_size: int = param(50, ge=1)
    kid_subset_size: int = param(1000, ge=2)
    pr_images: int = param(10000, ge=4)  # precision/recall: a seeded sample of at most this many per side (ADM: 10k)
    class_fid_images: int = param(200, ge=2)  # class FID: at most this many images per class and side
    inception_score_split: int = param(500, ge=1)  # images per Inception Score split (ADM: 5,000)
    inception_logits_weights: str = param("", empty=True)  # .npy of the TF graph's 2048x1008 softmax weight;
                                                           # "": no Inception Score
    inception_logits_sha256: str = param("", empty=True)  # its SHA-256, checked before use


@dataclass
class LauncherConfig:
    """How many processes run the data-parallel stages (`torchrun`); hardware only, so no stage depends on it.

    Batch sizes in params are global: each of the `processes` ranks takes batch_size / processes, so the same
    params describe the same experiment on a laptop and on a cluster."""

    nproc_per_node: int = param(1, ge=1, le=4096)  # processes per machine: GPUs per node (or CPU processes)
    nnodes: int = param(1, ge=1, le=65536)  # machines; > 1 needs rdzv_endpoint
    rdzv_endpoint: str = param("", empty=True)  # host:port of the first node for multi-node runs (c10d)
    rdzv_id: str = param("dpt")  # the job's rendezvous id: every node of one run passes the same

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


# Which command writes each folder of `paths`, and what it holds: what a missing or corrupt input tells the user.
PRODUCERS = (("data", "prepared", "prepare", "prepared data"), ("data", "splits", "split", "split"),
             ("models", "stage1", "stage1", "stage-1 classifier"),
             ("data", "pseudo_labels", "pseudo-label", "pseudo-labels"),
             ("models", "stage2", "stage2", "stage-2 generator"), ("data", "generated", "sample", "generated images"),
             ("data", "fid_ref", "fid-reference", "FID reference statistics"),
             ("models", "stage3", "stage3", "stage-3 classifier"), ("metrics", "gates", "validate", "gate result"))


def producer(path: Path | str) -> tuple[str, str]:
    """What `path` holds and the command that writes it, with the run key's options (`lpc2-seed0` ->
    `--labels-per-class 2 --seed 0`); a description where no stage of ours writes it."""
    parts = Path(path).parts
    for i in range(len(parts) - 1):
        for top, folder, command, what in PRODUCERS:
            if (parts[i], parts[i + 1]) != (top, folder):
                continue
            rest = parts[i + 2:]
            if command == "validate" and rest:
                command = f"validate {rest[0].split('.')[0]}"
            key = re.fullmatch(r"lpc(\d+)-seed(\d+)", rest[0]) if rest else None
            options = f" --labels-per-class {key[1]} --seed {key[2]}" if key else ""
            return what, f"`dpt-repro {command}{options}`"
    return "input", "the stage that produces it"


class ParamsLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser where PyYAML has it
    """YAML as DVC reads params.yaml (the YAML 1.2 core schema), where PyYAML's 1.1 rules surprise: `3e-4` is a
    float, not a string; `no`, `off`, `yes` and `on` stay strings (`mixed_precision: no`); `017` is 17, not octal
    15; `1:30` is a string, not 90 (base 60); `2026-12-03` is a string, not a date. `1_000` is 1000, as in Python."""


ParamsLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag.rsplit(":", 1)[1] not in ("bool", "int", "float", "timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))
ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:int",
                                   re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7_]+|0x[0-9a-fA-F_]+)$"),
                                   list("-+0123456789"))
ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9][0-9_]*|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+.0123456789"))


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    base = {"0x": 16, "0o": 8}.get(text[:2], 10)
    return int(text[2:] if base != 10 else text, base)


ParamsLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def parse_yaml(text: str) -> Any:
    """The one place params values are parsed: params files, profiles and `-S` overrides alike."""
    return yaml.load(text, Loader=ParamsLoader)  # noqa: S506 (a safe loader, with YAML 1.2's scalars)


BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check one value against its annotated type, accepting what a user means: an int for a float, an integral
    float for an int (`steps: 1e4`), yes/no/on/off for a bool."""
    if tp is bool and isinstance(value, str) and value.lower() in BOOL_WORDS:
        return BOOL_WORDS[value.lower()]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if typing.get_origin(tp) is tuple:
        _check(isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value),
               f"params: '{key}' must be a list of names, e.g. [a, b], got {value!r}")
        return tuple(value)
    if tp in (int, float, str, bool):
        if isinstance(value, tp) and not (tp in (int, float) and isinstance(value, bool)):
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
        value = parse_yaml(raw) if raw != "" else ""
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
        tree = parse_yaml(path.read_text())
    except UnicodeDecodeError:
        raise UserError(f"params file {path} is not a text file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"params file {path} is not valid YAML{where}") from None
    if not tree and tree != {}:
        raise UserError(f"params file {path} is empty: name a params file with sections (e.g. params.yaml), or "
                        "write `{}` to run on the built-in defaults")
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


def _number(x: float) -> str:
    """A bound as written: 4294967296, not 4.29497e+09."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def describe_bounds(meta: dict) -> str:
    """The declared range in words, as the messages and the params reference say it."""
    lo, lo_open, hi, hi_open = (_number(meta[b]) if meta[b] is not None else None for b in ("ge", "gt", "le", "lt"))
    if (lo or lo_open) and (hi or hi_open):
        return f"in {'[' + lo if lo else '(' + lo_open}, {hi + ']' if hi else hi_open + ')'}"
    if lo is not None:
        return f"at least {lo}"
    if lo_open is not None:
        return "positive" if lo_open == "0" else f"greater than {lo_open}"
    if hi is not None:
        return f"at most {hi}"
    return f"less than {hi_open}" if hi_open is not None else ""


def check_field(key: str, value: Any, meta: dict) -> None:
    """One key against its declaration (`param`): choices, bounds, finite numbers, sane strings."""
    if isinstance(value, tuple):
        valid = f"(valid: {', '.join(meta['choices'])})"
        _check(len(value) > 0, f"{key} must name at least one {valid}")
        for v in value:
            _check(v in meta["choices"], f"{key}: unknown {v!r} {valid}")
        _check(len(set(value)) == len(value), f"{key} names an op twice: {list(value)}")
        return
    if meta.get("choices"):
        _check(value in meta["choices"],
               f"{key}: unknown {value!r} (valid: {', '.join(str(c) for c in meta['choices'])})")
        return
    if isinstance(value, float):
        _check(math.isfinite(value), f"{key} must be a finite number, got {value}")
    if isinstance(value, int) and not isinstance(value, bool):
        _check(-2 ** 63 <= value < 2 ** 63, f"{key} {value} does not fit in 64 bits")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        ok = all([meta["ge"] is None or value >= meta["ge"], meta["gt"] is None or value > meta["gt"],
                  meta["le"] is None or value <= meta["le"], meta["lt"] is None or value < meta["lt"]])
        _check(ok, f"{key} must be {describe_bounds(meta)}, got {value:g}")
    if isinstance(value, str):
        _check(value != "" or meta.get("empty", False), f"{key} must not be empty")
        _check(len(value) <= MAX_STRING, f"{key} is {len(value)} characters long (at most {MAX_STRING})")
        _check(value.isprintable(), f"{key} holds a control character (a newline or NUL?): {value[:60]!r}")


def _check_fields(section: Any, prefix: str) -> None:
    for f in dataclasses.fields(section):
        check_field(f"{prefix}.{f.name}", getattr(section, f.name), dict(f.metadata))


def validate(cfg: Config) -> None:
    """Every key against its declaration, then the checks that relate several keys, before any data is read."""
    for f in dataclasses.fields(cfg):
        _check_fields(getattr(cfg, f.name), f.name)
    for name in ("stage1", "stage3"):
        backbone = getattr(cfg, name).backbone
        _check(backbone in ("cnn", "wrn28_2") or (backbone.startswith("timm:") and len(backbone) > 5),
               f"{name}.backbone: unknown {backbone!r} (valid: cnn, wrn28_2, timm:<model name>)")
    for name in ("stage1", "stage3"):
        validate_augmentation(cfg, name)
    share = cfg.stage3.generated_share
    _check(share == -1 or 0 <= share <= 1, f"stage3.generated_share must be -1 (as in the pool) or in [0, 1], "
                                           f"got {share}")
    _check(cfg.stage3.protocol != "probe" or share in (-1, 0),
           f"stage3.generated_share {share} sets the share of each labelled batch, which only the retrain protocol "
           "draws; the probe fits on the whole labelled set at once: use -1 (with the generated images) or 0 "
           "(without)")
    e = cfg.eval
    _check(not e.inception_logits_weights or re.fullmatch(r"[0-9a-f]{64}", e.inception_logits_sha256) is not None,
           f"eval.inception_logits_sha256 must be the 64-hex-digit SHA-256 of eval.inception_logits_weights "
           f"({e.inception_logits_weights}), got {e.inception_logits_sha256!r}")
    validate_launcher(cfg)


def validate_stage1_batch(cfg: Config) -> None:
    """Stage 1's labelled set is labels_per_class x num_classes images, known before any data is read: a larger
    labelled batch is refused with the value that fits and the mu that keeps the unlabelled batch (mu x B).
    Stage 1 checks it first; `validate` does not, so that `prepare` and `split` run on params sized for them."""
    s1, n = cfg.stage1, cfg.base.labels_per_class * cfg.base.num_classes
    if s1.algorithm == "probe" or s1.batch_size <= n:
        return
    mu = -(-s1.mu * s1.batch_size // n)
    raise UserError(f"stage1.batch_size {s1.batch_size} is larger than the labelled set (base.labels_per_class "
                    f"{cfg.base.labels_per_class} x base.num_classes {cfg.base.num_classes} = {n} images): use "
                    f"stage1.batch_size: {n} (with stage1.mu: {mu} for an unlabelled batch of {mu * n}, about the "
                    f"{s1.mu * s1.batch_size} of now), or more labels per class")


def validate_augmentation(cfg: Config, name: str) -> None:
    """A magnitude range that is one, and no flip where the profile says a mirror image changes the class."""
    c = getattr(cfg, name)
    _check(c.randaugment_magnitude_min <= c.randaugment_magnitude_max,
           f"{name}.randaugment_magnitude_min {c.randaugment_magnitude_min:g} is above "
           f"{name}.randaugment_magnitude_max {c.randaugment_magnitude_max:g}")
    for key in ("hflip", "vflip"):
        _check(cfg.base.allow_flips or not getattr(c, key),
               f"{name}.{key}: true is refused by profile {cfg.base.profile!r} (base.allow_flips: false: a mirrored "
               f"image is another class or none) (valid: false)")


def validate_launcher(cfg: Config) -> None:
    """Global batches must split evenly over the processes (see `LauncherConfig`)."""
    n = cfg.launcher
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
