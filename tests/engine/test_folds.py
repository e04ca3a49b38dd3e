"""K-fold cross-validation, the private test split, ensembles in one ONNX graph and distillation, on real
sample images: a 2-fold run (one process and two DDP ranks), its folds exported as one graph and served by
`fashiondist infer`, and a student distilled from them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from launched import run_ok

from fashiondist.cli import main
from fashiondist.config import TrainConfig
from fashiondist.data.folds import PRIVATE_TEST_SEED, private_split, run_split, stratified_folds
from fashiondist.data.sources import load_data
from fashiondist.engine.distill import add_distillation, expand_members, load_ensemble
from fashiondist.engine.evaluate import model_probs
from fashiondist.models.tta import shifted
from fashiondist.run_layout import TEACHER_FILE

REPO = Path(__file__).resolve().parents[2]
PRIVATE = 60
FOLDS = [
    "--model", "cnn", "--batch-size", "64", "--epochs", "1", "--quiet", "--precision", "no",
    "--set", "eval_batch_size=256", "--folds", "2", "--private-test", str(PRIVATE),
]  # fmt: skip


def _run(cmd: list[str], launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    return run_ok([*(launcher or [sys.executable, "-m"]), "fashiondist", *cmd])


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory, tiny_csv) -> Path:
    out = tmp_path_factory.mktemp("cv") / "cv2"
    _run(["train", *FOLDS, "--data", str(tiny_csv), "--out", str(out), "--set", "mixup=0.2"])
    return out


def _cfg(tiny_csv, **kw) -> TrainConfig:
    return TrainConfig(model="cnn", data=str(tiny_csv), folds=2, private_test=PRIVATE, **kw)


def test_folds_and_private_split_partition_the_data(sample):
    labels = sample.labels
    rest, private = private_split(labels, 500)
    assert len(private) == 500 and np.intersect1d(rest, private).size == 0 and len(rest) + 500 == len(labels)
    assert np.bincount(labels[private]).min() == 50  # stratified: 50 of each of 10 classes
    folds = stratified_folds(labels[rest], 5, seed=3)
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(len(rest)))
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    for seed in (0, 1):  # the private split never moves with a run's seed; its train/val never touch it
        for fold in range(5):
            cfg = TrainConfig(folds=5, fold=fold, private_test=500, seed=seed)
            train, val = run_split(labels, cfg)
            assert np.intersect1d(np.concatenate([train, val]), private).size == 0
            assert np.intersect1d(train, val).size == 0
    # without private_test or folds: the split every earlier run made
    from fashiondist.data.split import stratified_split

    plain = run_split(labels, TrainConfig(seed=4))
    assert all(np.array_equal(a, b) for a, b in zip(plain, stratified_split(labels, 0.1, 4), strict=True))
    assert TrainConfig().seed != PRIVATE_TEST_SEED


def test_oof_predictions_score_every_image_once(cv_run, tiny_csv):
    labels = load_data(str(tiny_csv)).labels
    with np.load(cv_run / "val_predictions.npz") as arrays:
        y_true, probs = arrays["y_true"], arrays["probs"]
    assert len(y_true) == len(labels) - PRIVATE
    # float32 softmax rows (K <= 10 unit-scale terms, each a few roundings): within 64 x 2^-24 (3.8e-6) of 1
    assert np.allclose(probs.sum(1, dtype=np.float64), 1, rtol=0, atol=64 * 2.0**-24)
    for fold in range(2):
        val_idx = run_split(labels, _cfg(tiny_csv, fold=fold))[1]
        with np.load(cv_run / f"fold-{fold}" / "val_predictions.npz") as arrays:
            fold_probs = arrays["probs"]
        pool = np.sort(np.concatenate([run_split(labels, _cfg(tiny_csv, fold=f))[1] for f in range(2)]))
        assert np.array_equal(probs[np.searchsorted(pool, val_idx)], fold_probs)
    summary = json.loads((cv_run / "summary.json").read_text())
    acc = float((probs.argmax(1) == y_true).mean())
    # the same float64 count ratio and square root as the run's (JSON keeps a float64 exactly): equal
    assert summary["cv"]["accuracy"] == acc and summary["cv"]["images"] == len(y_true)
    assert summary["cv"]["standard_error"] == np.sqrt(acc * (1 - acc) / len(y_true))
    evaluation = json.loads((cv_run / "evaluation.json").read_text())
    assert evaluation["metrics"]["num_samples"] == len(y_true)  # the report's matrix and table: OOF
    assert json.loads((cv_run / "run.json").read_text())["result"]["cv"]["folds"] == 2


def test_a_rerun_skips_finished_folds_and_retrains_the_missing_one(cv_run, tiny_csv, tmp_path):
    import shutil

    copy = tmp_path / "cv2"
    shutil.copytree(cv_run, copy)
    (copy / "fold-1" / "summary.json").unlink()
    shutil.rmtree(copy / "fold-1" / "last")
    before = (copy / "fold-0" / "metrics.jsonl").read_text()
    proc = _run(["train", *FOLDS, "--data", str(tiny_csv), "--out", str(copy), "--set", "mixup=0.2"])
    assert proc.stderr.count("cnn epoch 1/1:") == 1  # fold 1 only
    assert (copy / "fold-0" / "metrics.jsonl").read_text() == before
    assert "CV acc" in proc.stdout


def test_folds_export_as_one_graph_that_infer_serves(cv_run, tmp_path, sample_test_csv, capsys):
    out = tmp_path / "ensemble.onnx"
    assert main(["export", str(cv_run), "--out", str(out)]) == 0
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    members = json.loads(props["ensemble_members"])
    assert [Path(m["run"]).name for m in members] == ["fold-0", "fold-1"]
    report = json.loads((tmp_path / "export_report.json").read_text())
    assert report["accuracy"]["agrees"] is True and report["accuracy"]["images"] == PRIVATE
    private = json.loads((cv_run / "private_test.json").read_text())  # scored by the run, the same ensemble
    # both the same count ratio of the same images, computed by two readers: a few float64 roundings
    assert private["images"] == PRIVATE
    assert report["accuracy"]["run_accuracy"] == pytest.approx(private["accuracy"], rel=1e-12)
    # the graph's probabilities are the mean of the members' own, computed here in float64
    from fashiondist.inference.predict import predict_proba
    from fashiondist.inference.session import open_model_bytes

    images = load_data("sample").images[:50]
    got = predict_proba(open_model_bytes(out.read_bytes(), out), images)
    ensemble = load_ensemble(expand_members(str(cv_run))).double()
    pixels = torch.tensor(images).unsqueeze(1)  # a copy: the loaded sample arrays are read-only
    with torch.no_grad():
        expected = torch.stack([F.softmax(m(pixels), 1) for m in ensemble.members]).mean(0).numpy()
    # float32 through ~10^5-term dot products: a few float32 eps (1.2e-7) of the unit-scale probabilities
    np.testing.assert_allclose(got, expected, atol=1e-5)
    sub = tmp_path / "sub.csv"
    assert main(["infer", str(sample_test_csv), "--model", str(out), "--out", str(sub)]) == 0
    assert sub.read_text().startswith("Id,Label\n") and len(sub.read_text().splitlines()) == 1001


def test_split_seed_fixes_the_split_and_folds_whatever_the_seed(sample):
    labels = sample.labels
    for kw in ({}, {"folds": 3, "fold": 1}):
        base = run_split(labels, TrainConfig(seed=2, private_test=500, **kw))
        for seed in (0, 7):
            same = run_split(labels, TrainConfig(seed=seed, split_seed=2, private_test=500, **kw))
            assert all(np.array_equal(a, b) for a, b in zip(base, same, strict=True))
            moved = run_split(labels, TrainConfig(seed=seed, private_test=500, **kw))
            assert not np.array_equal(base[1], moved[1])  # without it, the seed moves the split


def _shared_val(tiny_csv) -> np.ndarray:
    """The validation indices of runs with split seed 0 and the module's private split."""
    data = load_data(str(tiny_csv))
    return run_split(data.labels, TrainConfig(data=str(tiny_csv), private_test=PRIVATE, split_seed=0))[1]


def test_runs_with_one_split_seed_export_checked_on_their_shared_validation(tiny_csv, tmp_path):
    plain = ["train", "--model", "cnn", "--batch-size", "64", "--epochs", "1", "--quiet", "--precision", "no",
             "--data", str(tiny_csv), "--private-test", str(PRIVATE)]  # fmt: skip
    runs = {}
    for name, flags in (
        ("a", ["--seed", "0"]),
        # the same file named by a relative path: one dataset for the split check (run.json's sha256)
        ("b", ["--seed", "1", "--split-seed", "0", "--data", os.path.relpath(tiny_csv, REPO)]),
        ("c", ["--seed", "1"]),
    ):
        runs[name] = tmp_path / name
        _run([*plain, *flags, "--out", str(runs[name])])
    record = json.loads((runs["b"] / "run.json").read_text())
    assert record["seeds"]["seed"] == 1 and record["seeds"]["split_seed"] == 0
    assert main(["export", str(runs["a"]), str(runs["b"]), "--out", str(tmp_path / "ab.onnx")]) == 0
    report = json.loads((tmp_path / "export_report.json").read_text())
    probs = [np.load(runs[n] / "val_predictions.npz") for n in "ab"]
    assert np.array_equal(probs[0]["y_true"], probs[1]["y_true"])  # one validation split
    mean = (probs[0]["probs"] + probs[1]["probs"]) / 2
    assert report["accuracy"]["images"] == len(mean)  # judged on the runs' shared validation images
    assert report["accuracy"]["run_accuracy"] == pytest.approx(np.mean(mean.argmax(1) == probs[0]["y_true"]))
    # a different split: no validation image is unseen by both, so the private split judges the pair
    assert main(["export", str(runs["a"]), str(runs["c"]), "--out", str(tmp_path / "ac.onnx")]) == 0
    assert json.loads((tmp_path / "export_report.json").read_text())["accuracy"]["images"] == PRIVATE

    # every member under flip-shift: the runs' predictions (no TTA) no longer apply; the PyTorch ensemble's
    # own float32 predictions under the 10 views, on the same shared images, are what the file must reproduce
    out = tmp_path / "ab-shift.onnx"
    assert main(["export", str(runs["a"]), str(runs["b"]), "--tta", "flip-shift", "--out", str(out)]) == 0
    report = json.loads((tmp_path / "export_report.json").read_text())
    members = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["ensemble_members"])
    assert [m["tta"] for m in members] == ["flip-shift", "flip-shift"]
    images = torch.as_tensor(load_data(str(tiny_csv)).images[_shared_val(tiny_csv)]).unsqueeze(1)
    moves = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))
    views = [shifted(v, dy, dx) for v in (images, images.flip(3)) for dy, dx in moves]
    with torch.no_grad():
        ten_views = np.mean(
            [load_ensemble([runs[n] / "best"])(v).softmax(1).numpy() for n in "ab" for v in views], axis=0
        )
    assert report["accuracy"]["images"] == len(mean) and report["accuracy"]["agrees"] is True
    assert report["accuracy"]["run_accuracy"] == pytest.approx(
        np.mean(ten_views.argmax(1) == probs[0]["y_true"])
    )
    assert "unit roundoff of fp32" in report["accuracy"]["tie_margin"]  # the PyTorch ensemble's float32


def test_a_sweeps_k_best_variants_export_as_one_graph(cv_run, tmp_path, capsys):
    import shutil

    from fashiondist.evaluation.sweep import evaluate_sweep

    sweep = tmp_path / "sweep"
    for name, fold in (("a", 0), ("b", 1)):
        shutil.copytree(cv_run / f"fold-{fold}", sweep / name)
    _, best = evaluate_sweep(sweep, [sweep / "a", sweep / "b"], __import__("rich.console").console.Console())
    out = tmp_path / "top2.onnx"
    assert main(["export", str(sweep), "--ensemble", "2", "--out", str(out)]) == 0
    members = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["ensemble_members"])
    assert Path(members[0]["run"]).name == best.name and len(members) == 2  # leaderboard order
    capsys.readouterr()
    assert main(["export", str(sweep), "--ensemble", "3", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "--ensemble 3: the sweep" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()


def test_a_student_distils_the_cached_ensemble(cv_run, tiny_csv, tmp_path):
    out = tmp_path / "student"
    args = ["train", *FOLDS[:11], "--private-test", str(PRIVATE), "--data", str(tiny_csv), "--out", str(out)]
    args += ["--teacher", str(cv_run), "--set", "distill_temperature=2", "--set", "distill_weight=0.7"]
    first = _run(args)
    assert "teacher: predicting" in first.stderr and f"cached in {out / TEACHER_FILE}" in first.stderr
    data = load_data(str(tiny_csv))
    train_idx, _ = run_split(data.labels, TrainConfig(data=str(tiny_csv), private_test=PRIVATE))
    with np.load(out / TEACHER_FILE) as arrays:
        cached = arrays["probs"]
    ensemble = load_ensemble(expand_members(str(cv_run)))
    expected = model_probs(ensemble, torch.as_tensor(data.images[train_idx]).unsqueeze(1), 256).numpy()
    # the same float32 model, another batch split and memory format (the cache is computed channels_last, as
    # the run trains; kernels block the ~10^5-term dot products otherwise): as above, a few float32 eps
    # (1.2e-7) of the unit-scale probabilities
    np.testing.assert_allclose(cached, expected, atol=1e-5)
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["teacher"] == str(cv_run) and config["distill_weight"] == 0.7
    private = json.loads((out / "private_test.json").read_text())
    assert private["images"] == PRIVATE and private["scored"] == [str(out / "best")]
    stamp = (out / TEACHER_FILE).stat().st_mtime_ns
    again = _run([*args, "--resume", "auto"])
    assert (out / TEACHER_FILE).stat().st_mtime_ns == stamp  # computed once, read back
    assert f"teacher: probabilities read from {out / TEACHER_FILE}" in again.stderr


def test_distillation_loss_is_hinton_kd():
    torch.manual_seed(0)
    logits, labels = torch.randn(16, 10, requires_grad=True), torch.randint(0, 10, (16,))
    teacher = torch.softmax(torch.randn(16, 10), 1)
    hard = F.cross_entropy(logits, labels)
    got = add_distillation(hard, logits, teacher, temperature=3.0, weight=0.25)
    student = torch.log_softmax(logits / 3.0, 1)
    kl = (teacher * (teacher.log() - student)).sum(1).mean()
    # float32 on both sides: softmax, a 10-term sum and a 16-term mean (~30 roundings each), < 64 unit roundoffs
    assert torch.allclose(got, 0.75 * hard + 0.25 * 9.0 * kl, rtol=64 * 2.0**-24, atol=0)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--folds", "1"], "config key 'folds': 1 must be 0 (one split) or at least 2"),
        (["--folds", "2", "--models", "cnn,convnet"], "--folds trains one model per fold"),
        (["--teacher", "/nonexistent/run"], "/nonexistent/run: no such file or directory"),
        (["--mixup", "-1"], "config key 'mixup': -1.0 must be >= 0"),
        (["--set", "distill_augmented=true"], "config key 'distill_augmented': True needs a --teacher"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tmp_path, capsys, extra, message, tiny_csv):
    args = [
        "train",
        "--data",
        str(tiny_csv),
        "--epochs",
        "1",
        "--quiet",
        "--out",
        str(tmp_path / "r"),
        *extra,
    ]
    if "--models" not in extra:
        args[1:1] = ["--model", "cnn"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r" / "best").exists()


@pytest.mark.ddp
def test_two_rank_ddp_fold_training_matches_one_process(cv_run, tiny_csv, tmp_path):
    from fashiondist.engine import folds  # noqa: F401  (the module under test)

    port = str(29500 + os.getpid() % 1000)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    launcher += [str(REPO / "launch/accelerate/cpu_ddp.yaml"), "--main_process_port", port, "-m"]
    out = tmp_path / "ddp"
    proc = _run(["train", *FOLDS, "--data", str(tiny_csv), "--out", str(out), "--set", "mixup=0.2"], launcher)
    assert "32 per device x 1 accumulation x 2 process(es)" in proc.stderr
    with np.load(cv_run / "val_predictions.npz") as a, np.load(out / "val_predictions.npz") as b:
        assert np.array_equal(a["y_true"], b["y_true"])
        # cnn has no BatchNorm or dropout: two ranks follow the one-process trajectory up to summation order
        one_image = 1 / len(a["y_true"])
        acc_a = (a["probs"].argmax(1) == a["y_true"]).mean()
        acc_b = (b["probs"].argmax(1) == b["y_true"]).mean()
        assert abs(acc_a - acc_b) <= 2 * one_image + 1e-9
    for fold in range(2):
        assert json.loads((out / f"fold-{fold}" / "summary.json").read_text())["world_size"] == 2
