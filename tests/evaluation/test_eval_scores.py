"""evaluate_run's metrics against scikit-learn computed here from the saved predictions; bad run dirs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fake_runs import informative_probs
from sklearn import metrics as skm

from fashiondist.errors import InputError
from fashiondist.evaluation.scores import evaluate_predictions, evaluate_run

# Numerics-sensitive: CI runs this module again under AVX-512 (no AMX) and AVX2 kernel holds (.ci/run).
pytestmark = pytest.mark.numerics


def _saved(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(run_dir / "val_predictions.npz", allow_pickle=False) as arrays:
        return arrays["y_true"], arrays["probs"]


def _strict_json(path: Path) -> dict:
    def reject(token: str) -> None:
        raise AssertionError(f"{path} holds the non-standard JSON token {token}")

    return json.loads(path.read_text(), parse_constant=reject)


def _reordered(n: int) -> float:
    """Relative tolerance between two float64 computations of one metric over n rows that differ only in the
    order of their sums (sklearn reached through different calls): n terms reordered, n x 2^-53."""
    return max(n, 1) * 2.0**-53


def test_metrics_match_sklearn_on_the_saved_predictions(make_run, labels):
    num_classes = int(labels.max()) + 1
    run_dir = make_run("convnet", labels, informative_probs(labels, num_classes, skill=2.5, seed=1))
    result = evaluate_run(run_dir)
    y, probs = _saved(run_dir)
    pred = probs.argmax(axis=1)
    m = result.metrics

    assert m["num_samples"] == y.size and m["num_classes"] == num_classes
    assert 0.5 < m["accuracy"] < 0.99, "the generator should be informative but imperfect"
    rel = _reordered(2 * y.size)  # every metric below sums at most 2n float64 terms, in either order
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), rel=rel)
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average=average, zero_division=0)
        assert (m[f"precision_{average}"], m[f"recall_{average}"], m[f"f1_{average}"]) == pytest.approx(
            (p, r, f), rel=rel
        )
    p, r, f, support = skm.precision_recall_fscore_support(
        y, pred, labels=range(num_classes), zero_division=0
    )
    for k, name in enumerate(m["class_names"]):
        entry = m["classification_report"][name]
        assert (entry["precision"], entry["recall"], entry["f1-score"]) == pytest.approx(
            (p[k], r[k], f[k]), rel=rel
        )
        assert entry["support"] == support[k]
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, probs), rel=rel)
    auc = m["roc_auc"]
    assert auc["macro"] == pytest.approx(
        skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"), rel=rel
    )
    assert auc["micro"] == pytest.approx(
        skm.roc_auc_score(y, probs, multi_class="ovr", average="micro"), rel=rel
    )
    per_class = skm.roc_auc_score(y, probs, multi_class="ovr", average=None)
    assert list(auc["per_class"].values()) == pytest.approx(per_class.tolist(), rel=rel)
    assert auc["note"] is None
    assert _strict_json(run_dir / "evaluation.json")["metrics"] == m


def test_a_class_absent_from_the_labels_gets_a_null_auc_and_a_note(labels):
    num_classes = int(labels.max()) + 1
    keep = labels != num_classes - 1
    y, probs = labels[keep], informative_probs(labels, num_classes, skill=2.5, seed=2)[keep]
    names = [f"class {k}" for k in range(num_classes)]
    m = evaluate_predictions(y, probs, names)

    absent = names[-1]
    assert m["roc_auc"]["per_class"][absent] is None
    assert absent in m["roc_auc"]["note"]
    expected = [skm.roc_auc_score(y == k, probs[:, k]) for k in range(num_classes - 1)]
    rel = _reordered(2 * y.size)  # at most 2n float64 terms summed, in either order
    assert m["roc_auc"]["macro"] == pytest.approx(np.mean(expected), rel=rel)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, probs, labels=range(num_classes)), rel=rel)
    assert m["classification_report"][absent]["support"] == 0
    assert len(m["confusion_matrix"]) == num_classes
    json.dumps(m, allow_nan=False)  # JSON-serialisable without NaN


def _npz(path: Path, **arrays: np.ndarray) -> None:
    np.savez(path / "val_predictions.npz", **arrays)


def _logits_instead_of_probs(run_dir: Path, y: np.ndarray, probs: np.ndarray) -> None:
    _npz(run_dir, y_true=y, probs=np.log(probs))


def _rows_not_summing_to_one(run_dir: Path, y: np.ndarray, probs: np.ndarray) -> None:
    _npz(run_dir, y_true=y, probs=probs * 0.5)


def _duplicate_class_names(run_dir: Path, y: np.ndarray, probs: np.ndarray) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["class_names"][1] = summary["class_names"][0]
    (run_dir / "summary.json").write_text(json.dumps(summary))


def _pickled_object_array(run_dir: Path, y: np.ndarray, probs: np.ndarray) -> None:
    _npz(run_dir, y_true=np.array([object()] * y.size, dtype=object), probs=probs)


def _label_out_of_range(run_dir: Path, y: np.ndarray, probs: np.ndarray) -> None:
    bad = y.copy()
    bad[0] = probs.shape[1]
    _npz(run_dir, y_true=bad, probs=probs)


def _row_count_mismatch(run_dir: Path, y: np.ndarray, probs: np.ndarray) -> None:
    _npz(run_dir, y_true=y[:-1], probs=probs)


def _missing_probs(run_dir: Path, y: np.ndarray, probs: np.ndarray) -> None:
    _npz(run_dir, y_true=y)


def _no_predictions(run_dir: Path, y: np.ndarray, probs: np.ndarray) -> None:
    (run_dir / "val_predictions.npz").unlink()


def _summary_without_params(run_dir: Path, y: np.ndarray, probs: np.ndarray) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    del summary["params"]
    (run_dir / "summary.json").write_text(json.dumps(summary))


def _class_names_as_one_string(run_dir: Path, y: np.ndarray, probs: np.ndarray) -> None:
    """Ten one-letter names written as one JSON string: the right length, once read as its characters."""
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["class_names"] = "abcdefghij"[: probs.shape[1]]
    (run_dir / "summary.json").write_text(json.dumps(summary))


def _history_bad_line(run_dir: Path, y: np.ndarray, probs: np.ndarray) -> None:
    with (run_dir / "metrics.jsonl").open("a") as handle:
        handle.write("{not json\n")


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_logits_instead_of_probs, "probs must be finite and in [0, 1]"),
        (_rows_not_summing_to_one, "probability rows must sum to 1 (off by up to 0.5)"),
        (_duplicate_class_names, "class names must be unique"),
        (_pickled_object_array, "not a readable .npz of plain arrays"),
        (_label_out_of_range, "labels must be in 0..9"),
        (_row_count_mismatch, "labels but"),
        (_missing_probs, "missing array(s) probs"),
        (_no_predictions, "val_predictions.npz: not found"),
        (_summary_without_params, "summary.json: missing key(s) params"),
        (_class_names_as_one_string, "summary.json: class_names must be a JSON list of names, got str"),
        (_history_bad_line, "metrics.jsonl, line 7: not valid JSON"),
    ],
)
def test_a_bad_run_dir_is_one_clear_error_and_writes_nothing(make_run, labels, corrupt, message):
    num_classes = int(labels.max()) + 1
    probs = informative_probs(labels, num_classes, skill=2.5, seed=3)
    run_dir = make_run("bad", labels, probs, epochs=6)
    corrupt(run_dir, labels, probs)
    expected = message.replace("0..9", f"0..{num_classes - 1}")
    with pytest.raises(InputError) as caught:
        evaluate_run(run_dir)
    assert expected in str(caught.value)
    assert not (run_dir / "evaluation.json").exists()
    assert not list(run_dir.glob(".*.tmp"))


def test_a_resumed_run_repeating_an_epoch_keeps_its_later_line(make_run, labels):
    num_classes = int(labels.max()) + 1
    run_dir = make_run("resumed", labels, informative_probs(labels, num_classes, 2.5, 4), epochs=3)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    repeated = {**json.loads(lines[1]), "val_acc": 0.123}
    (run_dir / "metrics.jsonl").write_text("\n".join([*lines, json.dumps(repeated)]) + "\n\n")
    history = evaluate_run(run_dir).history
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[1]["val_acc"] == 0.123
