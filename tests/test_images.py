"""Masks and images are read by what they show (palette, alpha, colour), with clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enface.errors import DatasetError
from enface.io.images import read_image, read_mask


def _lesion() -> np.ndarray:
    m = np.zeros((12, 16), dtype=bool)
    m[3:7, 4:11] = True
    return m


def test_palette_mask_with_white_index_zero_is_read_by_colour(tmp_path: Path) -> None:
    """Regression (issue 10, finding 2): index 0 = white used to be read as lesion everywhere."""
    lesion = _lesion()
    im = Image.fromarray(np.where(lesion, 1, 0).astype(np.uint8), mode="P")
    im.putpalette([255, 255, 255, 0, 0, 0] + [0, 0, 0] * 254)  # index 0 white, index 1 black
    im.save(tmp_path / "m.png")
    # the image shows a black lesion on white: white is the non-zero value, i.e. the background
    got = read_mask(tmp_path / "m.png")
    np.testing.assert_array_equal(got, ~lesion)
    im.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)  # index 0 black, index 1 white
    im.save(tmp_path / "m2.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m2.png"), lesion)


def test_rgba_mask_with_lesion_in_alpha(tmp_path: Path) -> None:
    """Regression (issue 10, finding 2): a lesion painted on a transparent layer used to read as empty."""
    lesion = _lesion()
    rgba = np.zeros((*lesion.shape, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red paint everywhere, visible only where opaque
    rgba[..., 3] = np.where(lesion, 255, 0)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), lesion)


def test_opaque_rgba_grey_mask_reads_its_grey_values(tmp_path: Path) -> None:
    lesion = _lesion()
    rgba = np.full((*lesion.shape, 4), 255, dtype=np.uint8)
    rgba[..., :3] = np.where(lesion, 255, 0)[..., None]
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), lesion)


def test_colour_mask_error_names_file_and_its_colours(tmp_path: Path) -> None:
    lesion = _lesion()
    rgb = np.zeros((*lesion.shape, 3), dtype=np.uint8)
    rgb[lesion] = (255, 0, 0)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "red.png")
    with pytest.raises(DatasetError) as e:
        read_mask(tmp_path / "red.png")
    msg = str(e.value)
    assert "red.png" in msg and "colour mask" in msg
    assert "(255, 0, 0)" in msg and "(0, 0, 0)" in msg
    assert "76" not in msg  # the luminance of red, a value that is not in the file


@pytest.mark.parametrize("values, ok", [((0, 1), True), ((0, 255), True), ((0, 128), False), ((0, 1, 255), False)])
def test_grey_mask_values(tmp_path: Path, values: tuple[int, ...], ok: bool) -> None:
    arr = np.resize(np.array(values, dtype=np.uint8), (6, 7))
    Image.fromarray(arr, mode="L").save(tmp_path / "g.png")
    if ok:
        np.testing.assert_array_equal(read_mask(tmp_path / "g.png"), (arr > 0).astype(np.uint8))
    else:
        with pytest.raises(DatasetError, match="g.png: mask is not binary"):
            read_mask(tmp_path / "g.png")


def test_dataset_folder_reads_masks_with_the_same_reader(phantom_dataset: Path, tmp_path: Path) -> None:
    """One mask reader: a case's palette mask is read by colour too."""
    import shutil

    from enface.data.folder import list_cases, load_case

    src = next(c for c in list_cases(phantom_dataset) if c.tasks())
    dst = tmp_path / src.case_id
    shutil.copytree(src.path, dst)
    task = src.tasks()[0]
    truth = src.load_mask(task)
    im = Image.fromarray((1 - truth).astype(np.uint8), mode="P")
    im.putpalette([255, 255, 255, 0, 0, 0] + [0, 0, 0] * 254)  # 0 -> white (lesion), 1 -> black
    im.save(dst / f"mask_{task}.png")
    np.testing.assert_array_equal(load_case(dst).load_mask(task), truth)


def test_sixteen_bit_image_scaling(tmp_path: Path) -> None:
    arr = np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000
    Image.fromarray(arr).save(tmp_path / "i16.png")
    np.testing.assert_allclose(read_image(tmp_path / "i16.png"), arr / 65535.0, atol=1e-6)


def test_image_and_mask_readers_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing.png: image file not found"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "t.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(DatasetError, match="t.png: unreadable or truncated"):
        read_image(tmp_path / "t.png")
    Image.fromarray(np.array([[0, 3], [3, 0]], np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(DatasetError, match="m.png: mask is not binary"):
        read_mask(tmp_path / "m.png")
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    with pytest.raises(DatasetError, match="c.png: colour mask"):
        read_mask(tmp_path / "c.png")
