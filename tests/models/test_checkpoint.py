"""Model files: safetensors + JSON round trip, wrapper prefixes stripped, clear errors on bad files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fashiondist import __version__
from fashiondist.constants import class_names_for
from fashiondist.errors import InputError
from fashiondist.models import create_model
from fashiondist.models.checkpoint import load_model, save_model


def _trained_convnet() -> torch.nn.Module:
    """A convnet whose BN running stats moved off their init values (so buffers round-trip too)."""
    torch.manual_seed(0)
    model = create_model("convnet", 5, width=0.5)
    model(torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8))
    return model.eval()


def test_round_trip_from_dir_file_and_run_dir(tmp_path, sample_batch):
    images, _ = sample_batch
    model = _trained_convnet()
    wrapped = torch.compile(model)  # its state_dict keys carry `_orig_mod.`; never called, so never compiled
    best = tmp_path / "run" / "best"
    save_model(best, wrapped, "convnet", {"width": 0.5}, 5, class_names_for(5), extra_meta={"epoch": 3})

    assert not any(key.startswith("_orig_mod.") for key in load_file(best / "model.safetensors"))
    meta = json.loads((best / "model.json").read_text())
    assert meta["name"] == "convnet" and meta["kwargs"] == {"width": 0.5} and meta["epoch"] == 3
    assert meta["class_names"] == ["0", "1", "2", "3", "4"] and meta["version"] == __version__
    assert sorted(p.name for p in best.iterdir()) == ["model.json", "model.safetensors"]  # no temp files left

    with torch.no_grad():
        expected = model(images)
    for path in (best, best / "model.safetensors", tmp_path / "run"):
        loaded, loaded_meta = load_model(path)
        assert not loaded.training and loaded_meta == meta
        with torch.no_grad():  # the same weights, batch, kernels and process: bitwise
            torch.testing.assert_close(loaded(images), expected, rtol=0, atol=0)


def test_channels_last_model_saves(tmp_path):
    model = create_model("cnn", 5).to(memory_format=torch.channels_last)
    save_model(tmp_path, model, "cnn", {}, 5, class_names_for(5))
    loaded, _ = load_model(tmp_path)
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_bad_files_are_input_errors_naming_the_path(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_model(tmp_path / "missing")
    with pytest.raises(InputError, match="not a model"):
        load_model(tmp_path)

    save_model(tmp_path, create_model("cnn", 5), "cnn", {}, 5, class_names_for(5))
    weights = tmp_path / "model.safetensors"
    meta = json.loads((tmp_path / "model.json").read_text())

    (tmp_path / "model.json").write_text(
        json.dumps({**meta, "num_classes": 10, "class_names": list("0123456789")})
    )
    with pytest.raises(InputError, match=f"{weights}: weights do not fit model 'cnn'"):
        load_model(tmp_path)

    (tmp_path / "model.json").write_text(json.dumps({**meta, "name": "vgg"}))
    with pytest.raises(InputError, match="model.json: unknown model 'vgg'"):
        load_model(tmp_path)

    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(InputError, match="model.json: not a readable model description"):
        load_model(tmp_path)

    (tmp_path / "model.json").write_text(json.dumps(meta))
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match=f"{weights}: not a readable safetensors file"):
        load_model(weights)
