"""Config values checked where they are parsed (issue 23, items 7-9): each bad value is one line naming the
option or key, exit 2, before any data is loaded or anything trained; YAML with a repeated key, an alias or
bytes that are not UTF-8 is refused the same way."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

from fashiondist.cli import main
from fashiondist.config import SEED_MAX, TRACKERS, TrainConfig, apply_overrides, load_yaml
from fashiondist.errors import InputError


def _refused(argv: list[str], capsys, *expected: str) -> str:
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own refusals
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("fashiondist: error: "), err
    for text in expected:
        assert text in err, err
    return err


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--seed", "-1"], "config key 'seed'"),
        (["--seed", str(SEED_MAX + 1)], "config key 'seed'"),
        (["--set", "momentum=-1"], "config key 'momentum'"),
        (["--set", "momentum=1.5"], "config key 'momentum'"),
        (["--set", "weight_decay=-1"], "config key 'weight_decay'"),
        (["--set", "weight_decay=.nan"], "config key 'weight_decay'"),
        (["--set", "lr=.inf"], "config key 'lr'"),
        (["--set", "grad_clip=-2"], "config key 'grad_clip'"),
        (["--sam", "-0.05"], "config key 'sam'"),
        (["--set", "sam=.nan"], "config key 'sam'"),
        (["--set", "sam_start=1"], "config key 'sam_start'"),
        (["--set", "model_kwargs.width=abc"], "model_kwargs.width"),
        (["--set", "model_kwargs.width=[1, 2]"], "model_kwargs.width"),
        (["--set", "model_kwargs.width={a: 1}"], "model_kwargs.width"),
        (["--set", "model_kwargs.extra_convs=1.5"], "model_kwargs.extra_convs"),
        (["--log-with", "garbage"], "config key 'log_with'"),
        (["--log-with", "tensorboard,garbage"], "config key 'log_with'"),
        (["--set", "lr=[1"], "--set lr=[1"),
    ],
)
def test_bad_values_are_one_line_before_any_work(flags, expected, tmp_path: Path, capsys):
    _refused(["train", "--model", "convnet", "--out", str(tmp_path / "run"), *flags], capsys, expected)
    assert not (tmp_path / "run").exists()


def _yaml(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "config.yaml"
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


@pytest.mark.parametrize(
    "text,expected",
    [
        ("model: [cnn]\n", "'model'"),
        ("model: {name: cnn}\n", "'model'"),
        ("per_model: {cnn: [1]}\n", "per_model.cnn"),
        ("per_model: {cnn: 3}\n", "per_model.cnn"),
        ("lr: 0.1\nepochs: 2\nlr: 0.2\n", "line 3: key 'lr' given twice (first on line 1)"),
        ("per_model:\n  cnn: {lr: 0.1, lr: 0.2}\n", "key 'lr' given twice"),
        ("{lr: 0.1, lr: 0.2}\n", "key 'lr' given twice"),
        ("model_kwargs: {width: 1, width: 2}\n", "key 'width' given twice"),
        (b"lr: 0.1\nmodel: caf\xe9\n", "line 2: not UTF-8 text (byte 0xe9)"),
        (b"\xff\xfel\x00r\x00", "not UTF-8"),
        ("a: &x 1\nlr: *x\n", "YAML alias *x refused"),
    ],
)
def test_yaml_files_refused_in_one_line(text, expected, tmp_path: Path, capsys):
    config = _yaml(tmp_path, text)
    _refused(
        ["train", "--config", str(config), "--out", str(tmp_path / "run")], capsys, str(config), expected
    )


BILLION_LAUGHS = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]"
            for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        "model: *i",
    ]
)


def test_nested_aliases_are_refused_before_they_expand(tmp_path: Path, capsys):
    """333 bytes that expand to 9**9 items: refused at the first alias, in well under a second."""
    config = _yaml(tmp_path, BILLION_LAUGHS)
    start = time.perf_counter()
    _refused(["train", "--config", str(config)], capsys, "alias *a refused")
    assert time.perf_counter() - start < 5  # bound: parsing a few hundred bytes; the expansion never returned
    with pytest.raises(InputError, match="alias"):
        load_yaml(config)


def test_a_value_in_a_message_is_shown_bounded():
    """A huge (but legal, alias-free) value in a refusal prints a bounded repr, not the whole value."""
    huge = [list(range(1000))] * 1000
    with pytest.raises(InputError) as err:
        apply_overrides(TrainConfig(), {"model": huge})
    assert len(str(err.value)) < 400


def test_trackers_are_accelerates():
    from accelerate.utils import LoggerType

    assert set(TRACKERS) == {t.value for t in LoggerType}


def test_accelerate_mixed_precision_garbage(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "garbage")
    _refused(
        ["train", "--out", str(tmp_path / "run"), "--epochs", "1"],
        capsys,
        "ACCELERATE_MIXED_PRECISION='garbage'",
    )
    _refused(["doctor"], capsys, "ACCELERATE_MIXED_PRECISION='garbage'")


@pytest.mark.parametrize("threads", ["0", "-1", str((os.cpu_count() or 1) + 1), "10000"])
def test_infer_threads_within_the_machine(threads, capsys):
    _refused(["infer", "x.csv", "--model", "m.onnx", "--threads", threads], capsys, "--threads")


@pytest.mark.parametrize("drop", ["-5", "101", "nan", "abc"])
def test_export_int8_drop_checked_up_front(drop, capsys):
    _refused(["export", "no-such-run", "--max-int8-drop", drop], capsys, "--max-int8-drop")


@pytest.mark.parametrize("opset", ["99", "7", "0", "-3", "17"])
def test_export_opset_checked_up_front(opset, model_dir: Path, tmp_path: Path, capsys):
    from fashiondist.export.opsets import supported_opsets

    ok = supported_opsets()
    assert ok.start == 18 and ok.stop - 1 >= 20  # torch's native opset; the README's default 20 is in range
    _refused(
        ["export", str(model_dir), "--opset", opset, "--out", str(tmp_path / "m.onnx")],
        capsys,
        f"--opset {opset}: not supported here",
    )
    assert not (tmp_path / "m.onnx").exists()


def test_good_values_still_pass():
    cfg = apply_overrides(
        TrainConfig(),
        {"seed": SEED_MAX, "momentum": 0.0, "weight_decay": 0.0, "log_with": "tensorboard", "lr": 0.5},
    )
    assert cfg.seed == SEED_MAX and math.isclose(cfg.lr, 0.5)
