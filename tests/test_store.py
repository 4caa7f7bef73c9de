"""The checksummed store under both caches: one set of rules, and the on-disk format it always had.

``tests/fixtures/store_v2`` holds a feature cache and a mask cache written by the code before the
shared store (see ``tests/fixtures/make_store_fixtures.py``): the store reads, verifies and
damage-checks them, and writes the same files again.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2_encoder import SAM2ImageEncoder
from sam2_encoder.diffusion_policy.feature_cache import FEATURES, CacheError, FeatureCache, FeatureWriter, verify_cache
from sam2_encoder.diffusion_policy.mask_cache import (
    MASKS,
    MaskCache,
    MaskCacheError,
    build_mask_cache,
    verify_mask_cache,
)
from sam2_encoder.diffusion_policy.store import (
    NO_CHECKSUM,
    ChecksummedArray,
    Progress,
    Store,
    StoreError,
    create_store,
    read_back,
)
from sam2_encoder.diffusion_policy.zarr_io import chunk_path, create_array, open_group

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "store_v2"


def _copy(path: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(path, tmp_path / path.name))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _damage(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


def test_caches_written_before_the_store_are_read_verified_and_checked(tmp_path: Path) -> None:
    """Format-2 caches of the earlier code open, verify whole, serve their values and name damage."""
    features = FeatureCache(FIXTURES / "features.zarr")
    assert verify_cache(FIXTURES / "features.zarr") == [] and verify_mask_cache(FIXTURES / "masks.zarr") == []
    raw = np.asarray(open_group(FIXTURES / "features.zarr")["features/img/s16"][...]).astype(np.float32)
    torch.testing.assert_close(features.fused("img", [7, 0], ["s16"]), torch.from_numpy(raw[[7, 0]]), rtol=0, atol=0)
    masks = MaskCache(FIXTURES / "masks.zarr")
    stored = np.asarray(open_group(FIXTURES / "masks.zarr")["masks"][...])
    assert stored.any() and np.array_equal(masks.masks(range(8)), stored)

    damaged = _copy(FIXTURES / "masks.zarr", tmp_path)
    chunk_path(damaged, "masks", (5, 0, 0, 0)).write_bytes(chunk_path(damaged, "masks", (6, 0, 0, 0)).read_bytes())
    with pytest.raises(MaskCacheError, match=r"masks chunk 5 \(frame 5, episode 1\): damaged, CRC-32"):
        MaskCache(damaged).masks([4, 5])
    assert len(verify_mask_cache(damaged)) == 1


def _layout(root: Path) -> dict[str, object]:
    """Every file's name; per array its metadata but the codec (which a newer zarr may change) and values."""
    out: dict[str, object] = {"files": sorted(_files(root))}
    for meta in sorted(root.rglob(".zarray")):
        name = str(meta.parent.relative_to(root))
        spec = json.loads(meta.read_text())
        out[name] = ({k: v for k, v in spec.items() if k not in ("compressor", "filters")}, open_group(root)[name][...])
    return out


def _same_layout(before: Path, now: Path) -> None:
    old, new = _layout(before), _layout(now)
    assert old.keys() == new.keys() and old["files"] == new["files"]
    for name in old.keys() - {"files"}:
        assert old[name][0] == new[name][0] and np.array_equal(old[name][1], new[name][1]), name
    same_codecs = all(
        json.loads(m.read_text()).get("compressor")
        == json.loads((now / m.relative_to(before)).read_text()).get("compressor")
        for m in before.rglob(".zarray")
    )
    if same_codecs:  # the zarr that wrote the fixture: the very same bytes
        files = _files(before)
        assert [f for f, data in _files(now).items() if f != ".zattrs" and data != files[f]] == []


def test_the_store_writes_the_files_it_wrote_before(tmp_path: Path) -> None:
    """The same values through today's writer give the same files: names, array metadata, values,
    checksums and flags (byte for byte under the same zarr); the attributes have the same fields and
    values but for where and by which version the cache was built."""
    old = FIXTURES / "features.zarr"
    encoder = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=32)
    writer = FeatureWriter(
        FIXTURES / "replay.zarr", ["img"], encoder, tmp_path / "f.zarr", levels=["s8", "s16"], chunk_frames=3
    )
    values = {lv: np.asarray(open_group(old)[f"features/img/{lv}"][...]) for lv in ("s8", "s16")}
    for frame in range(8):
        writer.put("img", frame, {lv: torch.from_numpy(v[frame : frame + 1]) for lv, v in values.items()})
    assert writer.finish()
    _same_layout(old, tmp_path / "f.zarr")
    attrs = [json.loads((root / ".zattrs").read_text())["sam2_encoder"] for root in (old, tmp_path / "f.zarr")]
    for spec in attrs:
        del spec["source"], spec["version"]
    assert attrs[0] == attrs[1]


def test_a_mask_cache_has_the_layout_it_had_before(tmp_path: Path) -> None:
    """Today's mask cache declares the same arrays (shapes, chunks, dtypes) and attribute fields, and
    records the same episode ends and flags (the masks are the tracker's: numerics, not layout)."""
    from sam2_encoder.streaming import StreamingPredictor

    predictor = StreamingPredictor("sam2.1_hiera_tiny", image_size=64)
    prompts = FIXTURES / "prompts.json"
    new = build_mask_cache(FIXTURES / "replay.zarr", "img", prompts, tmp_path / "m.zarr", predictor, "random:seed=0")
    old, now = _layout(FIXTURES / "masks.zarr"), _layout(new)
    assert old.keys() == now.keys() == {"files", "masks", "checksums", "episode_ends", "episode_done"}
    assert all(old[name][0] == now[name][0] for name in old.keys() - {"files"})
    assert all(np.array_equal(old[name][1], now[name][1]) for name in ("episode_ends", "episode_done"))
    attrs = [
        json.loads((root / ".zattrs").read_text())["sam2_encoder_masks"] for root in (FIXTURES / "masks.zarr", new)
    ]
    assert sorted(attrs[0]) == sorted(attrs[1]) and attrs[0]["format"] == attrs[1]["format"] == 2


@pytest.mark.parametrize("kind", [FEATURES, MASKS], ids=["features", "masks"])
def test_every_refusal_to_open_is_the_kinds_error_with_one_message(kind, tmp_path: Path) -> None:
    """Missing folder, a file, a zarr group of no cache, the other cache, format 1: the kind's error
    (a ``StoreError``; also ``FileNotFoundError`` / ``ValueError`` where that is the cause)."""
    assert issubclass(kind.error, StoreError) and {CacheError, MaskCacheError} >= {kind.error}
    other = MASKS if kind is FEATURES else FEATURES
    plain = tmp_path / "plain.zarr"
    open_group(plain, mode="w")
    (tmp_path / "file").write_bytes(b"")
    old = _copy(FIXTURES / ("features.zarr" if kind is FEATURES else "masks.zarr"), tmp_path)
    attrs = json.loads((old / ".zattrs").read_text())
    attrs[kind.attr]["format"] = 1
    (old / ".zattrs").write_text(json.dumps(attrs))
    cases = [
        (tmp_path / "none.zarr", FileNotFoundError, f"{kind.noun} not found: "),
        (tmp_path / "file", ValueError, f"file is not a {kind.title}: it is not a zarr group (a file)"),
        (plain, kind.error, f"is not a {kind.title} (no {kind.attr!r} attributes)"),
        (FIXTURES / ("masks.zarr" if kind is FEATURES else "features.zarr"), kind.error, f"(it is a {other.noun}: "),
        (old, kind.error, "has format 1 (no checksums); this version reads format 2 (a CRC-32 per "),
    ]
    for path, also, fragment in cases:
        with pytest.raises(kind.error) as info:
            Store(path, kind)
        assert isinstance(info.value, also) and fragment in str(info.value), str(info.value)
        again = pickle.loads(pickle.dumps(info.value))  # as from a DataLoader worker
        assert type(again) is type(info.value) and str(again) == str(info.value)


def _vectors(tmp_path: Path, fail: bool = False) -> Store:
    """A store of 10 rows of 4 int32 values in chunks of 3 rows, with checksums and 2 progress flags."""

    def declare(group) -> None:
        create_array(group, "data", (10, 4), (3, 4), "int32", 0)
        create_array(group, "sums", (4,), (1,), "int64", NO_CHECKSUM)
        create_array(group, "done", (2,), (2,), "bool", False)
        if fail:
            raise KeyboardInterrupt  # killed while creating it

    return create_store(tmp_path / "s.zarr", FEATURES, {"what": "rows"}, declare)


def test_a_new_store_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    """A store is built under a temporary name and renamed: a failure leaves no folder behind."""
    with pytest.raises(KeyboardInterrupt):
        _vectors(tmp_path, fail=True)
    assert list(tmp_path.iterdir()) == []
    store = _vectors(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"] and store.spec == {
        "format": 2,
        "what": "rows",
        "complete": False,
    }


def test_chunks_are_checked_on_first_read_and_read_back_unflags_what_fails(tmp_path: Path) -> None:
    """A chunk's CRC-32 is written with it; the first read of a damaged, missing or unsummed chunk
    names it; read-back unflags its unit (rerun redoes it); a sparse array judges absent files by sum."""
    store = _vectors(tmp_path)
    array = ChecksummedArray(store, "data", "sums", 3, lambda i: f"data chunk {i}")
    values = np.arange(40, dtype=np.int32).reshape(10, 4)
    array.write(0, values[:6])  # chunks 0 and 1
    progress = Progress(store, "done", [[(array, [0, 1])], [(array, [2, 3])]])
    progress.read([])
    progress.mark(0)
    assert np.array_equal(array.read(np.array([1, 4, 5])), values[[1, 4, 5]])
    with pytest.raises(CacheError, match=r"data chunk 2: the chunk file .* is missing; check it with `sam2-encoder"):
        array.read(np.array([7]))
    array.write(6, values[6:])
    assert array.problems(range(4)) == []
    _damage(chunk_path(store.path, "data", (1, 0)))
    reread = ChecksummedArray(Store(store.path, FEATURES, "r+"), "data", "sums", 3, lambda i: f"data chunk {i}")
    with pytest.raises(CacheError, match=r"data chunk 1: (damaged, CRC-32|the chunk file .* cannot be decoded)"):
        reread.read(np.array([4]))
    progress = Progress(reread.store, "done", [[(reread, [0, 1])], [(reread, [2, 3])]])
    progress.read([])
    with pytest.raises(CacheError, match=r"1 chunk failed the read-back check and their chunks were unflagged"):
        read_back([(progress, [0])])
    assert not np.asarray(open_group(store.path)["done"][...]).any()

    chunk_path(store.path, "data", (3, 0)).unlink()
    assert "is missing" in reread.problems([3])[0]
    sparse = ChecksummedArray(reread.store, "data", "sums", 3, lambda i: f"data chunk {i}", sparse=True)
    assert "which is missing" in sparse.problems([3])[0]
