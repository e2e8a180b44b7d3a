"""Weight transfer from reconstruction to segmentation checkpoints, for every registered model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from enface.engine.checkpoint import load_model
from enface.engine.transfer import transfer_weights
from enface.errors import CheckpointError
from enface.models import create_model, list_models, model_spec

WIDTH = 0.25


def _save(model: torch.nn.Module, path: Path, prefix: str = "model.", with_info: bool = True) -> Path:
    ckpt = {"state_dict": {prefix + k: v for k, v in model.state_dict().items()}}
    if with_info:
        ckpt["enface"] = {
            "model": model_spec(model),
            "task": "reconstruct",
            "config": {"target": "faf_inv"},
            "metric": None,
        }
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("name", list_models())
def test_same_head_loads_everything(name: str, tmp_path: Path) -> None:
    source = create_model(name, width=WIDTH)
    target = create_model(name, width=WIDTH)
    report = transfer_weights(target, _save(source, tmp_path / "r.ckpt"))
    assert report.not_loaded == []
    assert set(report.loaded) == set(target.state_dict())
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k


@pytest.mark.parametrize("name", list_models())
def test_different_head_is_skipped_exactly(name: str, tmp_path: Path) -> None:
    source = create_model(name, out_channels=1, width=WIDTH)
    target = create_model(name, out_channels=3, width=WIDTH)
    head_before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("head.")}
    report = transfer_weights(target, _save(source, tmp_path / "r.ckpt"))
    assert head_before, f"{name} has no module named 'head'"
    assert set(report.not_loaded) == set(head_before)
    for k, v in head_before.items():
        assert torch.equal(target.state_dict()[k], v)
    body = [k for k in source.state_dict() if not k.startswith("head.")]
    assert all(torch.equal(target.state_dict()[k], source.state_dict()[k]) for k in body)


@pytest.mark.parametrize("prefix", ["model.", "module.", "model._orig_mod.", ""])
def test_wrapper_prefixes_are_stripped(prefix: str, tmp_path: Path) -> None:
    source = create_model("fpn", width=WIDTH)
    target = create_model("fpn", width=WIDTH)
    report = transfer_weights(target, _save(source, tmp_path / "r.ckpt", prefix=prefix, with_info=False))
    assert report.not_loaded == [] and len(report.loaded) == len(source.state_dict())


def test_other_architecture_is_refused(tmp_path: Path) -> None:
    others = [n for n in list_models() if n != "fpn"]
    path = _save(create_model("fpn", width=WIDTH), tmp_path / "r.ckpt")
    for name in others:
        with pytest.raises(CheckpointError, match="same architecture"):
            transfer_weights(create_model(name, width=WIDTH), path)
    # without the description inside, mismatching keys are still refused
    plain = _save(create_model("fpn", width=WIDTH), tmp_path / "plain.ckpt", with_info=False)
    with pytest.raises(CheckpointError, match="keys do not match"):
        transfer_weights(create_model(others[0], width=WIDTH), plain)


def test_other_width_is_refused(tmp_path: Path) -> None:
    path = _save(create_model("fpn", width=0.25), tmp_path / "r.ckpt")
    with pytest.raises(CheckpointError, match="width"):
        transfer_weights(create_model("fpn", width=0.5), path)
    plain = _save(create_model("fpn", width=0.25), tmp_path / "plain.ckpt", with_info=False)
    with pytest.raises(CheckpointError, match="only the head may differ"):
        transfer_weights(create_model("fpn", width=0.5), plain)


def test_missing_and_corrupt_checkpoints(tmp_path: Path) -> None:
    model = create_model("fpn", width=WIDTH)
    with pytest.raises(CheckpointError, match="not found"):
        transfer_weights(model, tmp_path / "nope.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        transfer_weights(model, bad)


def test_load_model_rebuilds_from_file_alone(tmp_path: Path) -> None:
    source = create_model("fpn", out_channels=2, width=WIDTH).eval()
    path = _save(source, tmp_path / "r.ckpt")
    model, info = load_model(path)
    assert info["model"]["out_channels"] == 2
    x = torch.randn(1, 1, 4, 16, 64)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


@pytest.mark.parametrize("name", ["fpn", "resensnet"])
def test_format_1_checkpoint_predicts_as_it_did(name: str, tmp_path: Path) -> None:
    """Checkpoints of format 1 had the FPN decoder's inputs in [upsampled, skip] order;
    they are converted when read, so the rebuilt model computes what the old one did."""
    source = create_model(name, width=WIDTH).eval()
    state = source.state_dict()
    old = dict(state)
    for i, stage in enumerate(source.decoder):  # write the weights as format 1 laid them out
        for key in (f"decoder.{i}.body.0.weight", f"decoder.{i}.shortcut.0.weight"):
            w = state[key]
            old[key] = torch.cat([w[:, stage.c_skip :], w[:, : stage.c_skip]], dim=1)
    path = tmp_path / "v1.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in old.items()},
            "enface": {
                "model": model_spec(source),
                "task": "segment",
                "config": {},
                "metric": None,
                "format_version": 1,
            },
        },
        path,
    )
    model, _ = load_model(path)
    x = torch.randn(1, 1, 4, 16, source.min_depth)
    with torch.no_grad():
        assert torch.allclose(model(x), source(x), atol=1e-6)
    target = create_model(name, width=WIDTH)
    transfer_weights(target, path)
    for k, v in state.items():
        assert torch.equal(target.state_dict()[k], v), k
