"""The LeRobotDataset view inside a feature cache: the source dataset without the cached cameras' video.

Stock ``lerobot-train`` decodes every video feature its dataset's ``meta/info.json`` lists, for
every sample, whatever the policy reads. A feature cache therefore carries a view of its source
dataset, ``CACHE/dataset``, that lists no video feature for the cached cameras, so that
``lerobot-train --dataset.root=CACHE/dataset --policy.feature_cache=CACHE`` never decodes them::

    CACHE/dataset/
      meta/info.json               the source's, without the cached cameras' video features
      meta/stats.json, tasks.parquet, episodes/...   copied from the source, unchanged
      meta/sam2_encoder_view.json  {format, source, cameras, features, feature_order}: what was left out
      data -> SOURCE/data          symbolic links to the source (absolute): nothing is copied twice
      videos/<camera> -> SOURCE/videos/<camera>      for the cameras that are not cached only

The repo id stays the source's. The policy puts the cached cameras back into its
``input_features`` (:func:`restore_cached_cameras`, through ``make_policy``'s
``set_dataset_feature_metadata`` hook) exactly as LeRobot types them from the source's
``info.json`` and in the source's order, so the saved config lists every camera and the trained
policy runs on raw frames at ``lerobot-eval`` / rollout time. The view is written whole under a
temporary name and then renamed (a killed build leaves no half view); a view whose record differs
from the one its cache would write now is replaced.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "VIEW_DIR",
    "VIEW_FORMAT",
    "VIEW_RECORD",
    "cached_features",
    "restore_cached_cameras",
    "view_problems",
    "view_record",
    "write_dataset_view",
]

VIEW_DIR = "dataset"
"""The view's folder inside the cache (``--dataset.root=CACHE/dataset``)."""

VIEW_RECORD = "meta/sam2_encoder_view.json"
"""What the view left out, relative to the view's root."""

VIEW_FORMAT = 1
"""Format of :data:`VIEW_RECORD`."""

_PARTIAL = ".dataset.partial"  # the view being written, renamed to VIEW_DIR once whole


def _view_spec(source: Path, info: Mapping[str, Any], cameras: Sequence[str]) -> dict[str, Any]:
    """The record of a view of ``source`` leaving out the video features among ``cameras``."""
    features = info["features"]
    left_out = sorted(c for c in cameras if features.get(c, {}).get("dtype") == "video")
    return {
        "format": VIEW_FORMAT,
        "source": str(source),
        "cameras": left_out,
        "features": {c: features[c] for c in left_out},
        "feature_order": list(features),
    }


def view_record(cache: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record of ``CACHE/dataset`` (:data:`VIEW_RECORD`), or ``None`` when the cache has no view."""
    path = Path(cache) / VIEW_DIR / VIEW_RECORD
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def write_dataset_view(cache: str | os.PathLike[str], source: str | os.PathLike[str], cameras: Sequence[str]) -> Path:
    """Write (or keep, when it is already the one to write) the view ``CACHE/dataset`` of ``source``.

    Args:
        cache: The feature cache folder.
        source: The source LeRobotDataset's root (``dataset.root``).
        cameras: The cached cameras (their video features are left out; image features stay).

    Returns:
        The view's root.
    """
    cache, source = Path(cache), Path(source).resolve()
    info = json.loads((source / "meta" / "info.json").read_text())
    spec = _view_spec(source, info, cameras)
    final = cache / VIEW_DIR
    if final.is_dir() and view_record(cache) == spec and not view_problems(cache):
        return final
    partial = cache / _PARTIAL
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source / "meta", partial / "meta", symlinks=False)
    view_info = {**info, "features": {k: ft for k, ft in info["features"].items() if k not in spec["cameras"]}}
    (partial / "meta" / "info.json").write_text(json.dumps(view_info, indent=4, ensure_ascii=False))
    (partial / VIEW_RECORD).write_text(json.dumps(spec, indent=1, sort_keys=True))
    for entry in sorted(source.iterdir()):
        if entry.name not in ("meta", "videos"):
            os.symlink(entry.resolve(), partial / entry.name)
    if (source / "videos").is_dir():
        (partial / "videos").mkdir()
        for entry in sorted((source / "videos").iterdir()):
            if entry.name not in spec["cameras"]:
                os.symlink(entry.resolve(), partial / "videos" / entry.name)
    if final.is_symlink():
        final.unlink()
    elif final.exists():
        shutil.rmtree(final)  # the links in it are removed, not followed
    os.replace(partial, final)
    return final


def view_problems(cache: str | os.PathLike[str]) -> list[str]:
    """One line per link of ``CACHE/dataset`` whose target is gone (the source dataset moved or was deleted)."""
    root = Path(cache) / VIEW_DIR
    links = [p for p in [*root.glob("*"), *root.glob("videos/*")] if p.is_symlink()]
    return [
        f"{p}: links to {os.readlink(p)}, which does not exist (the source dataset moved or was deleted: train "
        "with --dataset.root=<where it is now>, or rebuild the cache from it)"
        for p in sorted(links)
        if not p.exists()
    ]


def cached_features(cache: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The source's ``info.json`` features of the cameras the view left out (``{}`` without a view)."""
    record = view_record(cache)
    return {} if record is None else dict(record["features"])


def restore_cached_cameras(cache: str | os.PathLike[str], input_features: Mapping[str, Any]) -> dict[str, Any]:
    """``input_features`` with the cameras the cache's view left out put back, in the source dataset's order.

    Args:
        cache: The feature cache folder (``feature_cache``).
        input_features: ``{key: PolicyFeature}`` as ``make_policy`` typed them from the dataset.

    Returns:
        The same features when nothing is missing (a dataset with every camera, or no view); else
        every feature LeRobot would type from the source's ``info.json`` (``dataset_to_policy_features``),
        in its order, then any other key of ``input_features``.
    """
    record = view_record(cache)
    if record is None:
        return dict(input_features)
    from lerobot.utils.feature_utils import dataset_to_policy_features

    missing = {k: ft for k, ft in dataset_to_policy_features(record["features"]).items() if k not in input_features}
    if not missing:
        return dict(input_features)
    merged = {**input_features, **missing}
    order = [k for k in record["feature_order"] if k in merged]
    return {k: merged[k] for k in order} | {k: v for k, v in merged.items() if k not in order}
