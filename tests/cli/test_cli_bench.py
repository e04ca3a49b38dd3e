"""`fashiondist bench`: the three benchmarks run end to end on small sizes; the tests check the output's
structure (tables, JSON keys, ratios present and positive, the machine described), never the timings.

One short real training (cnn, one epoch on the bundled sample) serves twice: the time-to-accuracy smoke
test runs it, and the inference benchmark exports its best weights to ONNX (and int8) and infers with them.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

from fashiondist.cli import main
from fashiondist.data.sources import SAMPLE_DIR, SAMPLE_TEST_CSV

SAMPLE_TEST = SAMPLE_DIR / SAMPLE_TEST_CSV  # 1,000 unlabelled rows, gzipped


def _positive_stat(stat: dict) -> None:
    """A measured series (images/s, seconds), or a ratio of two with its `best` (each side's fastest repeat)."""
    assert set(stat) - {"best"} == {"median", "min", "max", "samples"}
    assert stat["samples"] and all(math.isfinite(x) and x > 0 for x in stat["samples"])
    assert stat["min"] <= stat["median"] <= stat["max"]
    assert math.isfinite(stat.get("best", 1.0)) and stat.get("best", 1.0) > 0


def _machine(payload: dict) -> None:
    machine = payload["machine"]
    for key in (
        "cpu_model",
        "cpu_count",
        "usable_cores",
        "load_average",
        "gpu",
        "versions",
        "threads",
        "cpu_share",
    ):
        assert key in machine
    if machine["cpu_share"] is not None:  # Linux: the CPU other processes took while the benchmark ran
        assert set(machine["cpu_share"]) == {"busy", "this_benchmark", "other_processes"}
    for package in ("torch", "onnxruntime", "accelerate", "numpy"):
        assert machine["versions"][package]
    assert "load_average_end" in payload


@pytest.fixture(scope="module")
def tta(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, int]:
    """`bench time-to-accuracy` on a one-epoch cnn run kept in a directory: (JSON, run parent, exit code)."""
    tmp = tmp_path_factory.mktemp("tta")
    out, json_path = tmp / "runs", tmp / "tta.json"
    argv = ["bench", "time-to-accuracy", "--recipe", "cnn", "--data", "sample", "--epochs", "1"]
    code = main([*argv, "--targets", "0.2,0.999", "--out", str(out), "--json", str(json_path)])
    return json.loads(json_path.read_text()), out, code


def test_time_to_accuracy_reports_each_target(tta, capsys):
    payload, out, code = tta
    assert code == 0
    _machine(payload)
    assert payload["benchmark"] == "time-to-accuracy"
    assert payload["settings"]["targets"] == [0.2, 0.999]
    (run,) = payload["runs"]
    assert run["model"] == "cnn" and Path(run["run_dir"]).is_relative_to(out)
    assert [e["epoch"] for e in run["epochs"]] == [1]
    reached, missed = run["targets"]["0.2"], run["targets"]["0.999"]
    assert missed is None
    assert (
        reached["epoch"] == 1
        and 0 < reached["train_seconds"] <= reached["elapsed_seconds"] <= reached["seconds"]
    )
    assert reached["seconds"] <= run["process_seconds"]
    low, high = payload["summary"]
    assert (low["reached"], high["reached"]) == (1, 0) and high["seconds"] is None
    _positive_stat(low["seconds"])
    _positive_stat(low["ratios"]["train_seconds/seconds"])


@pytest.fixture(scope="module")
def exported(tta) -> tuple[Path, Path]:
    """The tta run's best weights exported beside it (run/model.onnx, run/model.int8.onnx), as `export` does."""
    from fashiondist.export.check_images import load_check_images
    from fashiondist.export.exporter import export_checkpoint

    run = Path(tta[0]["runs"][0]["run_dir"])
    checks = load_check_images("sample", run)
    onnx_path = run / "model.onnx"
    report = export_checkpoint(
        run,
        onnx_path,
        images=checks.images,
        labels=checks.labels,
        calibration_images=checks.calibration_images[:256],
        quantize="int8",
        max_int8_drop=100.0,  # the smoke test needs the file, whatever int8 costs a one-epoch model
    )
    int8 = onnx_path.with_name("model.int8.onnx")
    assert report.int8 is not None and int8.is_file()
    return onnx_path, int8


def test_infer_bench_ratios_and_end_to_end(exported, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    onnx_path, int8 = exported
    json_path = tmp_path / "infer.json"
    argv = ["bench", "infer", "--model", str(onnx_path), "--int8", str(int8), "--csv", str(SAMPLE_TEST)]
    code = main(
        [*argv, "--batch-sizes", "1,64", "--repeats", "1", "--min-seconds", "0.02", "--json", str(json_path)]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "inference images/s" in out and "end to end on 1,000 rows" in out
    payload = json.loads(json_path.read_text())
    _machine(payload)
    assert payload["settings"]["rows"] == 1000
    # PyTorch eager found the run's best/ weights from run/model.onnx, as after `fashiondist export RUN`
    assert "beside the ONNX file" in payload["settings"]["eager_weights"]
    assert [row["batch_size"] for row in payload["throughput"]] == [1, 64]
    for row in payload["throughput"]:
        assert set(row["images_per_s"]) == {"onnxruntime_fp32", "onnxruntime_int8", "torch_eager"}
        assert set(row["ratios"]) == {
            "onnxruntime_fp32/torch_eager",
            "onnxruntime_int8/onnxruntime_fp32",
            "onnxruntime_int8/torch_eager",
        }
        for stat in (*row["images_per_s"].values(), *row["ratios"].values()):
            _positive_stat(stat)
    e2e = payload["end_to_end"]
    assert e2e["rows"] == 1000
    assert set(e2e["seconds"]) == {
        "fashiondist_infer",
        "fashiondist_infer_int8",
        "pandas_torch_script",
        "pandas_onnxruntime_script",
        "onnxruntime_alone",
        "onnxruntime_alone_int8",
    }
    for script in ("pandas_torch_script", "pandas_onnxruntime_script"):
        _positive_stat(e2e["ratios"][f"{script}/fashiondist_infer"])
        _positive_stat(e2e["ratios"][f"{script}/fashiondist_infer_int8"])
    _positive_stat(e2e["ratios"]["fashiondist_infer/onnxruntime_alone"])
    _positive_stat(e2e["ratios"]["fashiondist_infer_int8/onnxruntime_alone_int8"])
    assert "x pandas+onnxruntime" in out and "/ onnxruntime alone" in out
    # the processes did the same job: same Ids in order, and (same weights) nearly the same labels; the
    # pandas + onnxruntime script ran the very same fp32 model, so its labels are ours
    assert e2e["check"]["same_ids_in_order"] is True
    assert e2e["check"]["label_agreement"] >= 0.99
    assert e2e["check"]["peer_label_agreement"] >= 0.99  # batch 1024 vs 128: a near-tie may flip


def test_train_bench_pipelines_precisions_and_ratios(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    json_path = tmp_path / "train.json"
    argv = ["bench", "train", "--models", "cnn", "--batch-size", "32", "--steps", "2", "--warmup", "1"]
    code = main([*argv, "--precision", "no,bf16", "--repeats", "2", "--json", str(json_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "training images/s" in out and "mixed precision speed-up" in out
    payload = json.loads(json_path.read_text())
    _machine(payload)
    assert payload["settings"]["pipelines"] == ["engine", "bare_step", "dataloader_w0"]
    assert [(r["model"], r["precision"]) for r in payload["results"]] == [("cnn", "no"), ("cnn", "bf16")]
    for row in payload["results"]:
        assert set(row["images_per_s"]) == {"engine", "bare_step", "dataloader_w0"}
        assert set(row["ratios"]) == {"engine/bare_step", "engine/dataloader_w0"}
        for stat in (*row["images_per_s"].values(), *row["ratios"].values()):
            _positive_stat(stat)
            assert len(stat["samples"]) == 2  # one per repeat
    (mixed,) = payload["precision_ratios"]
    assert mixed["ratio"] == "bf16/no"
    for stat in mixed["by_pipeline"].values():
        _positive_stat(stat)


@pytest.mark.skipif(
    not os.environ.get("FASHIONDIST_KERAS_PYTHON"),
    reason="set FASHIONDIST_KERAS_PYTHON to a Python with Keras 3 (Keras is not a dependency)",
)
def test_train_bench_races_the_notebooks_keras_model(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    json_path = tmp_path / "train.json"
    argv = ["bench", "train", "--models", "cnn,cnn-dropout", "--batch-size", "32", "--steps", "3"]
    keras = os.environ["FASHIONDIST_KERAS_PYTHON"]
    argv += ["--warmup", "1", "--precision", "bf16", "--repeats", "1", "--keras", keras]
    assert main([*argv, "--json", str(json_path)]) == 0
    payload = json.loads(json_path.read_text())
    assert payload["settings"]["pipelines"][-1] == "keras"
    assert payload["settings"]["keras"]["python"] == keras
    for row in payload["results"]:
        _positive_stat(row["images_per_s"]["keras"])
        _positive_stat(row["ratios"]["engine/keras"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "time-to-accuracy", "--recipe", "no-such-model"], "--recipe 'no-such-model'"),
        (["bench", "time-to-accuracy", "--recipe", "missing.yaml"], "--recipe missing.yaml: no such file"),
        (
            ["bench", "train", "--models", "cnn", "--json", "no/such/dir/out.json"],
            "--json no/such/dir/out.json",
        ),
        (
            ["bench", "infer", "--model", "missing.onnx", "--csv", str(SAMPLE_TEST)],
            "--model missing.onnx: no such file",
        ),
        (
            ["bench", "train", "--models", "cnn-dropout,convnet", "--keras", sys.executable],
            "--keras: convnet has no Keras twin",
        ),
        (
            ["bench", "train", "--models", "cnn", "--keras", "no/such/python"],
            "--keras no/such/python: cannot run it (No such file or directory)",
        ),
        (  # this interpreter has no Keras (it is not a dependency)
            ["bench", "train", "--models", "cnn", "--keras", sys.executable],
            f"--keras {sys.executable}: cannot import keras and numpy there (ModuleNotFoundError",
        ),
    ],
)
def test_bad_input_is_one_line_before_any_measuring(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fashiondist: error: ") and message in err[-1]
    assert not any(tmp_path.iterdir())  # nothing written


def test_bad_list_options_are_refused_by_the_parser(capsys):
    for argv in (
        ["bench", "train", "--precision", "fp8"],
        ["bench", "infer", "--model", "m.onnx", "--csv", "t.csv", "--batch-sizes", "0"],
        ["bench", "time-to-accuracy", "--recipe", "cnn", "--targets", "92"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "--targets: '92': an accuracy is a fraction in (0, 1]" in capsys.readouterr().err
