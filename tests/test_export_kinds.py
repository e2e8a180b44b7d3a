"""A folder of mixed Spectralis exports, as a lab holds it: every file named for what it is.

The files are written the way the device writes them (:func:`formats_helpers.write_vol`,
:func:`formats_helpers.write_heyex_xml`): a volume scan, a line scan (one B-scan, no B-scan
distance), a peripapillary circle scan (one B-scan whose end point is the circle's centre), a
radial scan, an empty file, a volume cut short by an interrupted copy, one whose header counts
fewer B-scans than it holds, one with NaN samples, one whose B-scans all lie at one place.
"""

from __future__ import annotations

import datetime as dt
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enface.cli import main
from enface.data.prepare import PrepareOptions, prepare_dataset
from enface.data.preprocess import FlattenParams
from enface.errors import ScanKindError
from enface.io.heidelberg import read_heidelberg
from formats_helpers import layered_volume, write_heyex_xml, write_vol

SHAPE = (4, 24, 64)  # B-scans, A-scans, depth
OPTS = PrepareOptions(fmt="vol", flatten=FlattenParams(0.15, 0.08, 16), register_faf=False)


def _vol_args(n: int, ys: np.ndarray | None = None) -> dict:
    ys = np.linspace(1.2, 0.3, n) if ys is None else ys
    return dict(
        slo=np.full((48, 48), 90, np.uint8),
        starts_mm=np.stack([np.full(n, 0.2), ys], 1),
        ends_mm=np.stack([np.full(n, 1.0), ys], 1),
        scale_x=0.035,
        distance=0.3 if n > 1 else 0.0,
        scale_y=0.006,
        slo_scale=(0.03, 0.03),
    )


def _bscans(n: int, seed: int = 0) -> np.ndarray:
    vol, _, _ = layered_volume((n, SHAPE[1], SHAPE[2]), seed=seed, speckle=0.1)
    return vol.transpose(0, 2, 1)  # (n, depth, width) as stored


def write_mixed_folder(src: Path) -> dict[str, str]:
    """The mixed folder; returns ``{file name: kind}`` of the files that are not volume scans."""
    src.mkdir(parents=True, exist_ok=True)
    n = SHAPE[0]
    write_vol(src / "volume_a.vol", _bscans(n, 1), **_vol_args(n), patient_id="P1")
    write_vol(src / "volume_b.vol", _bscans(n, 2), **_vol_args(n), patient_id="P2")
    write_vol(src / "line.vol", _bscans(1, 3), **_vol_args(1), scan_pattern=1)
    circle = _vol_args(1)
    circle["ends_mm"] = np.array([[0.6, 0.7]])  # the circle's centre
    write_vol(src / "circle.vol", _bscans(1, 4), **circle, scan_pattern=2)
    write_vol(src / "star.vol", _bscans(6, 5), **_vol_args(6), scan_pattern=5)
    (src / "empty.vol").write_bytes(b"")
    data = write_vol(src / "cut.vol", _bscans(n, 6), **_vol_args(n)).read_bytes()
    (src / "cut.vol").write_bytes(data[: len(data) - 3000])
    write_vol(src / "undercounted.vol", _bscans(n, 7), **_vol_args(n), n_header=n - 1)
    nan = _bscans(n, 8)
    nan[1, 5, 5] = np.nan
    write_vol(src / "nan.vol", nan, **_vol_args(n))
    write_vol(src / "one_place.vol", _bscans(n, 9), **_vol_args(n, ys=np.full(n, 0.8)))
    return {
        "line.vol": "line scan",
        "circle.vol": "circle scan",
        "star.vol": "radial scan",
        "empty.vol": "empty file",
        "cut.vol": "truncated file",
        "undercounted.vol": "damaged file",
        "nan.vol": "damaged file",
        "one_place.vol": "repeated line scan",
    }


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    src = tmp_path_factory.mktemp("mixed") / "exports"
    return src, write_mixed_folder(src)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("line.vol", "line scan (1 B-scan): en-face maps need a volume (raster) scan"),
        ("circle.vol", "circle scan (1 circular B-scan around the optic disc)"),
        ("star.vol", "radial scan (6 B-scans through one centre)"),
        ("empty.vol", "empty file (0 bytes)"),
        ("cut.vol", "truncated at byte "),
        ("undercounted.vol", "the header counts 3 B-scans but the file holds 4"),
        ("nan.vol", "B-scan(s) hold NaN samples (first: B-scan 1)"),
        ("one_place.vol", "all 4 B-scans lie at the same place on the SLO"),
    ],
)
def test_each_file_is_named_for_its_kind(mixed: tuple[Path, dict[str, str]], name: str, expected: str) -> None:
    src, kinds = mixed
    with pytest.raises(ScanKindError) as info:
        read_heidelberg(src / name)
    assert expected in str(info.value) and str(src / name) in str(info.value)
    assert info.value.kind == kinds[name]
    again = pickle.loads(pickle.dumps(info.value))  # crosses worker processes with its kind
    assert again.kind == info.value.kind and str(again) == str(info.value)


def test_truncation_names_the_byte_and_the_size(mixed: tuple[Path, dict[str, str]]) -> None:
    src, _ = mixed
    size = (src / "cut.vol").stat().st_size
    with pytest.raises(ScanKindError, match=rf"truncated at byte {size} of {size + 3000} \(\d of 4 B-scans complete\)"):
        read_heidelberg(src / "cut.vol")


def test_valid_vol_reads_without_eyepy_chatter(mixed: tuple[Path, dict[str, str]], caplog) -> None:
    src, _ = mixed
    with caplog.at_level("WARNING"):
        scan = read_heidelberg(src / "volume_a.vol")
    assert scan.volume.shape == SHAPE
    assert not [r for r in caplog.records if r.name.startswith("eyepy")], caplog.text


def test_prepare_a_mixed_folder(mixed: tuple[Path, dict[str, str]], tmp_path: Path, capsys) -> None:
    """One message per file naming its kind, no traceback, exit status 1, the good scans prepared."""
    src, kinds = mixed
    out = tmp_path / "ds"
    rc = main(["prepare", str(src), str(out), "--format", "vol", "--depth", "16", "--no-progress", "--no-register-faf"])
    text = capsys.readouterr()
    printed = text.out + text.err
    assert rc == 1 and "Traceback" not in printed
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["volume_a", "volume_b"]
    for name in kinds:
        lines = [ln for ln in printed.splitlines() if name in ln]
        assert len(lines) == 1, (name, lines)
    assert (
        "8 failed (2 damaged files, 1 circle scan, 1 empty file, 1 line scan, 1 radial scan, "
        "1 repeated line scan, 1 truncated file)" in printed
    ), printed
    notvol, damaged = printed.index("not volume scans (not prepared):"), printed.index("damaged files:")
    assert notvol < printed.index("line.vol") < damaged < printed.index("empty.vol")


def test_heyex_xml_kinds(tmp_path: Path) -> None:
    slo = np.full((48, 48), 90, np.uint8)
    args = dict(scale_x=0.035, scale_y=0.006, slo_scale=(0.03, 0.03))
    n = SHAPE[0]
    ys = np.linspace(1.2, 0.3, n)
    starts, ends = np.stack([np.full(n, 0.2), ys], 1), np.stack([np.full(n, 1.0), ys], 1)
    vol = _bscans(n, 1)
    good = write_heyex_xml(tmp_path / "good", vol, slo, starts, ends, **args)
    assert read_heidelberg(good, "xml").volume.shape == SHAPE
    line = write_heyex_xml(tmp_path / "line", vol[:1], slo, starts[:1], ends[:1], **args)
    with pytest.raises(ScanKindError, match="single B-scan .a line or circle scan."):
        read_heidelberg(line, "xml")
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "good", cut)
    xml = (cut / "export.xml").read_text()
    (cut / "export.xml").write_text(xml[: len(xml) // 2])
    with pytest.raises(ScanKindError, match="truncated or damaged XML .* not well-formed at line 1"):
        read_heidelberg(cut / "export.xml", "xml")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tmp_path / "good", corrupt)
    (corrupt / "bscan_002.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(ScanKindError, match="bscan_002.png: unreadable B-scan image") as info:
        read_heidelberg(corrupt / "export.xml", "xml")
    assert "pip install" not in str(info.value)
    odd = tmp_path / "odd"
    shutil.copytree(tmp_path / "good", odd)
    Image.fromarray(np.zeros((SHAPE[2], SHAPE[1] + 3), np.uint8)).save(odd / "bscan_001.png")
    with pytest.raises(ScanKindError, match=f"bscan_001.png is not {SHAPE[1]} x {SHAPE[2]} like the other B-scans"):
        read_heidelberg(odd / "export.xml", "xml")
    empty = tmp_path / "empty.xml"
    empty.write_bytes(b"")
    with pytest.raises(ScanKindError, match="empty file .0 bytes."):
        read_heidelberg(empty, "xml")


def test_date_of_line_scans_is_no_matter(tmp_path: Path) -> None:
    """A line scan with a visit date still fails as a line scan (not on spacing, not on dates)."""
    write_vol(tmp_path / "l.vol", _bscans(1), **_vol_args(1), visit_date=dt.date(2001, 1, 1))
    with pytest.raises(ScanKindError, match="line scan"):
        read_heidelberg(tmp_path / "l.vol")


def test_prepare_summary_counts_kinds_in_the_library(mixed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    src, kinds = mixed
    report = prepare_dataset(src, tmp_path / "ds", OPTS, progress=False)
    assert sorted(report.written) == ["volume_a", "volume_b"]
    assert {Path(s).name: k for s, k in report.kinds.items()} == kinds
