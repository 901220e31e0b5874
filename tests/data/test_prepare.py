"""`proda data prepare`: trainId caches read back identical to the originals, statistics, resume, bad files."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fixtures import truncate, write_cityscapes, write_gta5, write_gta5_label, write_synthia
from proda.cli import main
from proda.config import load_config
from proda.data import labels as L
from proda.data import prepare as P
from proda.data.datasets import SegmentationDataset
from proda.data.registry import build_dataset
from proda.errors import DataError

CONFIGS = Path(__file__).parents[2] / "proda" / "configs" / "synthetic"


def _write(kind: str, root: Path) -> None:
    if kind == "gta5":
        write_gta5(root, n=4)
    elif kind == "synthia":
        write_synthia(root, n=4)
    else:
        write_cityscapes(root)


def _originals_only(monkeypatch) -> None:
    """Make any read of an original label fail: what is read afterwards comes from the cache."""
    def fail(self, path):
        raise AssertionError(f"original label read: {path}")
    monkeypatch.setattr(SegmentationDataset, "_read_raw_label", fail)


CASES = [("gta5", None, 19), ("gta5", None, 13), ("synthia", None, 16), ("synthia", None, 19),
         ("cityscapes", "train", 19), ("cityscapes", "val", 16)]


@pytest.mark.parametrize("kind,split,num_classes", CASES)
def test_cached_labels_equal_decoded_originals(tmp_path, monkeypatch, kind, split, num_classes):
    root = tmp_path / kind
    _write(kind, root)
    report = P.prepare_dataset(kind, root, split=split, progress=False, workers=2)
    assert report.ok and report.written == report.num_samples > 0 and report.skipped == 0
    original = build_dataset(kind, root, split=split, num_classes=num_classes, label_cache=None)
    expected = [original.read_label(i) for i in range(len(original))]
    images = [original[i]["image"] for i in range(len(original))]

    _originals_only(monkeypatch)
    cached = build_dataset(kind, root, split=split, num_classes=num_classes)  # "auto": ROOT/proda_cache
    assert cached.label_cache is not None and len(cached) == len(original)
    for i in range(len(cached)):
        label = cached.read_label(i)
        assert label.dtype == np.uint8
        np.testing.assert_array_equal(label, expected[i])
        item = cached[i]
        np.testing.assert_array_equal(item["label"], expected[i])
        np.testing.assert_array_equal(item["image"], images[i])
    # the cache files mirror the label paths and hold the 19 trainIds
    rel = original.label_path(0).relative_to(root)
    on_disk = P.read_cached_label(root / P.CACHE_DIRNAME / rel)
    np.testing.assert_array_equal(L.compact_to_train_id(num_classes)[expected[0]],
                                  np.where(np.isin(on_disk, L.TO19[num_classes]), on_disk, 255))


@pytest.mark.parametrize("kind,split", [("gta5", None), ("synthia", None), ("cityscapes", "train")])
def test_statistics_equal_counts_of_the_labels(tmp_path, kind, split):
    root = tmp_path / kind
    _write(kind, root)
    P.prepare_dataset(kind, root, split=split, progress=False)
    stats = P.load_class_stats(kind, root, split)
    for n in (19, 16, 13):
        reader = build_dataset(kind, root, split=split, num_classes=n, label_cache=None)
        assert stats.names == [s.name for s in reader.samples]
        direct = np.stack([np.bincount(reader.read_label(i).ravel(), minlength=256) for i in range(len(reader))])
        np.testing.assert_array_equal(stats.counts_for(n), direct[:, :n])
        np.testing.assert_array_equal(stats.ignore_for(n), direct[:, 255])
        np.testing.assert_array_equal(P.class_presence(stats, n), direct[:, :n] > 0)
    # a subset in another order (a GTA5 list file, a sampler's own order)
    sub = stats.select(stats.names[::-2])
    np.testing.assert_array_equal(sub.counts, stats.counts[::-2])
    with pytest.raises(DataError, match="no class statistics"):
        stats.select(["nope"])


def _stats(rows: list[list[int]]) -> P.ClassStats:
    counts = np.zeros((len(rows), 19), dtype=np.int64)
    for i, row in enumerate(rows):
        counts[i, : len(row)] = row
    return P.ClassStats("gta5", "all", [str(i) for i in range(len(rows))], counts, np.zeros(len(rows), np.int64))


def test_class_aware_weights():
    # image 0: class 0 only; image 1: classes 0 and 1; image 2: class 1 (few pixels); image 3: nothing
    stats = _stats([[100], [50, 50], [0, 2], [0]])
    w = P.class_aware_weights(stats)
    # draw class 0 or 1 with 1/2 each, then an image among the 2 holding it
    np.testing.assert_allclose(w, [0.25, 0.5, 0.25, 0.0])
    # with min_pixels=5, class 1 is only present in image 1
    np.testing.assert_allclose(P.class_aware_weights(stats, min_pixels=5), [0.25, 0.75, 0, 0])
    rare = P.class_aware_weights(stats, temperature=0.01)  # class 1 is rarer: image 2 gains, image 0 loses
    assert rare.sum() == pytest.approx(1.0) and rare[2] > w[2] and rare[0] < w[0]
    np.testing.assert_allclose(P.class_aware_weights(_stats([[0], [0]])), [0.5, 0.5])


def test_resume_after_interruption_and_stats_rebuilt(tmp_path, monkeypatch):
    root = tmp_path / "gta5"
    write_gta5(root, n=6)
    real_write, calls = P.write_bytes, []

    def dying_write(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(P, "write_bytes", dying_write)
    with pytest.raises(KeyboardInterrupt):
        P.prepare_dataset("gta5", root, progress=False, workers=1)
    cache = root / P.CACHE_DIRNAME
    assert not (cache / "class_stats_all.npz").exists()  # written last
    assert not [p for p in cache.rglob("*") if p.name.startswith(".")]  # no torn temporary files
    done = len(list((cache / "labels").glob("*.png")))
    assert 2 <= done <= 3  # stopped within the look-ahead of one worker

    monkeypatch.setattr(P, "write_bytes", real_write)
    report = P.prepare_dataset("gta5", root, progress=False)
    assert (report.written, report.skipped) == (6 - done, done)
    stats_file = cache / "class_stats_all.npz"
    first = P.ClassStats.load(stats_file)

    stats_file.unlink()  # lost: rebuilt from the records in the cached PNGs, nothing decoded again
    monkeypatch.setattr(SegmentationDataset, "read_label", lambda self, i: pytest.fail("decoded again"))
    report = P.prepare_dataset("gta5", root, progress=False)
    assert (report.written, report.skipped) == (0, 6)
    again = P.ClassStats.load(stats_file)
    assert again.names == first.names
    np.testing.assert_array_equal(again.counts, first.counts)
    np.testing.assert_array_equal(again.ignore, first.ignore)


def test_verify_rewrites_a_cached_file_that_disagrees_with_its_record(tmp_path):
    root = tmp_path / "gta5"
    write_gta5(root, n=2)
    P.prepare_dataset("gta5", root, progress=False)
    cached = root / P.CACHE_DIRNAME / "labels" / "00001.png"
    good = P.read_cached_label(cached)
    record = P._read_record(cached, 19)
    bad = np.zeros_like(good)  # all road, but still carrying the record of the true label
    cached.write_bytes(P._encode_cached(bad, record))
    assert P.prepare_dataset("gta5", root, progress=False).skipped == 2  # the record alone looks fine
    report = P.prepare_dataset("gta5", root, progress=False, verify=True)
    assert (report.written, report.skipped) == (1, 1)
    np.testing.assert_array_equal(P.read_cached_label(cached), good)
    cached.write_bytes(b"garbage")  # an unreadable record: redone even without --verify
    assert P.prepare_dataset("gta5", root, progress=False).written == 1


def test_an_edited_original_is_read_again_not_shadowed_by_the_cache(tmp_path):
    root = tmp_path / "gta5"
    raws = write_gta5(root, n=2)
    P.prepare_dataset("gta5", root, progress=False)
    label = root / "labels" / "00002.png"
    new_raw = np.full_like(raws["00002"], 26)  # all car
    write_gta5_label(label, new_raw)
    cached = root / P.CACHE_DIRNAME / "labels" / "00002.png"
    future = os.stat(cached).st_mtime_ns + 10**9
    os.utime(label, ns=(future, future))  # newer than its cached copy
    reader = build_dataset("gta5", root)
    np.testing.assert_array_equal(reader.read_label(1), np.full_like(new_raw, 13))
    report = P.prepare_dataset("gta5", root, progress=False)
    assert (report.written, report.skipped) == (1, 1)
    np.testing.assert_array_equal(P.read_cached_label(cached), np.full_like(new_raw, 13))
    # a missing cached file falls back to the original as well
    cached.unlink()
    np.testing.assert_array_equal(build_dataset("gta5", root).read_label(1), np.full_like(new_raw, 13))


def test_bad_files_are_reported_by_name_and_left_out(tmp_path, capsys):
    root = tmp_path / "gta5"
    write_gta5(root, n=4)
    truncate(root / "labels" / "00002.png")
    write_gta5_label(root / "labels" / "00003.png", np.full((16, 32), 40, np.uint8))  # not a label id
    (root / "images" / "00005.png").write_bytes((root / "images" / "00001.png").read_bytes())  # no label
    assert main(["data", "prepare", "--dataset", "gta5", str(root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "3 problem(s)" in out
    for name in ("labels/00002.png", "labels/00003.png", "images/00005.png"):
        assert name in out
    stats = P.load_class_stats("gta5", root)
    assert stats.names == ["00001", "00004"]
    assert not (root / P.CACHE_DIRNAME / "labels" / "00002.png").exists()


def test_cli_out_folder_and_config_keys(tmp_path, capsys):
    data = tmp_path / "data"
    write_gta5(data / "gta5", n=2)
    write_cityscapes(data / "cityscapes")
    out = tmp_path / "caches" / "gta5"
    assert main(["data", "prepare", "--dataset", "gta5", str(data / "gta5"), "--out", str(out), "--no-progress"]) == 0
    assert main(["data", "prepare", "--dataset", "cityscapes", str(data / "cityscapes"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "2 label(s) written" in printed and "4 label(s) written" in printed
    assert (out / "class_stats_all.npz").is_file() and (out / "labels" / "00001.png").is_file()
    assert not (data / "gta5" / P.CACHE_DIRNAME).exists()

    from proda.data.readers import source_reader, target_reader

    def cfg(*extra):
        return load_config(CONFIGS / "source_only.yaml", [f"data.source_root={data / 'gta5'}",
                                                          f"data.target_root={data / 'cityscapes'}", *extra])

    assert source_reader(cfg()).label_cache is None  # not in ROOT/proda_cache: auto finds nothing
    assert source_reader(cfg(f"data.source_label_cache={out}")).label_cache.folder == out
    assert target_reader(cfg()).label_cache is not None
    assert target_reader(cfg("data.target_label_cache=null")).label_cache is None
    with pytest.raises(DataError, match="no label cache"):
        source_reader(cfg(f"data.source_label_cache={tmp_path}"))
    with pytest.raises(DataError, match="a label cache of 'gta5', not 'synthia'"):
        write_synthia(data / "synthia", n=1)
        build_dataset("synthia", data / "synthia", label_cache=out)
    # `proda data check` reads the originals, never the cache
    from proda.data.check import check_dataset

    label = data / "cityscapes" / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
    truncate(label)
    os.utime(label, ns=(0, 0))  # older than its cached copy, which readers would use
    assert target_reader(cfg()).read_label(0) is not None
    assert not check_dataset("cityscapes", data / "cityscapes", progress=False).ok


def test_a_folder_dataset_caches_its_own_classes(tmp_path):
    """A folder dataset's cache holds its descriptor's class ids (not Cityscapes trainIds) and its statistics
    count those classes."""
    from fixtures import FOLDER_CLASSES, write_folder

    write_folder(tmp_path, n=3)
    report = P.prepare_dataset("folder", tmp_path, split="val", progress=False)
    assert report.ok and report.written == 3 and report.split == "val"
    original = build_dataset("folder", tmp_path, split="val", label_cache=None)
    cached = build_dataset("folder", tmp_path, split="val")
    assert cached.label_cache is not None
    for i in range(len(original)):
        np.testing.assert_array_equal(cached.read_label(i), original.read_label(i))
    stats = P.load_class_stats("folder", tmp_path, "val")
    assert stats.classes == tuple(FOLDER_CLASSES)
    direct = sum(np.bincount(original.read_label(i).ravel(), minlength=256)[:6] for i in range(len(original)))
    np.testing.assert_array_equal(stats.counts_for(original.classes).sum(0), direct)
