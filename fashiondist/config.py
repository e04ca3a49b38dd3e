"""One typed training config: dataclass defaults < model recipe < YAML file < command-line flags.

A YAML file holds hyperparameters only (hardware lives in accelerate's config). Keys are the field names
below, plus two keys for multi-model runs: `models:` (the variants to train, when the command line names
none) and `per_model:` (a mapping from variant name to its own overrides). Any field can also be set
from the command line as a dotted override, `--set lr=0.1 --set model_kwargs.width=64`. Unknown keys and
bad values are errors that name the key, never silently ignored.

The resolved config is written as plain YAML next to every run (`runs/NAME/config.yaml`).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fashiondist.atomic_io import write_text
from fashiondist.constants import Tta  # lives with the torch-free facts: inference checks it, config-free
from fashiondist.errors import InputError
from fashiondist.output_paths import format_out_template


class Precision(str, enum.Enum):
    AUTO = "auto"  # from the hardware and the launcher: fashiondist.hardware.resolve_precision
    NO = "no"
    FP16 = "fp16"
    BF16 = "bf16"


class Optimizer(str, enum.Enum):
    SGD = "sgd"  # with Nesterov momentum
    ADAM = "adam"
    ADAMW = "adamw"


class Schedule(str, enum.Enum):
    LINEAR = "linear"  # linear warmup to lr, then linear decay to 0 (airbench-style triangle)
    COSINE = "cosine"  # linear warmup, then cosine decay to 0
    CONSTANT = "constant"  # linear warmup, then flat

    @classmethod
    def _missing_(cls, value: object) -> Schedule | None:
        # "onecycle": this schedule's old name (a misnomer: no momentum cycle), in configs saved before
        return cls.LINEAR if value == "onecycle" else None


@dataclass
class TrainConfig:
    model: str = "convnet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "sample"
    val_fraction: float = 0.1  # share of the labelled images held out, stratified by class
    epochs: int = 10
    batch_size: int = 256  # global: per-device batch x grad_accum x world size
    grad_accum: int = 1
    eval_batch_size: int = 1024  # per device
    precision: Precision = Precision.AUTO
    channels_last: bool = True
    compile: bool = False  # torch.compile the training model (accelerate's dynamo plugin, inductor)
    sync_bn: bool = False  # DDP: BatchNorm over the global batch (SyncBatchNorm); saved as plain BatchNorm
    optimizer: Optimizer = Optimizer.SGD
    lr: float = 0.1  # peak learning rate at the global batch size above
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Schedule = Schedule.LINEAR
    warmup_fraction: float = 0.2  # share of optimizer steps spent warming up
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    ema: float = 0.0  # EMA decay per optimizer step (e.g. 0.999); 0 = off
    # sharpness-aware minimisation (engine/sam.py): the ascent's radius rho (e.g. 0.05), 0 = off; it runs from
    # this share of the optimizer steps on (0: all of them), each step then costing about two
    sam: float = 0.0
    sam_start: float = 0.0
    augment: bool = True  # random horizontal flip + translation
    shift: int = 2  # max translation in pixels (pad + crop)
    erase: float = 0.0  # probability of random erasing per image
    tta: Tta = Tta.NONE
    # mixup / cutmix (engine/mixing.py): Beta(alpha, alpha) concentrations, 0 = off; per-image probability
    # of mixing; with both on, the probability of cutmix over mixup
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    mix_switch_prob: float = 0.5
    folds: int = (
        0  # K >= 2: stratified K-fold cross-validation, one model per fold in OUT/fold-i (engine/folds.py)
    )
    fold: int | None = None  # which fold this run validates on (set by the folds driver, one run per fold)
    private_test: int = 0  # images held out of everything (a fixed seeded stratified pick), scored at the end
    # distillation (engine/distill.py): teacher run directories (comma-separated; a folds run means its folds)
    teacher: str | None = None
    distill_temperature: float = 1.0
    distill_weight: float = 0.5  # share of the teacher's term in the loss; the rest is the true labels'
    # the teacher predicts every augmented (and mixed) batch the student trains on, as the student sees it,
    # instead of the clean images once (consistent teaching); costs a teacher forward per step
    distill_augmented: bool = False
    # a run or model directory whose weights start this model instead of random ones (fine-tuning, e.g. a
    # student that starts from its own architecture's trained run); same model, kwargs and classes
    init: str | None = None
    early_stop: int = 0  # stop after this many epochs without a better validation accuracy; 0 = off
    seed: int = 0
    # the validation split's and the folds' seed; None = `seed`. Runs with different seeds and one split_seed
    # validate on the same images, none of which any of them trained on (an ensemble's honest validation)
    split_seed: int | None = None
    out: str = "runs/{model}"
    resume: str | None = None  # a `last/` directory, a run directory, or "auto"
    log_with: str | None = None  # an accelerate tracker: tensorboard, wandb, ...
    dist_timeout: float = 1800.0  # seconds a collective waits for a lost peer before the process group fails
    quiet: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, enum.Enum) else value
        return out

    def data_seed(self) -> int:
        """The seed that picks the validation split and the folds: `split_seed`, else `seed`."""
        return self.seed if self.split_seed is None else self.split_seed

    def run_dir(self) -> Path:
        """`out` with `{model}` filled in (the only placeholder; `--out` refuses any other)."""
        return Path(format_out_template(self.out, "--out", model=self.model))


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)
SEED_MAX = (
    2**32 - 1
)  # numpy's SeedSequence and torch.manual_seed both take it; the split and dropout streams use it
# accelerate's tracker names (accelerate.utils.LoggerType; tests/test_config_validation.py holds the two equal)
TRACKERS = (
    "all",
    "aim",
    "tensorboard",
    "wandb",
    "comet_ml",
    "mlflow",
    "clearml",
    "dvclive",
    "swanlab",
    "trackio",
)
_SHOWN = (
    reprlib.Repr()
)  # a value in a message: bounded (a few items per level, a few levels), never a 9**9 list
_SHOWN.maxstring = _SHOWN.maxother = 60


def shown(value: Any) -> str:
    """`value` as a message shows it: its repr, cut short."""
    return _SHOWN.repr(value)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "")):
            return None
        return _coerce(key, value, args[0])
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        # YAML reads an unquoted `no` (precision: no, --set precision=no) as false
        if isinstance(value, bool):
            value = "yes" if value else "no"
        try:
            return hint(value.value if isinstance(value, enum.Enum) else str(value))
        except ValueError:
            choices = ", ".join(m.value for m in hint)
            raise InputError(f"config key {key!r}: {shown(value)} is not one of {choices}") from None
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise InputError(f"config key {key!r}: {shown(value)} is not a boolean (true/false)")
    if hint in (int, float):
        kind = "a number" if hint is float else "an integer"
        # int(1.7) is 1: a fractional value for an integer key (epochs: 1.7) is refused, never truncated
        fractional = hint is int and isinstance(value, float) and not value.is_integer()
        if isinstance(value, bool) or fractional or not isinstance(value, (int, float, str)):
            raise InputError(f"config key {key!r}: {shown(value)} is not {kind}")
        try:
            number = float(value) if hint is float else int(value)
        except (TypeError, ValueError, OverflowError):  # int(float("inf")) overflows
            raise InputError(f"config key {key!r}: {shown(value)} is not {kind}") from None
        if hint is float and not math.isfinite(number):
            raise InputError(f"config key {key!r}: {shown(value)} is not a finite number")
        return number
    if hint is str:
        if isinstance(value, (dict, list)):  # YAML `model: [cnn]`
            raise InputError(f"config key {key!r}: {shown(value)} is not a single value")
        return str(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"config key {key!r}: expected a mapping, got {shown(value)}")
        return _checked_kwargs(key, value)
    return value


def _checked_kwargs(key: str, value: dict) -> dict[str, Any]:
    """A `model_kwargs` mapping: option names to scalars or flat lists of scalars (`filters: [16, 32]`); the
    model's builder checks their types (models.registry.check_model_kwargs)."""
    for name, item in value.items():
        items = item if isinstance(item, list) else [item]
        if not isinstance(name, str) or not all(isinstance(i, (bool, int, float, str)) for i in items):
            raise InputError(f"config key {key}.{name}: {shown(item)} is not a value or a list of values")
    return dict(value)


def _parse_scalar(text: str, pair: str) -> Any:
    """The value of `--set KEY=VALUE` as YAML reads it (`0.1` a number, `no` false), strictly."""
    import yaml

    from fashiondist.config_yaml import strict_load

    try:
        return strict_load(text) if text != "" else ""
    except yaml.YAMLError as err:
        raise InputError(
            f"--set {pair}: the value is not valid YAML ({getattr(err, 'problem', None) or err})"
        ) from None


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any], source: str = "override") -> TrainConfig:
    """Return a copy of `cfg` with `overrides` applied. Keys may be dotted (`model_kwargs.width`)."""
    if not isinstance(overrides, dict):
        raise InputError(f"{source}: expected a mapping of config keys to values, got {shown(overrides)}")
    cfg = dataclasses.replace(cfg, model_kwargs=dict(cfg.model_kwargs))
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise InputError(f"{source}: config key {shown(key)} is not a name")
        head, _, rest = key.partition(".")
        if head not in _FIELDS:
            known = ", ".join(sorted(_FIELDS))
            raise InputError(f"{source}: unknown config key {key!r}", hint=f"known keys: {known}")
        if rest:
            if _HINTS[head] is not dict[str, Any] and typing.get_origin(_HINTS[head]) is not dict:
                raise InputError(f"{source}: config key {head!r} has no sub-keys (got {key!r})")
            getattr(cfg, head).update(_checked_kwargs(head, {rest: value}))
            continue
        setattr(cfg, head, _coerce(key, value, _HINTS[head]))
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    checks = [
        (cfg.epochs >= 1, "epochs", "must be at least 1"),
        (cfg.batch_size >= 1, "batch_size", "must be at least 1"),
        (cfg.grad_accum >= 1, "grad_accum", "must be at least 1"),
        (cfg.eval_batch_size >= 1, "eval_batch_size", "must be at least 1"),
        (0.0 < cfg.val_fraction < 1.0, "val_fraction", "must be between 0 and 1"),
        (cfg.lr > 0, "lr", "must be positive"),
        (0.0 <= cfg.warmup_fraction < 1.0, "warmup_fraction", "must be in [0, 1)"),
        (0.0 <= cfg.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)"),
        (0.0 <= cfg.ema < 1.0, "ema", "must be in [0, 1)"),
        (cfg.sam >= 0.0, "sam", "must be >= 0 (0 = off)"),
        (0.0 <= cfg.sam_start < 1.0, "sam_start", "must be in [0, 1)"),
        (0.0 <= cfg.erase <= 1.0, "erase", "must be in [0, 1]"),
        (cfg.shift >= 0, "shift", "must be >= 0"),
        (cfg.dist_timeout > 0, "dist_timeout", "must be a positive number of seconds"),
        (cfg.early_stop >= 0, "early_stop", "must be >= 0"),
        (0 <= cfg.seed <= SEED_MAX, "seed", f"must be in 0..{SEED_MAX} (2**32 - 1)"),
        (
            cfg.split_seed is None or 0 <= cfg.split_seed <= SEED_MAX,
            "split_seed",
            f"must be in 0..{SEED_MAX}",
        ),
        (cfg.weight_decay >= 0.0, "weight_decay", "must be >= 0"),
        (0.0 <= cfg.momentum < 1.0, "momentum", "must be in [0, 1)"),
        (cfg.grad_clip >= 0.0, "grad_clip", "must be >= 0 (0 = off)"),
        (_known_trackers(cfg.log_with), "log_with", f"is not an accelerate tracker ({', '.join(TRACKERS)})"),
        (cfg.mixup >= 0 and cfg.cutmix >= 0, "mixup" if cfg.mixup < 0 else "cutmix", "must be >= 0"),
        (0.0 <= cfg.mix_prob <= 1.0, "mix_prob", "must be in [0, 1]"),
        (0.0 <= cfg.mix_switch_prob <= 1.0, "mix_switch_prob", "must be in [0, 1]"),
        (cfg.folds == 0 or cfg.folds >= 2, "folds", "must be 0 (one split) or at least 2"),
        (cfg.fold is None or 0 <= cfg.fold < cfg.folds, "fold", "needs folds >= 2 and must be in [0, folds)"),
        (cfg.private_test >= 0, "private_test", "must be >= 0"),
        (cfg.distill_temperature > 0, "distill_temperature", "must be positive"),
        (0.0 <= cfg.distill_weight <= 1.0, "distill_weight", "must be in [0, 1]"),
        (cfg.teacher or not cfg.distill_augmented, "distill_augmented", "needs a --teacher to distil"),
    ]
    for ok, key, problem in checks:
        if not ok:
            raise InputError(f"config key {key!r}: {shown(getattr(cfg, key))} {problem}")
    cfg.run_dir()  # an unknown placeholder in `out` fails here, before any work


def _known_trackers(log_with: str | None) -> bool:
    """Whether `log_with` is empty or names accelerate trackers (one, or several separated by commas)."""
    names = [name.strip() for name in (log_with or "").split(",") if name.strip()]
    return all(name in TRACKERS for name in names)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's mapping: UTF-8 text, YAML without aliases (`*name`: a few bytes of nested aliases
    expand to billions of items) and without a key given twice in one mapping (the last would silently win)."""
    import yaml

    from fashiondist.config_yaml import strict_load

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise InputError(
            f"{path}, line {line}: not UTF-8 text (byte 0x{raw[err.start]:02x})", hint="save it as UTF-8"
        ) from None
    try:
        data = strict_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "not valid YAML"
        raise InputError(f"{path}{where}: {problem}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config file must be a mapping of keys to values")
    return data


def parse_set_options(pairs: list[str]) -> dict[str, Any]:
    """`["lr=0.1", "model_kwargs.width=64"]` -> `{"lr": 0.1, "model_kwargs.width": 64}`."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set lr=0.05")
        out[key.strip()] = _parse_scalar(value, pair)
    return out


def resolve_config(
    model: str | None = None,
    config_file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    recipe_for=None,
) -> TrainConfig:
    """The config of one run: defaults < the model's recipe < YAML file < its `per_model` entry < flags.

    `model` names the variant (else the file's or the default); `recipe_for(name)` returns that variant's
    recipe (the models registry's `model_recipe`; passed in because this base module imports no stage).
    Flags whose value is None were not given.
    """
    data = load_yaml(config_file) if config_file is not None else {}
    source = str(config_file)
    data.pop("models", None)  # the variants of a multi-model run: read by the CLI (`sweep_models`)
    per_model = data.pop("per_model", None) or {}
    if not isinstance(per_model, dict):
        raise InputError(f"{source}: per_model must map model names to overrides")
    for variant, entry in per_model.items():
        if not isinstance(entry, dict):
            raise InputError(
                f"{source}: per_model.{variant} must be a mapping of config keys, got {shown(entry)}"
            )
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    name = model or flags.get("model") or data.get("model") or TrainConfig.model
    if not isinstance(name, str):
        raise InputError(f"{source}: config key 'model': {shown(name)} is not a model name")
    cfg = TrainConfig(model=name)
    if recipe_for is not None:
        cfg = apply_overrides(cfg, recipe_for(name), source=f"model recipe of {name}")
    cfg = apply_overrides(cfg, data, source=source)
    cfg = apply_overrides(cfg, per_model.get(name, {}), source=f"{source}: per_model.{name}")
    cfg = apply_overrides(cfg, flags, source="command line")
    cfg.model = name
    return cfg


def sweep_models(config_file: str | Path | None) -> list[str] | None:
    """The `models:` list of a config file, if it has one."""
    if config_file is None:
        return None
    models = load_yaml(config_file).get("models")
    if models is None:
        return None
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise InputError(f"{config_file}: models must be a list of model names")
    return models


def load_saved_config(path: str | Path) -> TrainConfig:
    """A run's resolved config as `save_yaml` wrote it, every key checked like any config file's."""
    return apply_overrides(TrainConfig(), load_yaml(path), source=str(path))


def save_yaml(cfg: TrainConfig, path: str | Path) -> None:
    import yaml

    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
