"""`fashiondist models`: a table of every variant, sized for --num-classes."""

from __future__ import annotations

import argparse

import pytest

from fashiondist.cli import models as models_cli
from fashiondist.errors import InputError
from fashiondist.models import list_models


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fashiondist")
    models_cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_table_lists_every_model_with_notebook_counts(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert _run(["models", "--num-classes", "5"]) == 0
    out = capsys.readouterr().out
    for name in list_models():
        assert name in out
    assert "346,821" in out and "240,901" in out and "MACs/image" in out


def test_bad_num_classes_is_an_input_error():
    with pytest.raises(InputError, match="--num-classes 1"):
        _run(["models", "--num-classes", "1"])
