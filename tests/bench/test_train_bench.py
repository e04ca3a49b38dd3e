"""`bench train` times the engine users run: its `engine` pipeline is the trainer's own optimizer step on
the trainer's own set-up, not a copy of either."""

from __future__ import annotations

from fashiondist.bench import train as train_bench
from fashiondist.engine.prepared import PreparedTraining


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
    result = train_bench.run_train_bench(bench, log=lambda _line: None)
    # warm-up and timed steps of the engine pipeline only: the bare step and the DataLoader do not call it
    assert calls == [0, 1, 2, 3, 4]
    (row,) = result["results"]
    assert row["images_per_s"][train_bench.ENGINE]["median"] > 0
