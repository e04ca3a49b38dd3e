"""Every command checks its output path before the work starts (`fashiondist.output_paths`), and prints what
a user typed as written (`fashiondist.consoles`: rich markup off).

Each refusal is exit 2, one `fashiondist: error:` line naming --out, no traceback, and a good file already
at the path keeps its bytes. Tests run as root, where permission bits refuse nothing: "cannot be written"
is tested with what fails for root too, a path under a regular file and /sys (sysfs takes no new files).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fashiondist.cli import main
from fashiondist.output_paths import check_output_dir, format_out_template

PACKAGE = Path(__file__).resolve().parents[2] / "fashiondist"
GOOD = b"Id,Label\n0,1\n"


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `argv`; it must exit 2 with one error line on stderr and nothing on stdout. Return that line."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fashiondist: error: --"), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    path = tmp_path / "kept.csv"
    path.write_bytes(GOOD)
    return path


def test_train_out_an_existing_file_or_a_path_under_one(good_file, capsys):
    line = _refused(["train", "--model", "cnn", "--out", str(good_file)], capsys)
    assert line.endswith(f"--out {good_file}: is a file, not a directory (hint: choose a directory path)")
    line = _refused(["train", "--model", "cnn", "--out", str(good_file / "run")], capsys)
    assert f"{good_file} is a file, so nothing can be created under it" in line
    line = _refused(["train", "--models", "cnn,convnet", "--out", str(good_file / "sweep")], capsys)
    assert f"--out {good_file / 'sweep'}:" in line
    assert good_file.read_bytes() == GOOD


def test_train_out_placeholders(tmp_path, capsys):
    line = _refused(["train", "--model", "cnn", "--out", str(tmp_path / "runs/{foo}")], capsys)
    assert "unknown placeholder {foo}" in line and "{model}" in line
    line = _refused(["train", "--model", "cnn", "--out", str(tmp_path / "runs/{")], capsys)
    assert "write a literal brace twice" in line
    assert not (tmp_path / "runs").exists()
    assert format_out_template("runs/{model}-{{x}}", "--out", model="cnn") == "runs/cnn-{x}"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "{model} is the variant's name, the only placeholder" in " ".join(capsys.readouterr().out.split())


def test_an_unwritable_directory_is_refused_before_the_work():
    """As root only a file system refuses: /sys takes no new entry (checked here first, so the test says so)."""
    with pytest.raises(OSError):
        Path("/sys/fashiondist-probe").mkdir()
    from fashiondist.errors import InputError

    with pytest.raises(InputError, match=r"--out /sys/x/run: cannot write in /sys \(.+\)"):
        check_output_dir("/sys/x/run", "--out")


def test_train_out_unwritable(capsys):
    line = _refused(["train", "--model", "cnn", "--out", "/sys/fashiondist-run"], capsys)
    assert line.startswith("fashiondist: error: --out /sys/fashiondist-run: cannot write in /sys (")


def test_export_out_an_existing_directory(model_dir, tmp_path, capsys):
    (tmp_path / "keep.txt").write_bytes(GOOD)
    line = _refused(["export", str(model_dir), "--out", str(tmp_path)], capsys)
    assert line == f"fashiondist: error: --out {tmp_path}: is a directory (hint: give a file name inside it)"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"] and (
        tmp_path / "keep.txt"
    ).read_bytes() == GOOD


def test_export_csv_out_an_existing_file_or_its_csv_a_directory(good_file, tmp_path, capsys):
    line = _refused(["data", "export-csv", "--out", str(good_file)], capsys)
    assert line.endswith(f"--out {good_file}: is a file, not a directory (hint: choose a directory path)")
    assert good_file.read_bytes() == GOOD
    out = tmp_path / "csv"
    (out / "testX.csv").mkdir(parents=True)
    line = _refused(["data", "export-csv", "--out", str(out)], capsys)
    assert line.startswith(f"fashiondist: error: --out {out / 'testX.csv'}: is a directory")
    assert sorted(p.name for p in out.iterdir()) == ["testX.csv"], "train.csv not written either"


def test_infer_and_evaluate_out(onnx_model, model_dir, sample_test_csv, good_file, tmp_path, capsys):
    _refused(["infer", str(sample_test_csv), "--model", str(onnx_model), "--out", str(tmp_path)], capsys)
    line = _refused(["evaluate", str(model_dir), "--data", "sample", "--out", str(good_file)], capsys)
    assert "is a file, not a directory" in line
    assert good_file.read_bytes() == GOOD


def test_user_paths_print_as_written(tmp_path, capsys, monkeypatch, fresh_accelerate):
    """`run[/x]` failed with a MarkupError after the whole training; `[test]` printed as nothing."""
    monkeypatch.chdir(tmp_path)
    out = "runs/[test]/run[/x]"
    assert main(["train", "--model", "cnn", "--epochs", "1", "--quiet", "--out", out]) == 0
    captured = capsys.readouterr()
    assert captured.out.rstrip().endswith(f"-> {out}")
    assert (tmp_path / out / "best/model.safetensors").is_file()


def test_every_console_is_one_of_the_two_without_markup():
    """The class, not the one message: no module builds its own rich Console or writes markup tags."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "consoles.py":
            continue
        text = path.read_text()
        for pattern in (r"\bConsole\(", r"\[/\]", r"\[/?(bold|red|green|yellow|dim)\b", r"rich\.markup"):
            offenders += [f"{path.name}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert offenders == []


def test_bench_out_and_json(good_file, tmp_path, capsys):
    line = _refused(["bench", "time-to-accuracy", "--recipe", "cnn", "--out", str(good_file)], capsys)
    assert line.endswith(f"--out {good_file}: is a file, not a directory (hint: choose a directory path)")
    line = _refused(["bench", "time-to-accuracy", "--recipe", "cnn", "--json", str(tmp_path)], capsys)
    assert line.endswith(f"--json {tmp_path}: is a directory (hint: give a file name inside it)")
    assert good_file.read_bytes() == GOOD
