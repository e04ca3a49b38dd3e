"""launch/experiments/cpu-ensemble.sh, the seeds-ensemble recipe, run end to end on 340 images for one epoch.

Three members of different kinds, cpu-best.yaml's convnet (seed 0), the same with cutmix, and
cpu-ensemble.yaml's resnet9 (seed 2, split_seed 0), share one validation split, so the export checks the
ensemble there; the student (seed 1, split seed 0) starts from the convnet member, is taught by all three on
its augmented batches, and validates on the same images; a rerun finds everything finished.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "launch" / "experiments" / "cpu-ensemble.sh"
QUICK = "--epochs 1 --batch-size 64 --private-test 60 --precision no --quiet --set eval_batch_size=256"


def _recipe(data: Path, out: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "FASHIONDIST": f"{sys.executable} -m fashiondist",
        "FASHIONDIST_ARGS": QUICK,
    }
    return subprocess.run(
        ["bash", str(SCRIPT), str(data), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )


def _metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_the_recipe_trains_exports_distils_and_resumes(tiny_csv, tmp_path):
    out = tmp_path / "ens"
    proc = _recipe(tiny_csv, out)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    members = [out / name for name in ("convnet", "cutmix", "resnet9")]
    runs = [*members, out / "student"]
    seeds = [json.loads((r / "run.json").read_text())["seeds"] for r in runs]
    assert [s["seed"] for s in seeds] == [0, 0, 2, 1] and {s["split_seed"] for s in seeds} == {0}
    y_true = [np.load(r / "val_predictions.npz")["y_true"] for r in runs]
    assert all(np.array_equal(y_true[0], y) for y in y_true[1:])
    listed = json.loads(_metadata(out / "model.onnx")["ensemble_members"])
    assert [Path(m["run"]).name for m in listed] == ["convnet", "cutmix", "resnet9"]
    assert {m["tta"] for m in listed} == {"flip-shift"} and _metadata(out / "student" / "model.onnx")[
        "tta"
    ] == "flip-shift"
    report = json.loads((out / "export_report.json").read_text())
    assert report["accuracy"]["agrees"] is True and report["accuracy"]["images"] == len(y_true[0])
    configs = [json.loads((m / "run.json").read_text())["config"] for m in members]
    assert [(c["model"], c["cutmix"], c["model_kwargs"].get("width")) for c in configs] == [
        ("convnet", 0.0, None),
        ("convnet", 1.0, None),
        ("resnet9", 0.0, 0.3),
    ]
    student = json.loads((out / "student" / "run.json").read_text())["config"]
    assert student["teacher"] == ",".join(str(m) for m in members) and student["distill_temperature"] == 2
    assert student["init"] == str(members[0]) and student["distill_augmented"] is True
    assert (out / "student" / "model.onnx").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = _recipe(tiny_csv, out)  # everything finished: nothing trains or exports again
    assert again.returncode == 0, again.stderr[-4000:]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps


def test_the_recipe_teaches_its_usage(tmp_path):
    help_ = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "DATA_DIR [OUT]" in help_.stdout
    bad = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert bad.returncode == 2 and "DATA_DIR [OUT]" in bad.stderr and not bad.stdout
