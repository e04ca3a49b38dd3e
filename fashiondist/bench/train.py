"""`bench train`: training images/s of three input pipelines around the same model step, side by side.

    engine      the engine's device-resident pipeline: TrainBatches (uint8 images on the device, a seeded
                permutation per epoch) + apply_augment (flip, 2 px shift, erase: whole-batch tensor ops) +
                the trainer's step through accelerate (prepare, accumulate, backward), with its bookkeeping
    bare_step   the ceiling: the same prepared model and optimizer stepping on one fixed, ready batch
    dataloader  what most users write: a per-sample Dataset of PIL images with torchvision transforms
                (RandomHorizontalFlip, RandomCrop(28, padding=2), PILToTensor) in a torch DataLoader
                (num_workers 0 as on a laptop; `--loader-workers 0,2` adds 2), feeding the same bare step
    keras       with `--keras PYTHON`: the notebook's own Keras model of the same variant (cnn, cnn-dropout),
                trained by `model.fit` under that interpreter in a child process (`keras_twin.py`)

Ratios: engine/bare_step (how close the pipeline gets to the ceiling), engine/dataloader (what the engine
saves over the usual code) and engine/keras (against the notebook's framework, on the same machine in the
same run); and, per pipeline, each mixed precision over fp32 ("no").

Method: accelerate fixes the precision for a process's life, so each (repeat, precision) block gets a fresh
accelerator (accelerate's state reset) and fresh seeded models; within a block each model measures its
pipelines one after another, each after its own warm-up steps; the order of precisions and of pipelines
rotates from repeat to repeat. One process only (not under `accelerate launch`).

The engine loop below is the body of `Trainer._train_epoch`, line for line minus the progress bar, the
preemption check and the periodic non-finite check (they read a flag or sync every 25 steps); the engine
does not expose its step as a function, so keep the two in step when the trainer's loop changes.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from fashiondist.bench.child_process import last_line
from fashiondist.bench.keras_twin import TWINS as KERAS_TWINS
from fashiondist.bench.stats import Stat, rotation, timed, torch_threads
from fashiondist.config import Precision, TrainConfig, resolve_config
from fashiondist.data.sources import Dataset, load_data
from fashiondist.engine.batches import BatchLayout, TrainBatches
from fashiondist.engine.ema import Ema
from fashiondist.engine.trainer import build_optimizer, make_accelerator, micro_step, seed_step
from fashiondist.errors import FashiondistError, InputError
from fashiondist.models.registry import create_model, model_recipe

ENGINE = "engine"
BARE = "bare_step"
KERAS = "keras"
_FLOAT_PRECISION = Precision.NO.value


def loader_name(workers: int) -> str:
    return f"dataloader_w{workers}"


@dataclass(frozen=True)
class TrainBench:
    """What `bench train` measures."""

    models: tuple[str, ...]
    data: str = "sample"
    batch_size: int = 128
    steps: int = 50  # timed optimizer steps per measurement
    warmup: int = 5  # untimed steps before each measurement
    precisions: tuple[str, ...] = ("no", "bf16")
    repeats: int = 3
    loader_workers: tuple[int, ...] = (0,)
    seed: int = 0
    threads: int | None = None  # torch intra-op threads; None: torch's default (one per core)
    keras: str | None = None  # a Python interpreter with Keras 3: adds the `keras` pipeline

    @property
    def pipelines(self) -> tuple[str, ...]:
        keras = (KERAS,) if self.keras else ()
        return (ENGINE, BARE, *(loader_name(w) for w in self.loader_workers), *keras)

    def check(self) -> None:
        for key in ("batch_size", "steps", "repeats"):
            if getattr(self, key) < 1:
                raise InputError(f"--{key.replace('_', '-')} {getattr(self, key)}: must be at least 1")
        if self.warmup < 0:
            raise InputError(f"--warmup {self.warmup}: must be >= 0")
        if any(w < 0 for w in self.loader_workers):
            raise InputError("--loader-workers: worker counts must be >= 0")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise InputError("bench train measures one process; run it without accelerate launch or torchrun")
        if Precision.FP16.value in self.precisions and not torch.cuda.is_available():
            raise InputError("--precision fp16: needs a CUDA GPU (on the CPU use bf16)")
        if self.keras:
            strangers = [m for m in self.models if m not in KERAS_TWINS]
            if strangers:
                raise InputError(
                    f"--keras: {', '.join(strangers)} has no Keras twin; only the notebook's "
                    f"{' and '.join(KERAS_TWINS)} do (drop the others from --models)"
                )


@dataclass
class _Setup:
    """One model ready to train: the engine's config, accelerator, prepared model and optimizer, and its batches."""

    cfg: TrainConfig
    acc: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batches: TrainBatches
    fixed: tuple[torch.Tensor, torch.Tensor]  # one ready batch on the device: uint8 [B,1,H,W], int64 [B]
    closers: list[Callable[[], None]] = field(default_factory=list)

    def bare_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Forward, backward, optimizer step: the least a training step can do (still through accelerate, so
        autocast and fp16 loss scaling are the engine's)."""
        loss, _ = self.model(x, targets=y, label_smoothing=self.cfg.label_smoothing)
        self.acc.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def _reset_accelerate() -> None:
    """Forget the process's accelerate state so the next Accelerator may take another mixed precision."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def _config(bench: TrainBench, name: str, precision: str) -> TrainConfig:
    """The variant's own recipe (its optimizer, label smoothing, augmentation) at the benchmark's batch and precision."""
    flags = {"batch_size": bench.batch_size, "precision": precision, "seed": bench.seed, "data": bench.data}
    return resolve_config(name, None, flags, recipe_for=model_recipe)


def _setup(cfg: TrainConfig, acc: Accelerator, data: Dataset) -> _Setup:
    """What `Trainer.__init__` does for one process, without the validation split (every image trains here)."""
    from accelerate.utils import set_seed

    layout = BatchLayout.of(cfg.batch_size, cfg.grad_accum, acc.num_processes)
    batches = TrainBatches(
        data.images,
        data.labels,
        layout,
        acc.process_index,
        acc.device,
        cfg.seed,
        cfg.augment,
        cfg.shift,
        cfg.erase,
    )
    set_seed(cfg.seed)
    model = create_model(cfg.model, data.num_classes, **cfg.model_kwargs)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = model.to(acc.device)
    optimizer = build_optimizer(cfg, model)
    model, optimizer = acc.prepare(model, optimizer)
    acc.gradient_accumulation_steps = cfg.grad_accum
    acc.step = 0
    model.train()
    fixed = next(batches.epoch(0))
    return _Setup(cfg, acc, model, optimizer, batches, (fixed[0].clone(), fixed[1].clone()))


def _endless(batches: TrainBatches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The engine's micro-batches epoch after epoch (each epoch draws its permutation and augmentation plan)."""
    for epoch in itertools.count():
        yield from batches.epoch(epoch)


class _EngineLoop:
    """`Trainer._train_epoch`'s step (the engine's `seed_step` + `micro_step`) with its running sums and EMA."""

    def __init__(self, setup: _Setup):
        self.s = setup
        device = setup.acc.device
        self.batches = _endless(setup.batches)
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.step_t = torch.tensor(0, device=device)
        self.micro = 0
        self.step = 0
        self.total_steps = setup.batches.steps_per_epoch * setup.cfg.epochs
        self.ema = Ema(setup.acc.unwrap_model(setup.model), setup.cfg.ema) if setup.cfg.ema > 0 else None

    def __call__(self) -> None:
        s, cfg, acc = self.s, self.s.cfg, self.s.acc
        x, y = next(self.batches)
        if self.micro % cfg.grad_accum == 0:
            seed_step(cfg.seed, self.step, acc.process_index)
        self.micro += 1
        loss, logits = micro_step(acc, s.model, s.optimizer, x, y, cfg, self.step % self.total_steps, self.total_steps)
        count = torch.tensor(len(y), dtype=torch.float64, device=acc.device)
        self.sums += torch.stack([loss.double() * len(y), (logits.argmax(1) == y).sum().double(), count])
        self.first_bad = torch.where(
            (self.first_bad < 0) & ~torch.isfinite(loss), self.step_t, self.first_bad
        )
        if acc.sync_gradients:
            self.step += 1
            self.step_t += 1
            if self.ema is not None:
                self.ema.update(acc.unwrap_model(s.model), self.step)


class PerSampleImages(torch.utils.data.Dataset):
    """The usual map-style Dataset: one PIL image at a time through torchvision transforms, as
    `torchvision.datasets.FashionMNIST` serves it. PILToTensor stands in for ToTensor: our models take 0..255
    pixels and normalise inside, and it skips ToTensor's per-image division, so it favours this pipeline."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        from PIL import Image
        from torchvision import transforms

        self.to_image = Image.fromarray  # uint8 [28, 28] -> an 8-bit grayscale ("L") PIL image
        self.images = images
        self.labels = labels
        self.transform = transforms.Compose(
            [
                transforms.RandomHorizontalFlip(),
                transforms.RandomCrop(28, padding=2),
                transforms.PILToTensor(),
            ]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.to_image(self.images[index])), int(self.labels[index])


def _loader_batches(
    data: Dataset, batch_size: int, workers: int, device: torch.device, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A DataLoader as users write it (shuffle, drop_last, pinned memory for a GPU), epoch after epoch."""
    loader = torch.utils.data.DataLoader(
        PerSampleImages(data.images, data.labels),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
    )
    while True:
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _pipeline(name: str, setup: _Setup, data: Dataset) -> Callable[[], None]:
    """One optimizer step of pipeline `name`, as a callable (batch fetch included)."""
    if name == ENGINE:
        return _EngineLoop(setup)
    if name == BARE:
        x, y = setup.fixed
        return lambda: setup.bare_step(x, y)
    workers = int(name.removeprefix("dataloader_w"))
    batches = _loader_batches(data, setup.cfg.batch_size, workers, setup.acc.device, setup.cfg.seed)
    setup.closers.append(batches.close)  # shuts a loader's worker processes down

    def step() -> None:
        x, y = next(batches)
        setup.bare_step(x, y)

    return step


def _measure(bench: TrainBench, step: Callable[[], None], device: torch.device) -> float:
    """Images/s of `steps` timed calls after `warmup` untimed ones."""
    for _ in range(bench.warmup):
        step()
    seconds = timed(step, bench.steps, device)
    return bench.steps * bench.batch_size / seconds


def run_train_bench(bench: TrainBench, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every (model, precision, pipeline) `repeats` times, interleaved; return the JSON-ready result."""
    bench.check()
    data = load_data(bench.data)
    if data.labels is None:
        raise InputError(f"--data {bench.data}: has no labels, so it cannot be trained on")
    if len(data.images) < bench.batch_size:
        raise InputError(
            f"--batch-size {bench.batch_size} is larger than the {len(data.images)} images of --data {bench.data}"
        )
    with tempfile.TemporaryDirectory(prefix="fashiondist-keras-") as tmp, torch_threads(bench.threads):
        twin = _KerasTwin(bench.keras, data, Path(tmp)) if bench.keras else None
        samples, configs, device = _measure_all(bench, data, log, twin)
    result = _result(bench, data, samples, configs, device)
    if twin is not None:
        result["settings"]["keras"] = {"python": twin.python, "version": twin.version}
    return result


class _KerasTwin:
    """The `keras` pipeline: `keras_twin.py` under another interpreter, on this benchmark's images (saved once)."""

    def __init__(self, python: str, data: Dataset, tmp: Path):
        self.python = python
        self.num_classes = data.num_classes
        probe = _run([python, "-c", "import keras, numpy; print(keras.__version__, keras.backend.backend())"])
        if probe.returncode != 0:
            last = last_line(probe.stderr, "no output")
            raise InputError(f"--keras {python}: cannot import keras and numpy there ({last})")
        self.version = probe.stdout.strip()
        self.images, self.labels = tmp / "images.npy", tmp / "labels.npy"
        np.save(self.images, np.ascontiguousarray(data.images))
        np.save(self.labels, np.asarray(data.labels))

    def rate(self, bench: TrainBench, name: str, precision: str) -> float:
        settings = {
            "model": name, "precision": precision, "num_classes": self.num_classes, "batch_size": bench.batch_size,
            "warmup": bench.warmup, "steps": bench.steps, "seed": bench.seed,
        }  # fmt: skip
        script = str(Path(__file__).with_name("keras_twin.py"))
        done = _run([self.python, script, str(self.images), str(self.labels), json.dumps(settings)])
        if done.returncode != 0:
            last = last_line(done.stderr, "no output")
            raise FashiondistError(f"--keras {self.python}: the Keras {name} {precision} run failed ({last})")
        return float(json.loads(done.stdout.strip().splitlines()[-1])["images_per_s"])


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    except OSError as e:  # no such interpreter, not executable
        raise InputError(f"--keras {argv[0]}: cannot run it ({e.strerror})") from None


def _measure_all(
    bench: TrainBench, data: Dataset, log: Callable[[str], None], twin: _KerasTwin | None = None
) -> tuple[dict[tuple[str, str, str], list[float]], dict[tuple[str, str], TrainConfig], str]:
    samples: dict[tuple[str, str, str], list[float]] = {}
    device = None
    configs: dict[tuple[str, str], TrainConfig] = {}
    for repeat in range(bench.repeats):
        for precision in rotation(bench.precisions, repeat):
            _reset_accelerate()
            acc = None
            for name in bench.models:
                cfg = _config(bench, name, precision)
                configs[(name, precision)] = cfg
                acc = acc or make_accelerator(cfg)
                device = acc.device
                setup = _setup(cfg, acc, data)
                try:
                    for pipeline in rotation(bench.pipelines, repeat):
                        if pipeline == KERAS and twin is not None:
                            rate = twin.rate(bench, name, precision)
                        else:
                            rate = _measure(bench, _pipeline(pipeline, setup, data), acc.device)
                        samples.setdefault((name, precision, pipeline), []).append(rate)
                finally:
                    for close in setup.closers:
                        close()
                shown = ", ".join(f"{p} {samples[(name, precision, p)][-1]:,.0f}" for p in bench.pipelines)
                log(f"repeat {repeat + 1}/{bench.repeats} {name} {precision}: {shown} images/s")
    _reset_accelerate()
    return samples, configs, str(device)


def _result(
    bench: TrainBench,
    data: Dataset,
    samples: dict[tuple[str, str, str], list[float]],
    configs: dict[tuple[str, str], TrainConfig],
    device: str,
) -> dict[str, Any]:
    rows = []
    for name in bench.models:
        for precision in bench.precisions:
            got = {p: samples[(name, precision, p)] for p in bench.pipelines}
            ratios = {f"{ENGINE}/{BARE}": Stat.ratio(got[ENGINE], got[BARE])}
            for w in bench.loader_workers:
                ratios[f"{ENGINE}/{loader_name(w)}"] = Stat.ratio(got[ENGINE], got[loader_name(w)])
            if KERAS in got:
                ratios[f"{ENGINE}/{KERAS}"] = Stat.ratio(got[ENGINE], got[KERAS])
            cfg = configs[(name, precision)]
            rows.append(
                {
                    "model": name,
                    "precision": precision,
                    "optimizer": cfg.optimizer.value,
                    "augment": {"flip": cfg.augment, "shift": cfg.shift, "erase": cfg.erase},
                    "images_per_s": {p: Stat.of(v).to_dict() for p, v in got.items()},
                    "ratios": {k: v.to_dict() for k, v in ratios.items()},
                }
            )
    precision_ratios = []
    for name in bench.models:
        for precision in bench.precisions:
            if precision == _FLOAT_PRECISION or _FLOAT_PRECISION not in bench.precisions:
                continue
            precision_ratios.append(
                {
                    "model": name,
                    "ratio": f"{precision}/{_FLOAT_PRECISION}",
                    "by_pipeline": {
                        p: Stat.ratio(
                            samples[(name, precision, p)], samples[(name, _FLOAT_PRECISION, p)]
                        ).to_dict()
                        for p in bench.pipelines
                    },
                }
            )
    return {
        "benchmark": "train",
        "settings": {
            "models": list(bench.models),
            "data": bench.data,
            "images": len(data.images),
            "num_classes": data.num_classes,
            "batch_size": bench.batch_size,
            "steps": bench.steps,
            "warmup_steps": bench.warmup,
            "repeats": bench.repeats,
            "precisions": list(bench.precisions),
            "pipelines": list(bench.pipelines),
            "device": device,
            "torch_threads": bench.threads or torch.get_num_threads(),
            "unit": "images/s (training: forward + backward + optimizer step)",
        },
        "results": rows,
        "precision_ratios": precision_ratios,
    }


def train_tables(result: dict[str, Any], caption: str) -> list[Any]:
    """Rich tables: images/s per pipeline with the ratios, then each mixed precision against fp32."""
    from rich.table import Table

    from fashiondist.bench.report import fmt_rate, fmt_ratio

    settings = result["settings"]
    # the DataLoaders, then Keras when it was measured
    others = [p for p in settings["pipelines"] if p not in (ENGINE, BARE)]
    table = Table(
        title=f"training images/s, batch {settings['batch_size']}, {settings['steps']} timed steps, "
        f"median and min-max of {settings['repeats']} repeats on {settings['device']}",
        caption=caption,
    )
    names = {p: p.replace("dataloader_w", "DataLoader w").replace(KERAS, "Keras") for p in others}
    for column in (
        "model",
        "precision",
        "engine",
        "bare step",
        *names.values(),
        "engine / bare",
        *(f"engine / {names[p]}" for p in others),
    ):
        table.add_column(column, justify="left" if column in ("model", "precision") else "right")
    for row in result["results"]:
        rates = [fmt_rate(_stat(row["images_per_s"][p])) for p in settings["pipelines"]]
        ratios = [fmt_ratio(_stat(row["ratios"][f"{ENGINE}/{p}"])) for p in (BARE, *others)]
        table.add_row(row["model"], row["precision"], *rates, *ratios)
    tables: list[Any] = [table]
    if result["precision_ratios"]:
        mixed = Table(title="mixed precision speed-up over fp32 (paired per repeat)")
        shown = {
            p: p.replace("dataloader_w", "DataLoader w").replace("_", " ").replace(KERAS, "Keras")
            for p in settings["pipelines"]
        }
        for column in ("model", "ratio", *shown.values()):
            mixed.add_column(column, justify="left" if column in ("model", "ratio") else "right")
        for row in result["precision_ratios"]:
            mixed.add_row(
                row["model"],
                row["ratio"],
                *(fmt_ratio(_stat(row["by_pipeline"][p])) for p in settings["pipelines"]),
            )
        tables.append(mixed)
    return tables


def _stat(d: dict[str, Any]) -> Stat:
    return Stat.of(d["samples"])
