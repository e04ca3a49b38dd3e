"""`bench train`: training images/s of three input pipelines around the same model step, side by side.

    engine      what `fashiondist train` runs: TrainBatches (uint8 images on the device, a seeded permutation
                per epoch) + apply_augment (flip, 2 px shift, erase: whole-batch tensor ops) + the trainer's
                own optimizer step (`PreparedTraining.step`: accumulate, backward, lr, clip, tally, EMA)
    bare_step   the ceiling: the same prepared model and optimizer stepping on one fixed, ready batch
    dataloader  what most users write: a per-sample Dataset of PIL images with torchvision transforms
                (RandomHorizontalFlip, RandomCrop(28, padding=2), PILToTensor) in a torch DataLoader
                (num_workers 0 as on a laptop; `--loader-workers 0,2` adds 2), feeding the same bare step
    keras       with `--keras PYTHON`: the notebook's own Keras model of the same variant (cnn, cnn-dropout),
                trained by `model.fit` under that interpreter in a child process (`keras_twin.py`)

Ratios: engine/bare_step (how close the pipeline gets to the ceiling), engine/dataloader (what the engine
saves over the usual code) and engine/keras (against the notebook's framework, on the same machine in the
same run); and, per pipeline, each mixed precision over fp32 ("no").

Method: accelerate fixes the precision for a process's life, so each (repeat, precision) block runs in a
child process of its own (`python -m fashiondist.bench.train BLOCK.json`: one accelerator, fresh seeded
models, the images from .npy files the parent wrote once; its rates come back as a JSON file). Within a
block, per model, every pipeline warms up, then the timed steps run in windows of `--window` steps (25),
the pipelines taking turns window by window, Keras's child included (it trains a window per line it
reads): on a VM whose speed swings by 2x within seconds, back-to-back runs of 200 steps per pipeline gave
engine/bare ratios from 0.68 to 1.19 in one benchmark, so each pipeline's time is now spread over the same
stretch of the machine's good and bad moments. The order of precisions rotates from repeat to repeat, and
the order of pipelines from window to window. One process at a time (not under `accelerate launch`): the
parent waits for each child before it starts the next.

Every pipeline trains a model set up by the engine's own `prepare_training` (model, channels_last, optimizer,
`accelerator.prepare`, device batches), as `Trainer` does; this file holds no copy of the set-up or the step.
Around each step the trainer adds only a progress bar, a preemption check and a non-finite check (they read
a flag or sync every 25 steps), which the engine pipeline leaves out.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fashiondist.atomic_io import write_json
from fashiondist.bench.child_process import child_env, last_line
from fashiondist.bench.keras_twin import TWINS as KERAS_TWINS
from fashiondist.bench.stats import Stat, rotation, timed, torch_threads
from fashiondist.config import Precision, TrainConfig, resolve_config
from fashiondist.data.sources import Dataset, load_data
from fashiondist.engine.batches import TrainBatches
from fashiondist.engine.prepared import PreparedTraining, TrainTally, prepare_training
from fashiondist.engine.trainer import make_accelerator
from fashiondist.errors import FashiondistError, InputError
from fashiondist.models.registry import model_recipe

ENGINE = "engine"
BARE = "bare_step"
KERAS = "keras"
_FLOAT_PRECISION = Precision.NO.value
Samples = dict[tuple[str, str, str], list[float]]  # (model, precision, pipeline) -> images/s per repeat
Rates = dict[str, dict[str, float]]  # one block's images/s: model -> pipeline -> rate


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
    window: int = 25  # timed steps a pipeline runs before the next takes its turn
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
        for key in ("batch_size", "steps", "repeats", "window"):
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


def _config(bench: TrainBench, name: str, precision: str) -> TrainConfig:
    """The variant's own recipe (its optimizer, label smoothing, augmentation) at the benchmark's batch and precision."""
    flags = {"batch_size": bench.batch_size, "precision": precision, "seed": bench.seed, "data": bench.data}
    return resolve_config(name, None, flags, recipe_for=model_recipe)


def _endless(batches: TrainBatches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The engine's micro-batches epoch after epoch (each epoch draws its permutation and augmentation plan)."""
    for epoch in itertools.count():
        yield from batches.epoch(epoch)


class _EngineSteps:
    """The `engine` pipeline: the trainer's own optimizer step (`PreparedTraining.step`: dropout seed,
    accumulation, lr schedule, clipping, running tally, EMA) on the engine's batches, epoch after epoch."""

    def __init__(self, training: PreparedTraining):
        self.training = training
        self.micro_batches = _endless(training.batches)
        self.tally = TrainTally(training.acc.device, 0)
        self.step = 0

    def __call__(self) -> None:
        # the schedule starts over after the run's planned steps, so a long benchmark never runs off its end
        self.training.step(self.micro_batches, self.step % self.training.total_steps, self.tally)
        self.step += 1


def _bare_step(training: PreparedTraining, x: torch.Tensor, y: torch.Tensor) -> None:
    """Forward, backward, optimizer step: the least a training step can do (still through accelerate, so
    autocast and fp16 loss scaling are the engine's)."""
    loss, _ = training.model(x, targets=y, label_smoothing=training.cfg.label_smoothing)
    training.acc.backward(loss)
    training.optimizer.step()
    training.optimizer.zero_grad(set_to_none=True)


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


def _pipeline(
    name: str, training: PreparedTraining, data: Dataset, closers: list[Callable[[], None]]
) -> Callable[[], None]:
    """One optimizer step of pipeline `name`, as a callable (batch fetch included); what must be shut down
    afterwards goes on `closers`."""
    if name == ENGINE:
        return _EngineSteps(training)
    if name == BARE:
        x, y = (
            t.clone() for t in next(training.batches.epoch(0))
        )  # one ready batch: uint8 [B,1,H,W], int64 [B]
        return lambda: _bare_step(training, x, y)
    workers = int(name.removeprefix("dataloader_w"))
    batches = _loader_batches(data, training.cfg.batch_size, workers, training.acc.device, training.cfg.seed)
    closers.append(batches.close)  # shuts a loader's worker processes down

    def step() -> None:
        x, y = next(batches)
        _bare_step(training, x, y)

    return step


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
    with tempfile.TemporaryDirectory(prefix="fashiondist-bench-train-") as tmp:
        files = _DataFiles.save(data, Path(tmp))
        twin = _KerasTwin.probe(bench.keras, files) if bench.keras else None
        samples, device = _measure_all(bench, files, log, twin)
    configs = {(name, p): _config(bench, name, p) for name in bench.models for p in bench.precisions}
    result = _result(bench, data, samples, configs, device)
    if twin is not None:
        result["settings"]["keras"] = {"python": twin.python, "version": twin.version}
    return result


@dataclass(frozen=True)
class _DataFiles:
    """The benchmark's images, saved once for the children: each block's child and the Keras twin load them."""

    images: str  # .npy, uint8 [N, 28, 28]
    labels: str  # .npy, int64 [N]
    num_classes: int
    class_names: tuple[str, ...]
    source: str

    @classmethod
    def save(cls, data: Dataset, tmp: Path) -> _DataFiles:
        images, labels = tmp / "images.npy", tmp / "labels.npy"
        np.save(images, np.ascontiguousarray(data.images))
        np.save(labels, np.asarray(data.labels))
        return cls(str(images), str(labels), data.num_classes, tuple(data.class_names), data.source)

    def load(self) -> Dataset:
        images, labels = np.load(self.images), np.load(self.labels)
        ids = np.arange(len(images), dtype=np.int64)
        return Dataset(
            images=images, labels=labels, ids=ids, class_names=self.class_names,
            num_classes=self.num_classes, source=self.source, split="train",
        )  # fmt: skip


@dataclass(frozen=True)
class _KerasTwin:
    """The `keras` pipeline: `keras_twin.py` under another interpreter, on this benchmark's saved images."""

    python: str
    version: str
    files: _DataFiles

    @classmethod
    def probe(cls, python: str, files: _DataFiles) -> _KerasTwin:
        probe = _run([python, "-c", "import keras, numpy; print(keras.__version__, keras.backend.backend())"])
        if probe.returncode != 0:
            last = last_line(probe.stderr, "no output")
            raise InputError(f"--keras {python}: cannot import keras and numpy there ({last})")
        return cls(python, probe.stdout.strip(), files)

    def session(self, bench: TrainBench, name: str, precision: str) -> _KerasSession:
        """Start `keras_twin.py` for model `name` at `precision`: it builds, warms up and waits for windows."""
        settings = {
            "model": name, "precision": precision, "num_classes": self.files.num_classes,
            "batch_size": bench.batch_size, "warmup": bench.warmup, "seed": bench.seed,
        }  # fmt: skip
        script = str(Path(__file__).with_name("keras_twin.py"))
        argv = [self.python, script, self.files.images, self.files.labels, json.dumps(settings)]
        # stderr to a file, not a pipe: TensorFlow's start-up chatter could fill a pipe nobody reads yet
        stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - the session closes it
        try:
            child = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
        except OSError as e:
            stderr.close()
            raise InputError(f"--keras {self.python}: cannot run it ({e.strerror})") from None
        session = _KerasSession(child, stderr, f"--keras {self.python}: the Keras {name} {precision} run")
        session.reply("ready")  # the model is built and its step traced: the windows time steps only
        return session


class _KerasSession:
    """A running `keras_twin.py`: `window(n)` trains its next n batches and returns their seconds."""

    def __init__(self, child: subprocess.Popen, stderr: Any, what: str):
        self.child = child
        self.stderr = stderr  # a temporary file
        self.what = what

    def window(self, steps: int) -> float:
        self.child.stdin.write(f"{steps}\n")
        self.child.stdin.flush()
        return float(self.reply("seconds"))

    def reply(self, key: str) -> Any:
        """The value of `key` in the child's next JSON line (its other lines, TensorFlow's chatter, skipped)."""
        for line in self.child.stdout:
            if line.startswith("{"):
                got = json.loads(line)
                if key in got:
                    return got[key]
        self.child.wait()
        self.stderr.seek(0)
        last = last_line(self.stderr.read(), "no output")
        raise FashiondistError(f"{self.what} failed with exit code {self.child.returncode} ({last})")

    def close(self) -> None:
        """End the child: its input closes, it exits; one that hangs is killed."""
        with contextlib.suppress(OSError):  # a child that already died: its pipe is broken
            self.child.stdin.close()
        try:
            self.child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait()
        self.child.stdout.close()
        self.stderr.close()


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    except OSError as e:  # no such interpreter, not executable
        raise InputError(f"--keras {argv[0]}: cannot run it ({e.strerror})") from None


def _measure_all(
    bench: TrainBench, files: _DataFiles, log: Callable[[str], None], twin: _KerasTwin | None = None
) -> tuple[Samples, str]:
    """Every (repeat, precision) block, each in a child process, in rotating order; the rates per repeat."""
    samples: Samples = {}
    device = ""
    for repeat in range(bench.repeats):
        for precision in rotation(bench.precisions, repeat):
            rates, device = _run_block(bench, precision, repeat, files, twin)
            for name in bench.models:
                for pipeline in bench.pipelines:
                    samples.setdefault((name, precision, pipeline), []).append(rates[name][pipeline])
                shown = ", ".join(f"{p} {rates[name][p]:,.0f}" for p in bench.pipelines)
                log(f"repeat {repeat + 1}/{bench.repeats} {name} {precision}: {shown} images/s")
    return samples, device


def _run_block(
    bench: TrainBench, precision: str, repeat: int, files: _DataFiles, twin: _KerasTwin | None
) -> tuple[Rates, str]:
    """One (repeat, precision) block in a child process of this interpreter: its rates and its device."""
    tmp = Path(files.images).parent
    spec, out = tmp / "block.json", tmp / "block-rates.json"
    out.unlink(missing_ok=True)
    block = {
        "bench": asdict(bench), "precision": precision, "repeat": repeat, "files": asdict(files),
        "keras_version": twin.version if twin else None, "out": str(out),
    }  # fmt: skip
    write_json(spec, block)
    command = [sys.executable, "-m", "fashiondist.bench.train", str(spec)]
    done = subprocess.run(
        command,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if done.returncode != 0 or not out.is_file():
        last = last_line(done.stderr, "(no message)")
        raise FashiondistError(
            f"bench train: the {precision} block of repeat {repeat + 1} failed with exit code {done.returncode}: {last}"
        )
    got = json.loads(out.read_text())
    return got["rates"], got["device"]


def measure_block(
    bench: TrainBench, precision: str, repeat: int, data: Dataset, twin: _KerasTwin | None = None
) -> tuple[Rates, str]:
    """One (repeat, precision) block in this process, which must not have made an Accelerator of another
    precision. Per model, each pipeline warms up, then the timed steps run in windows of `bench.window`
    steps, the pipelines taking turns window by window (the order rotating each window), so that a slow
    spell of the machine falls on all of them rather than on whichever ran then. Returns (rates, device)."""
    rates: Rates = {}
    acc = None
    for name in bench.models:
        cfg = _config(bench, name, precision)
        acc = acc or make_accelerator(cfg)
        # every image trains here (no validation split); the trainer's own set-up
        training = prepare_training(cfg, acc, data.images, data.labels, data.num_classes)
        closers: list[Callable[[], None]] = []
        try:
            windows: dict[str, Callable[[int], float]] = {}
            for pipeline in rotation(bench.pipelines, repeat):
                if pipeline == KERAS and twin is not None:
                    keras = twin.session(bench, name, precision)
                    closers.append(keras.close)
                    windows[pipeline] = keras.window
                else:
                    step = _pipeline(pipeline, training, data, closers)
                    for _ in range(bench.warmup):
                        step()
                    windows[pipeline] = functools.partial(timed, step, device=acc.device)  # (steps) -> s
            seconds = dict.fromkeys(windows, 0.0)
            for k, size in enumerate(_window_sizes(bench.steps, bench.window)):
                for pipeline in rotation(bench.pipelines, repeat + k):
                    seconds[pipeline] += windows[pipeline](size)
            rates[name] = {p: bench.steps * bench.batch_size / s for p, s in seconds.items()}
        finally:
            for close in closers:
                close()
    return rates, str(acc.device if acc is not None else "")


def _window_sizes(steps: int, window: int) -> list[int]:
    """`steps` cut into windows of `window` steps, the last one shorter."""
    return [min(window, steps - start) for start in range(0, steps, window)]


def _block_main(argv: list[str]) -> int:
    """The child: `python -m fashiondist.bench.train BLOCK.json` (written by `_run_block`) -> its "out" file."""
    block = json.loads(Path(argv[1]).read_text())
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in block["bench"].items()}
    bench = TrainBench(**fields)
    files = _DataFiles(**{**block["files"], "class_names": tuple(block["files"]["class_names"])})
    twin = _KerasTwin(bench.keras, block["keras_version"], files) if bench.keras else None
    try:
        with torch_threads(bench.threads):
            rates, device = measure_block(bench, block["precision"], block["repeat"], files.load(), twin)
    except FashiondistError as e:  # a known error: one line, which the parent repeats
        print(e, file=sys.stderr)
        return 2
    write_json(block["out"], {"rates": rates, "device": device})  # whole or absent, never half-written
    return 0


def _result(
    bench: TrainBench,
    data: Dataset,
    samples: Samples,
    configs: dict[tuple[str, str], TrainConfig],
    device: str,
) -> dict[str, Any]:
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
            "window_steps": bench.window,
            "repeats": bench.repeats,
            "precisions": list(bench.precisions),
            "pipelines": list(bench.pipelines),
            "device": device,
            "torch_threads": bench.threads or torch.get_num_threads(),
            "unit": "images/s (training: forward + backward + optimizer step)",
        },
        "results": [
            _result_row(bench, name, precision, samples, configs[(name, precision)])
            for name in bench.models
            for precision in bench.precisions
        ],
        "precision_ratios": _precision_ratios(bench, samples),
    }


def _result_row(
    bench: TrainBench, name: str, precision: str, samples: Samples, cfg: TrainConfig
) -> dict[str, Any]:
    """One (model, precision): images/s per pipeline, and the engine's paired ratio to each other pipeline."""
    got = {p: samples[(name, precision, p)] for p in bench.pipelines}
    ratios = {f"{ENGINE}/{BARE}": Stat.ratio(got[ENGINE], got[BARE])}
    for w in bench.loader_workers:
        ratios[f"{ENGINE}/{loader_name(w)}"] = Stat.ratio(got[ENGINE], got[loader_name(w)])
    if KERAS in got:
        ratios[f"{ENGINE}/{KERAS}"] = Stat.ratio(got[ENGINE], got[KERAS])
    return {
        "model": name,
        "precision": precision,
        "optimizer": cfg.optimizer.value,
        "augment": {"flip": cfg.augment, "shift": cfg.shift, "erase": cfg.erase},
        "images_per_s": {p: Stat.of(v).to_dict() for p, v in got.items()},
        "ratios": {k: v.to_dict() for k, v in ratios.items()},
    }


def _precision_ratios(bench: TrainBench, samples: Samples) -> list[dict[str, Any]]:
    """Each mixed precision over fp32, per model and pipeline (none when fp32 was not measured)."""
    if _FLOAT_PRECISION not in bench.precisions:
        return []
    return [
        {
            "model": name,
            "ratio": f"{precision}/{_FLOAT_PRECISION}",
            "by_pipeline": {
                p: Stat.ratio(samples[(name, precision, p)], samples[(name, _FLOAT_PRECISION, p)]).to_dict()
                for p in bench.pipelines
            },
        }
        for name in bench.models
        for precision in bench.precisions
        if precision != _FLOAT_PRECISION
    ]


def train_tables(result: dict[str, Any], caption: str) -> list[Any]:
    """Rich tables: images/s per pipeline with the ratios, then each mixed precision against fp32."""
    from rich.table import Table

    from fashiondist.bench.report import fmt_rate, fmt_ratio

    settings = result["settings"]
    # the DataLoaders, then Keras when it was measured
    others = [p for p in settings["pipelines"] if p not in (ENGINE, BARE)]
    table = Table(
        title=f"training images/s, batch {settings['batch_size']}, {settings['steps']} timed steps in turns of "
        f"{settings.get('window_steps', settings['steps'])}, "
        f"median and min-max of {settings['repeats']} repeats on {settings['device']} (ratios: paired per "
        "repeat, and best: each side's fastest repeat)",
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
    return Stat.from_dict(d)


if __name__ == "__main__":
    sys.exit(_block_main(sys.argv))
