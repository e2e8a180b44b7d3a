"""``enface show``: the Fig.-1-like figure of one case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enface.cli import main
from enface.data.folder import list_cases
from enface.viz import case_figure, default_bscan, show_case
from tiny_data import disc_dataset


def _pick(root: Path, labeled: bool, faf: bool):
    for case in list_cases(root):
        if bool(case.tasks()) == labeled and case.has_image("faf") == faf:
            return case
    pytest.fail(f"the phantom fixture has no case with labeled={labeled}, faf={faf}")


def test_show_case_writes_png(phantom_dataset: Path, tmp_path: Path) -> None:
    case = _pick(phantom_dataset, labeled=True, faf=True)
    out = show_case(case.path, tmp_path / "fig.png")
    assert out == tmp_path / "fig.png"
    with Image.open(out) as im:
        assert im.format == "PNG"
        w, h = im.size
    assert w > 2 * h > 200
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"], "no temporary files left"


def test_show_unlabeled_case_without_faf(phantom_dataset: Path, tmp_path: Path) -> None:
    case = _pick(phantom_dataset, labeled=False, faf=False)
    out = show_case(case.path, tmp_path / "fig.svg", bscan=0)
    assert out.read_text().lstrip().startswith("<?xml")


def test_cli_show(phantom_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = _pick(phantom_dataset, labeled=True, faf=True)
    out = tmp_path / "show.png"
    assert main(["show", str(case.path), "--out", str(out), "--bscan", "3", "--task", "rpd"]) == 0
    assert out.is_file() and out.stat().st_size > 1000
    assert main(["show", str(case.path), "--out", str(tmp_path / "x.png"), "--bscan", "99"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["show", str(case.path), "--out", str(tmp_path / "x.png"), "--task", "drusen"]) == 2
    assert main(["show", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()


def test_default_bscan_and_overlay_column() -> None:
    mask = np.zeros((6, 10), dtype=np.uint8)
    mask[4, 2:7] = 1
    mask[1, 0] = 1
    assert default_bscan(mask, 6) == 4
    assert default_bscan(None, 6) == 3
    vol = np.random.default_rng(0).random((6, 10, 16)).astype(np.float32)
    fig = case_figure(vol, (0.5, 0.1, 0.01), 4, mask=mask, slo=vol[..., 0], faf=None)
    ax = fig.axes[0]
    overlay = ax.get_images()[1].get_array()
    assert np.array_equal(overlay[0, :, 3] > 0, mask[4] > 0), "green overlay marks the labeled A-scans"
    with pytest.raises(ValueError, match="out of range"):
        case_figure(vol, (0.5, 0.1, 0.01), 6)
    with pytest.raises(ValueError, match="en-face grid"):
        case_figure(vol, (0.5, 0.1, 0.01), 0, mask=mask[:, :5])


def test_show_out_an_existing_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ds = disc_dataset(tmp_path / "ds")
    assert main(["show", str(ds / "cases" / "P1_OD_V1"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path}: is a folder; give the image file to write" in err
