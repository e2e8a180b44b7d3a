"""Importing weights of the paper's public code (``enface import-weights``).

``tests/data/paper_state_dict_keys.json`` lists the key names and shapes of the state dicts of
the paper code's FPN, ReSensNet and LachinovNet (default settings, one output). The tests
fill those shapes with random tensors, as the paper code's Lightning checkpoints hold them.
"""

from __future__ import annotations

import json
import pathlib
from pathlib import Path

import pytest
import torch

from enface.cli import main
from enface.engine.checkpoint import checkpoint_info, load_model, read_checkpoint
from enface.engine.paper_weights import import_paper_weights, map_paper_state_dict, read_paper_state_dict
from enface.engine.runs import RunSpec
from enface.engine.transfer import transfer_weights
from enface.errors import CheckpointError
from enface.models import count_parameters, create_model
from enface.models.fpn import DecoderStage
from enface.models.lachinov import DecoderLevel

FIXTURE = Path(__file__).parent / "data" / "paper_state_dict_keys.json"
MODELS = ("fpn", "resensnet", "lachinov")
# Smallest inputs (N, C, H, W, D) each model takes at full width; resensnet needs D = 128.
INPUTS = {"fpn": (1, 1, 4, 16, 64), "resensnet": (1, 1, 4, 16, 128), "lachinov": (1, 1, 2, 16, 8)}


def paper_keys(model: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(s)) for k, s in json.loads(FIXTURE.read_text())["models"][model]["keys"]]


def paper_state(model: str, seed: int = 0, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """Random tensors with the paper code's keys and shapes, as in its Lightning checkpoints."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in paper_keys(model):
        if key.endswith("num_batches_tracked"):
            state[prefix + key] = torch.tensor(3)
        elif key.endswith("running_var"):
            state[prefix + key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[prefix + key] = torch.randn(shape, generator=g) * 0.1
    return state


def write_paper_checkpoint(path: Path, model: str) -> dict[str, torch.Tensor]:
    state = paper_state(model)
    torch.save({"epoch": 41, "global_step": 1234, "pytorch-lightning_version": "2.0.4", "state_dict": state}, path)
    return state


# --------------------------------------------------------------------------- mapping


def test_fixture_has_the_paper_models_at_their_parameter_counts() -> None:
    counts = {m: sum(torch.Size(s).numel() for k, s in paper_keys(m) if not _is_buffer(k)) for m in MODELS}
    # FPN and ReSensNet: exactly enface's counts. LachinovNet: enface's + the decoder stage
    # the paper code builds for its deepest level but never calls.
    assert counts == {"fpn": 4_369_553, "resensnet": 4_718_737, "lachinov": 5_158_113}
    unused = sum(
        torch.Size(s).numel()
        for k, s in paper_keys("lachinov")
        if k.startswith("model.decoder_convs.3.") and not _is_buffer(k)
    )
    assert counts["lachinov"] - unused == count_parameters(create_model("lachinov")) == 1_513_697


def _is_buffer(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")


@pytest.mark.parametrize("model", MODELS)
def test_every_key_is_mapped_and_every_tensor_used(model: str) -> None:
    source = paper_state(model)
    state, report = map_paper_state_dict(source, model)
    target = create_model(model, **report.spec["kwargs"]).state_dict()
    assert list(state) == list(target) == list(report.mapped)
    assert all(state[k].shape == target[k].shape for k in target)
    used = set(report.mapped.values()) | set(report.unused)
    stripped = {k.removeprefix("model.").removeprefix("resensnet.").removeprefix("model.") for k in source}
    assert used == stripped and len(used) == len(source)
    expected_unused = {k for k in stripped if k.startswith("decoder_convs.3.")} if model == "lachinov" else set()
    assert set(report.unused) == expected_unused
    assert len(expected_unused) == (39 if model == "lachinov" else 0)
    assert report.spec == {
        "name": model,
        "in_channels": 1,
        "out_channels": 1,
        "width": 1.0,
        "kwargs": {"depth": 128} if model == "resensnet" else {},
    }


def test_tensors_are_converted_to_enface_layout() -> None:
    """FPN: 3D (kh, kw, 1) decoder/head kernels become 2D. Lachinov: (B-scans, depth, A-scans) kernels
    become (B-scans, A-scans, depth)."""
    src = paper_state("fpn")
    state, _ = map_paper_state_dict(src, "fpn")
    assert torch.equal(
        state["decoder.0.body.0.weight"], src["model.resensnet.up_concat4.conv.convBlock.0.0.weight"][..., 0]
    )
    assert torch.equal(state["head.weight"], src["model.resensnet.final1.0.weight"][..., 0])
    assert torch.equal(state["projections.4.project.0.weight"], src["model.resensnet.zdimRed5.0.convBlock.0.0.weight"])
    assert torch.equal(state["encoder.2.unit2.body.6.weight"], src["model.resensnet.conv3.1.convBlock.2.0.weight"])
    src = paper_state("lachinov")
    state, _ = map_paper_state_dict(src, "lachinov")
    w = src["model.model.decoder_convs.0.0.weight"]  # 3x3x3 kernel: its last two axes swap
    assert torch.equal(state["decoder.0.body.0.weight"], w.permute(0, 1, 2, 4, 3))
    assert state["stem.0.weight"].shape == (32, 1, 3, 3, 1)  # paper (3, 1, 3) over (H, D, W)
    assert torch.equal(state["stem.0.weight"][..., 0], src["model.model.conv_first.0.weight"][:, :, :, 0, :])
    assert torch.equal(state["head.weight"], src["model.model.conv_output.weight"][:, :, :, 0, :])
    assert torch.equal(
        state["encoder.2.3.body.3.weight"], src["model.model.encoder_convs.2.2.conv1.weight"].permute(0, 1, 2, 4, 3)
    )


@pytest.mark.parametrize("prefix", ["", "module.model.", "model."])
def test_bare_and_wrapped_state_dicts(prefix: str) -> None:
    state, report = map_paper_state_dict(paper_state("lachinov", prefix=prefix), "lachinov")
    assert len(state) == len(report.mapped) == 129


def test_channels_are_read_from_the_shapes() -> None:
    source = paper_state("fpn")
    source["model.resensnet.final1.0.weight"] = torch.randn(3, 16, 1, 1, 1)
    source["model.resensnet.final1.0.bias"] = torch.randn(3)
    first = "model.resensnet.conv1.0.convBlock.0.0.weight"
    source[first] = torch.randn(16, 2, 1, 3, 3)
    source["model.resensnet.conv1.0.downsample.0.weight"] = torch.randn(16, 2, 1, 1, 1)
    state, report = map_paper_state_dict(source, "fpn")
    assert (report.spec["in_channels"], report.spec["out_channels"]) == (2, 3)
    assert state["head.weight"].shape == (3, 16, 1, 1)


# --------------------------------------------------------------------------- errors


def test_missing_key_is_named() -> None:
    source = paper_state("fpn")
    del source["model.resensnet.up_concat2.conv.downsample.1.running_var"]
    with pytest.raises(CheckpointError, match=r"decoder\.2\.shortcut\.1\.running_var"):
        map_paper_state_dict(source, "fpn")


def test_extra_key_is_named() -> None:
    source = paper_state("lachinov")
    source["model.model.extra_layer.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"1 source keys not mapped \['extra_layer\.weight'\]"):
        map_paper_state_dict(source, "lachinov")


def test_wrong_shape_is_named() -> None:
    source = paper_state("lachinov")
    source["model.model.encoder_convs.1.0.conv1.weight"] = torch.zeros(16, 16, 1, 3, 5)
    with pytest.raises(CheckpointError, match=r"'encoder_convs\.1\.0\.conv1\.weight' has shape \(16, 16, 1, 3, 5\)"):
        map_paper_state_dict(source, "lachinov")


def test_wrong_model_is_a_clear_error() -> None:
    with pytest.raises(CheckpointError, match=r"kernel 8.*try --model resensnet"):
        map_paper_state_dict(paper_state("resensnet"), "fpn")
    with pytest.raises(CheckpointError, match=r"kernel 4.*try --model fpn"):
        map_paper_state_dict(paper_state("fpn"), "resensnet")
    with pytest.raises(CheckpointError, match=r"no 'conv1\.0\.convBlock\.0\.0\.weight'"):
        map_paper_state_dict(paper_state("lachinov"), "fpn")


def test_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "opt.pt"
    torch.save({"optimizer": {"lr": 0.1}, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match=r"opt\.pt: not a state dict"):
        read_paper_state_dict(path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt: unreadable"):
        read_paper_state_dict(tmp_path / "junk.pt")


class _Payload:
    """Pickles to a call that creates a file: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickled_code_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": paper_state("lachinov"), "hyper_parameters": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.ckpt: refused: it names \S+, and loading it could run code"):
        import_paper_weights(path, tmp_path / "out.ckpt", "lachinov")
    assert not marker.exists()
    assert not (tmp_path / "out.ckpt").exists()
    torch.load(path, weights_only=False)  # the payload is real: an unrestricted load runs it
    assert marker.exists()


# --------------------------------------------------------------------------- checkpoint


@pytest.mark.parametrize("model", MODELS)
def test_imported_checkpoint_rebuilds_with_exactly_those_tensors(tmp_path: Path, model: str) -> None:
    src = tmp_path / "paper.ckpt"
    write_paper_checkpoint(src, model)
    out = tmp_path / "enface.ckpt"
    report = import_paper_weights(src, out, model)
    expected, _ = map_paper_state_dict(read_paper_state_dict(src)[0], model)
    net, info = load_model(out)
    assert all(torch.equal(v, expected[k]) for k, v in net.state_dict().items())
    assert info["model"] == report.spec and info["task"] == "segment" and info["epoch"] == 41
    assert info["imported_from"]["unused_keys"] == report.unused
    torch.load(out, map_location="cpu", weights_only=True)  # plain data only
    with torch.no_grad():
        y = net(torch.randn(*INPUTS[model]))
    assert y.shape == (1, 1, *INPUTS[model][2:4]) and torch.isfinite(y).all()


def test_cli_reconstruction_checkpoint_serves_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "epoch=41-SSIM=0.8.ckpt"
    write_paper_checkpoint(src, "lachinov")
    out = tmp_path / "imported" / "lachinov-faf_inv.ckpt"
    rc = main(
        ["import-weights", str(src), str(out), "--model", "lachinov", "--task", "reconstruct", "--target", "faf_inv"]
    )
    assert rc == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("imported lachinov (1 in, 1 out, width 1): 129 tensors from") and str(out) in line
    assert "left out 39 tensors unused by the paper code" in line
    _, info = load_model(out)
    assert info["task"] == "reconstruct" and info["config"]["target"] == "faf_inv"
    assert RunSpec.init_label(checkpoint_info(read_checkpoint(out)), out) == "ssl-faf_inv"
    seg = create_model("lachinov", out_channels=2)
    report = transfer_weights(seg, out)
    assert report.skipped == ["head.weight", "head.bias"] and len(report.loaded) == 127


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.ckpt", "out.ckpt", "--model", "fpn"], "missing.ckpt: checkpoint not found"),
        (
            ["paper.ckpt", "out.ckpt", "--model", "fpn", "--task", "reconstruct", "--target", "ga"],
            "reconstruction target must be one of",
        ),
        (["paper.ckpt", "out.ckpt", "--model", "resensnet"], "try --model fpn"),
    ],
)
def test_cli_bad_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    write_paper_checkpoint(tmp_path / "paper.ckpt", "fpn")
    assert main(["import-weights", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.ckpt").exists()


# --------------------------------------------------------------------------- concatenation order


def test_fpn_decoder_puts_the_skip_first() -> None:
    """The paper code concatenates [skip, upsampled]: with the convs' weights on the last
    ``c_in`` input channels set to zero, the output depends on the skip only."""
    torch.manual_seed(0)
    stage = DecoderStage(c_in=2, c_skip=3, c_out=4, scale=(1, 2)).eval()
    with torch.no_grad():
        for conv in (stage.body[0], stage.shortcut[0]):
            conv.weight[:, 3:] = 0
        skip = torch.randn(1, 3, 4, 8)
        a = stage(torch.randn(1, 2, 4, 4), skip)
        b = stage(torch.randn(1, 2, 4, 4), skip)
        c = stage(torch.randn(1, 2, 4, 4), torch.randn(1, 3, 4, 8))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_lachinov_decoder_puts_the_skip_first() -> None:
    torch.manual_seed(0)
    level = DecoderLevel(channels=4, n_blocks=1).eval()
    with torch.no_grad():
        level.body[0].weight[:, 4:] = 0
        skip = torch.randn(1, 4, 2, 8, 3)
        a = level(torch.randn(1, 4, 2, 8, 3), skip)
        b = level(torch.randn(1, 4, 2, 8, 3), skip)
    assert torch.equal(a, b)
