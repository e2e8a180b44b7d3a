"""The registry of export formats (:mod:`enface.io.formats`): every registered format finds and
reads its scans; a format defined here is prepared, checked and predicted with no edit
elsewhere; an unregistered one is refused naming the registered formats."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

import enface.io.formats as formats
from enface.cli import main
from enface.data.check import check_dataset
from enface.data.folder import list_cases
from enface.data.options import FlattenParams, PrepareOptions
from enface.data.prepare import prepare_dataset
from enface.errors import DatasetError
from enface.io.base import Scan
from enface.io.formats import (
    ExportFormat,
    ReadOptions,
    ScanUnit,
    find_units,
    get_format,
    infer_format,
    list_formats,
    read_unit,
    register_format,
)
from enface.predict import predict
from formats_helpers import NO_SAMPLE, SAMPLE_SPACING, SAMPLES, layered_volume
from model_helpers import save_checkpoint

FLAT = FlattenParams(0.2, 0.1, 16)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the registry for one test: what it registers is gone afterwards."""
    monkeypatch.setattr(formats, "_REGISTRY", dict(formats._REGISTRY))


# --------------------------------------------------------------------------- every registered format


def test_every_registered_format_has_a_sample_or_a_reason() -> None:
    assert set(SAMPLES) | set(NO_SAMPLE) == set(list_formats())
    assert not set(SAMPLES) & set(NO_SAMPLE)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_format_finds_reads_and_prepares_its_sample(name: str, tmp_path: Path) -> None:
    fmt = get_format(name)
    shape = SAMPLES[name](tmp_path / "src")
    units = find_units(fmt, tmp_path / "src")
    assert len(units) == 1 and units[0].source.exists()
    if fmt.suffixes:
        assert infer_format(tmp_path / "src") == name
    scan = read_unit(fmt, units[0], ReadOptions(spacing=SAMPLE_SPACING))
    assert scan.volume.shape == shape
    assert all(s > 0 for s in scan.spacing)
    assert Path(scan.source).name == units[0].source.name
    report = prepare_dataset(
        tmp_path / "src", tmp_path / "out", PrepareOptions(fmt=name, flatten=FLAT, spacing=SAMPLE_SPACING), False
    )
    assert report.ok and len(report.written) == 1
    assert list_cases(tmp_path / "out")[0].oct_shape() == (*shape[:2], FLAT.depth)


@pytest.mark.parametrize("name", sorted(n for n in SAMPLES if get_format(n).suffixes))
def test_each_format_names_a_damaged_file(name: str, tmp_path: Path) -> None:
    fmt = get_format(name)
    bad = tmp_path / f"bad{fmt.suffixes[-1]}"
    bad.write_bytes(b"")
    [unit] = find_units(fmt, bad)
    with pytest.raises(DatasetError, match=str(bad)):
        read_unit(fmt, unit, ReadOptions(spacing=SAMPLE_SPACING))


# --------------------------------------------------------------------------- registering


def _no_reader(unit: ScanUnit, options: ReadOptions) -> Scan:
    raise AssertionError("not read")


def test_registering_refuses_a_taken_name_a_claimed_suffix_and_a_bad_name(registry: None) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_format(ExportFormat("vol", "again", _no_reader, (".vol2",)))
    with pytest.raises(ValueError, match="'.npy' already names format 'numpy'"):
        register_format(ExportFormat("npy2", "x", _no_reader, (".npy",)))
    with pytest.raises(ValueError, match="lowercase"):
        register_format(ExportFormat("Toy", "x", _no_reader, (".toy",)))
    with pytest.raises(ValueError, match="split_source"):
        register_format(ExportFormat("toy", "x", _no_reader, (".toy",), official_split=lambda p: "train"))
    assert "toy" not in list_formats()


def test_an_unregistered_format_or_suffix_is_refused_naming_the_registered_ones(tmp_path: Path) -> None:
    registered = ", ".join(list_formats())
    with pytest.raises(ValueError, match=f"unknown format 'abc' \\(registered: {registered}\\)"):
        PrepareOptions(fmt="abc")
    (tmp_path / "scan.abc").write_bytes(b"x")
    with pytest.raises(DatasetError) as err:
        infer_format(tmp_path / "scan.abc")
    assert "scan.abc" in str(err.value) and all(f"({n})" in str(err.value) for n in ("vol", "numpy", "nifti"))
    with pytest.raises(SystemExit):
        main(["prepare", str(tmp_path), str(tmp_path / "out"), "--format", "abc"])


# --------------------------------------------------------------------------- a format defined here


def _write_toy(path: Path, seed: int, patient: str) -> None:
    """A ``.toy`` file: an ``.npz`` archive of ``volume`` (H, W, D), ``spacing`` and ``patient``."""
    vol, _, _ = layered_volume((8, 32, 96), seed=seed, ga=True)
    buf = io.BytesIO()
    np.savez(buf, volume=vol, spacing=np.array([0.2, 0.05, 0.01]), patient=np.array(patient))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def _read_toy(unit: ScanUnit, options: ReadOptions) -> Scan:
    try:
        with np.load(unit.source) as z:
            vol, spacing, patient = z["volume"], z["spacing"], str(z["patient"])
    except (OSError, ValueError, KeyError) as e:
        raise DatasetError(f"{unit.source}: not a toy scan ({type(e).__name__}: {e})") from None
    sp = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    return Scan(volume=vol, spacing=sp, source=str(unit.source), meta={"patient_id": patient, "eye": "OS"})


TOY = ExportFormat("toy", "a test's own format: one .npz archive per scan", _read_toy, (".toy",))


def test_a_format_registered_here_is_prepared_checked_and_predicted(
    registry: None, phantom_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    register_format(TOY)
    src = tmp_path / "exports"
    _write_toy(src / "visit1" / "eye.toy", seed=0, patient="P7")
    _write_toy(src / "visit2" / "eye.toy", seed=1, patient="P7")
    (src / "notes.txt").write_text("not a scan")
    # check: a folder of toy exports is no dataset
    report = check_dataset(src)
    assert not report.ok and "a folder of toy exports" in report.format() and "--format toy" in report.format()
    # prepare: found by suffix, read by the format's reader, ids from the folders
    out = tmp_path / "ds"
    assert main(["prepare", str(src), str(out), "--format", "toy", "--depth", "16", "--no-progress"]) == 0
    cases = list_cases(out)
    assert [c.case_id for c in cases] == ["visit1_eye", "visit2_eye"]
    assert {c.patient_id for c in cases} == {"P7"} and {c.meta.eye for c in cases} == {"OS"}
    assert json.loads((out / "dataset.json").read_text())["source"]["format"] == "toy"
    # predict: the format inferred from the suffix, prepared as the model's data were
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "epoch=1-val_dice=0.50.ckpt", phantom_dataset, seed=1)
    result = predict(run, [src / "visit1" / "eye.toy"], tmp_path / "pred", progress=False)
    assert result.ok and [r.scan_id for r in result.results] == ["eye"]
    assert (tmp_path / "pred" / "eye" / "mask.png").is_file()
    info = json.loads((tmp_path / "pred" / "eye" / "prediction.json").read_text())
    assert info["patient_id"] == "P7" and info["shape"][:2] == [8, 32]


# --------------------------------------------------------------------------- several scans in one folder


def _write_slice(path: Path, series: str, index: int, bscan: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"series": series, "index": index, "bscan": bscan.round(4).tolist()}))


def _find_series(root: Path) -> list[ScanUnit]:
    """One unit per series of ``.tsl`` slices in a folder; an unreadable slice is a unit of its own
    that fails naming the file."""
    files = sorted(root.rglob("*.tsl")) if root.is_dir() else [root]
    base = root if root.is_dir() else root.parent
    groups: dict[tuple[Path, str], list[Path]] = {}
    units = []
    for f in files:
        try:
            series = str(json.loads(f.read_text())["series"])
        except (OSError, ValueError, KeyError) as e:
            key = f.relative_to(base).as_posix()
            units.append(ScanUnit(key, f.stem, f, (f,), problem=f"unreadable slice ({type(e).__name__})"))
            continue
        groups.setdefault((f.parent, series), []).append(f)
    for (folder, series), members in sorted(groups.items()):
        key = f"{folder.relative_to(base).as_posix()}#{series}"
        units.append(ScanUnit(key, series, folder, tuple(members), detail=series))
    return units


def _read_series(unit: ScanUnit, options: ReadOptions) -> Scan:
    slices = sorted((json.loads(f.read_text()) for f in unit.files), key=lambda s: s["index"])
    indices = [s["index"] for s in slices]
    if indices != list(range(len(slices))):
        raise DatasetError(f"{unit.source}: series {unit.detail}: slices {indices}, not 0 .. {len(slices) - 1}")
    vol = np.stack([np.asarray(s["bscan"], np.float32) for s in slices])
    return Scan(volume=vol, spacing=options.spacing or (0.2, 0.05, 0.01), source=f"{unit.source}#{unit.detail}")


SERIES = ExportFormat("toyseries", "slices of several series in one folder", _read_series, find=_find_series)


def test_a_format_may_find_several_scans_in_one_folder_and_fail_one_naming_its_file(
    registry: None, tmp_path: Path
) -> None:
    register_format(SERIES)
    src = tmp_path / "slices"
    for series, seed in (("A", 0), ("B", 1)):
        vol, _, _ = layered_volume((4, 16, 48), seed=seed)
        for i in range(4):
            _write_slice(src / "exam" / f"{series}{i}.tsl", series, i, vol[i])
    vol, _, _ = layered_volume((3, 16, 48), seed=2)
    for i in (0, 2):  # a slice is missing
        _write_slice(src / "exam" / f"C{i}.tsl", "C", i, vol[i])
    (src / "exam" / "broken.tsl").write_text("{")
    opts = PrepareOptions(fmt="toyseries", flatten=FLAT)
    report = prepare_dataset(src, tmp_path / "ds", opts, progress=False)
    assert report.written == ["A", "B"]
    failed = dict(report.failed)
    assert set(failed) == {str(src / "exam" / "broken.tsl"), str(src / "exam")}
    assert failed[str(src / "exam" / "broken.tsl")] == "unreadable slice (JSONDecodeError)"
    assert "series C: slices [0, 2]" in failed[str(src / "exam")]
    assert [c.meta.extra["source_key"] for c in list_cases(tmp_path / "ds")] == ["exam#A", "exam#B"]
    again = prepare_dataset(src, tmp_path / "ds", opts, progress=False)
    assert again.skipped == ["A", "B"] and again.written == []
