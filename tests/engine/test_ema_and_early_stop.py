"""EMA warm-up of the decay, and early stopping, on the real engine.

Early stopping needs epochs that do not improve, for sure: plain SGD at lr 1e-30 moves no weight (an update of
1e-30 x a gradient of order 1 is below half an ulp of any weight of order 1e-3 or more, 2^-24 x 1e-3 = 6e-11),
so every epoch predicts bit for bit what the first did, and "better" (strictly higher accuracy) never happens.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from fashiondist.engine.ema import Ema
from fashiondist.run_layout import METRICS_FILE, SUMMARY_FILE

REPO = Path(__file__).resolve().parents[2]


def test_ema_decay_warms_up_then_holds(tmp_path):
    """timm's warm-up: the decay at update u is min(decay, (1 + u) / (10 + u)), worked out by hand here."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    ema = Ema(model, decay=0.5)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for updates in range(1, 9):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model, updates)
        decay = min(0.5, (1 + updates) / (10 + updates))  # 2/11, 3/12, ... then 0.5 from update 8 on
        for k, v in model.state_dict().items():
            expected[k] = decay * expected[k] + (1 - decay) * v
    assert (1 + 8) / (10 + 8) == 0.5, "the last update must be past the warm-up for this test to mean it"
    for k, v in ema.module.state_dict().items():
        # lerp vs the formula: <= 4 float64 roundings per update of values < 10 (seeded), 8 updates
        torch.testing.assert_close(v, expected[k], rtol=0, atol=8 * 4 * 10 * 2.0**-53)


def test_early_stop_ends_after_the_stale_epochs(tmp_path, tiny_train, tiny_csv):
    out = tmp_path / "run"
    frozen = ["--optimizer", "sgd", "--lr", "1e-30", "--set", "momentum=0", "--set", "early_stop=2"]
    cmd = [sys.executable, "-m", "fashiondist", "train", *tiny_train, "--epochs", "6", *frozen]
    cmd += ["--data", str(tiny_csv), "--out", str(out)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=240, cwd=REPO, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    # epoch 1 improves on nothing; epochs 2 and 3 are the two stale ones; the run stops there, not at 6
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert len({r["val_acc"] for r in records}) == 1, "the frozen weights predicted differently"
    assert "cnn: early stop, no better validation accuracy for 2 epochs" in proc.stderr
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["epochs"] == 3 and summary["best_epoch"] == 1
