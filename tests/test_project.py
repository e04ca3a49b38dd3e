"""Project-level promises: the layer order holds, the code is lint-clean, CI runs the README's test command,
and the CLI starts without importing the heavy stages."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dev_tools import dev_tool

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


_tool = dev_tool


def test_import_layers_hold():
    """data -> models -> engine -> evaluation -> inference -> export -> pipeline -> cli; inference is torch-free."""
    proc = subprocess.run([_tool("lint-imports")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_ruff_is_clean():
    proc = subprocess.run(
        [_tool("ruff"), "check", "fashiondist", "tests", "launch"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_ruff_format_is_clean():
    """One layout for every file, so that merges and reviews show changes, not reformatting."""
    proc = subprocess.run(
        [_tool("ruff"), "format", "--check", "fashiondist", "tests", "launch"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]


def _readme_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_test_command():
    setup = (REPO / "README.md").read_text().split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
    commands = [block.strip() for block in re.findall(r"```bash\n(.*?)```", setup, flags=re.S)]
    assert len(commands) == 2, "the README's set-up section has exactly two commands"
    test_command = commands[1]
    assert "pytest" in test_command and "python3 -m venv .venv" in test_command
    ci = (REPO / ".ci" / "run").read_text()
    assert test_command in ci.splitlines(), ".ci/run must run the README's test command verbatim"


def test_cli_help_and_startup_do_not_import_torch():
    code = (
        "import sys; from fashiondist.cli import build_parser; build_parser();"
        "import fashiondist.inference.session, fashiondist.inference.predict;"
        "print(sorted(m for m in ('torch', 'torchvision', 'accelerate', 'sklearn', 'matplotlib') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_every_command_has_help():
    proc = subprocess.run(
        [sys.executable, "-m", "fashiondist", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0
    commands = re.findall(r"^    (\w[\w-]*)\s", proc.stdout, flags=re.M)
    assert {"data", "models", "train", "evaluate", "export", "infer"} <= set(commands)
    for command in commands:
        sub = subprocess.run(
            [sys.executable, "-m", "fashiondist", command, "--help"], capture_output=True, text=True, cwd=REPO
        )
        assert sub.returncode == 0 and "usage: fashiondist" in sub.stdout, command


def test_a_bad_option_is_one_line_and_exit_2():
    proc = subprocess.run(
        [sys.executable, "-m", "fashiondist", "train", "--precision", "fp8"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert "argument --precision: invalid choice: 'fp8'" in proc.stderr


def test_a_missing_test_csv_is_refused_before_training(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fashiondist", "train", "--models", "cnn", "--test", str(tmp_path / "nope.csv"),
         "--out", str(tmp_path / "sweep")],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"fashiondist: error: --test {tmp_path / 'nope.csv'}: no such file (checked before training, not after it)"
    )
    assert not (tmp_path / "sweep").exists()


def test_a_missing_dev_tool_fails_instead_of_skipping(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(
        pytest.fail.Exception, match=r"no-such-linter is not installed: install the dev extra \(pip"
    ):
        _tool("no-such-linter")
