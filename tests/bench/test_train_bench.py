"""`bench train` times the engine users run: its `engine` pipeline is the trainer's own optimizer step on
the trainer's own set-up, not a copy of either. Each (repeat, precision) block runs in a child process, so
the product never resets accelerate's per-process state (a private API) to change precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fashiondist
from fashiondist.bench import train as train_bench
from fashiondist.cli import main
from fashiondist.data.sources import load_data
from fashiondist.engine.prepared import PreparedTraining
from fashiondist.errors import FashiondistError

pytestmark = pytest.mark.usefixtures("fresh_accelerate")


def test_the_engine_pipeline_runs_the_trainers_step(monkeypatch):
    calls: list[int] = []
    real_step = PreparedTraining.step

    def counted(self, micro_batches, step, tally):
        calls.append(step)
        real_step(self, micro_batches, step, tally)

    monkeypatch.setattr(PreparedTraining, "step", counted)
    bench = train_bench.TrainBench(
        models=("cnn",), batch_size=32, steps=3, warmup=2, precisions=("no",), repeats=1
    )
    # the block a child runs, run here so the patched step is seen
    rates, device = train_bench.measure_block(bench, "no", 0, load_data(bench.data))
    # warm-up and timed steps of the engine pipeline only: the bare step and the DataLoader do not call it
    assert calls == [0, 1, 2, 3, 4]
    assert set(rates["cnn"]) == set(bench.pipelines) and rates["cnn"][train_bench.ENGINE] > 0
    assert device == "cpu" or device.startswith("cuda")


def test_no_accelerate_private_api_in_the_package():
    package = Path(fashiondist.__file__).parent
    users = [str(p.relative_to(package)) for p in package.rglob("*.py") if "_reset_state" in p.read_text()]
    assert users == []


def test_both_precisions_reported_beside_this_process_accelerator(tmp_path, capsys, monkeypatch):
    """This process already holds an fp32 Accelerator, whose precision accelerate will not change; the
    benchmark still measures fp32 and bf16, because each block builds its own in a child process."""
    from accelerate import Accelerator

    Accelerator(mixed_precision="no")
    monkeypatch.setenv("COLUMNS", "200")
    json_path = tmp_path / "train.json"
    argv = ["bench", "train", "--models", "cnn", "--batch-size", "32", "--steps", "3", "--warmup", "1"]
    assert main([*argv, "--precision", "no,bf16", "--repeats", "1", "--json", str(json_path)]) == 0
    out = capsys.readouterr().out
    assert "training images/s" in out and "mixed precision speed-up" in out
    payload = json.loads(json_path.read_text())
    assert [(r["model"], r["precision"]) for r in payload["results"]] == [("cnn", "no"), ("cnn", "bf16")]
    for row in payload["results"]:
        for stat in row["images_per_s"].values():
            assert len(stat["samples"]) == 1 and stat["samples"][0] > 0
    (mixed,) = payload["precision_ratios"]
    assert mixed["ratio"] == "bf16/no" and set(mixed["by_pipeline"]) == set(payload["settings"]["pipelines"])


def test_the_keras_pipeline_runs_inside_each_block(tmp_path):
    """The block's child runs the Keras twin between its own pipelines; a stand-in interpreter answers the
    probe and the timing as `keras_twin.py` would (Keras itself is not a dependency)."""
    fake = tmp_path / "python"
    log = tmp_path / "windows.log"
    # the probe; then the twin's protocol: a ready line (after chatter), one JSON line per window it reads
    fake.write_text(
        '#!/bin/sh\nif [ "$1" = -c ]; then echo "3.0 stand-in"; exit 0; fi\n'
        'echo "some TensorFlow chatter"; echo \'{"ready": "3.0"}\'\n'
        f'while read n; do echo "$n" >> {log}; echo \'{{"seconds": 0.25}}\'; done\n'
    )
    fake.chmod(0o755)
    bench = train_bench.TrainBench(
        models=("cnn",),
        batch_size=32,
        steps=7,
        warmup=1,
        window=3,
        precisions=("no",),
        repeats=1,
        keras=str(fake),
    )
    result = train_bench.run_train_bench(bench, log=lambda _line: None)
    assert result["settings"]["keras"] == {"python": str(fake), "version": "3.0 stand-in"}
    assert log.read_text().split() == ["3", "3", "1"]  # 7 timed steps in windows of 3
    (row,) = result["results"]
    assert row["images_per_s"][train_bench.KERAS]["samples"] == [pytest.approx(7 * 32 / 0.75)]
    assert row["images_per_s"][train_bench.ENGINE]["median"] > 0


def test_a_keras_twin_that_dies_is_one_error_line(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(
        '#!/bin/sh\nif [ "$1" = -c ]; then echo "3.0 stand-in"; exit 0; fi\necho "no Keras here" >&2\nexit 3\n'
    )
    fake.chmod(0o755)
    bench = train_bench.TrainBench(
        models=("cnn",), batch_size=32, steps=2, warmup=1, precisions=("no",), repeats=1, keras=str(fake)
    )
    with pytest.raises(
        FashiondistError, match=r"the Keras cnn no run failed with exit code 3 \(no Keras here\)"
    ):
        train_bench.run_train_bench(bench, log=lambda _line: None)


def test_pipelines_take_turns_window_by_window(monkeypatch):
    """The timed steps of every pipeline run in windows, interleaved, the order rotating window by window."""
    order: list[tuple[str, int]] = []
    real_timed = train_bench.timed

    def logged(step, steps, device=None):
        order.append((step_names[id(step)], steps))
        return real_timed(step, steps, device)

    step_names: dict[int, str] = {}
    real_pipeline = train_bench._pipeline

    def named(name, *args):
        step = real_pipeline(name, *args)
        step_names[id(step)] = name
        return step

    monkeypatch.setattr(train_bench, "timed", logged)
    monkeypatch.setattr(train_bench, "_pipeline", named)
    bench = train_bench.TrainBench(
        models=("cnn",), batch_size=32, steps=5, warmup=0, window=2, precisions=("no",), repeats=1
    )
    train_bench.measure_block(bench, "no", 0, load_data(bench.data))
    engine, bare, loader = train_bench.ENGINE, train_bench.BARE, train_bench.loader_name(0)
    assert order == [
        (engine, 2), (bare, 2), (loader, 2),
        (bare, 2), (loader, 2), (engine, 2),
        (loader, 1), (engine, 1), (bare, 1),
    ]  # fmt: skip
