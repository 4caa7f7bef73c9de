"""Prompts for SAM 2's tracker: one home for their rules, their sets and their move into the camera view.

A prompt names one object on one frame, in that frame's pixel coordinates::

    {"points": [[x, y], ...], "labels": [1, 0, ...]}    # labels optional: all 1 (object); 0 is background
    {"box": [x0, y0, x1, y1]}                            # may be combined with points

The rules, the same wherever a prompt enters (:class:`~sam2_encoder.streaming.StreamingPredictor`,
the object tracker, the mask cache's prompts file, the ``sam2-encoder`` commands):

* points are ``[x, y]`` pairs (one pair may be given bare), box 4 numbers; every coordinate a
  finite number (ints or floats; bools and strings refused) inside the frame: ``x`` in ``[0, W]``,
  ``y`` in ``[0, H]``;
* a box has ``x1 > x0`` and ``y1 > y0``;
* labels are the ints 0 and 1 (floats such as ``1.0`` and bools refused), one per point, and
  only with points;
* object ids are ints (numpy ints too; strings of ints where they are JSON keys; bools refused).

Every problem is one ``ValueError``: ``"<where>: <what was wrong>, got <value>"``, where ``<where>``
names the file / episode / camera / object, and the part after it is the same from every entry point.

Sets: :func:`parse_object_prompts` checks ``{camera: {obj_id: prompt}}`` (the object tracker and
the encoder's ``object_prompts``), :func:`parse_episode_prompts` the mask cache's
``{"objects": [...], "episodes": {...}}`` table, and :func:`prompt_table_sha256` is that table's
identity. :class:`View` moves prompts from camera pixels into the resized, centre-cropped frame
the encoder sees.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "PROMPT_KEYS",
    "Prompt",
    "Prompts",
    "View",
    "check_box",
    "check_points",
    "check_prompt",
    "empty_prompt_message",
    "map_to_view",
    "object_id",
    "parse_episode_prompts",
    "parse_object_prompts",
    "prompt_table_sha256",
]

PROMPT_KEYS = ("points", "labels", "box")
"""The keys a prompt mapping may have."""

Prompt = dict[str, Any]
"""A checked prompt: ``{"points": (P, 2) list, "labels": (P,) int list}`` and/or ``{"box": [4]}``."""

Prompts = dict[str, dict[int, Prompt]]
"""Checked prompts per camera and object: ``{camera: {obj_id: Prompt}}``."""

_INT_TEXT = re.compile(r"\s*-?\d+\s*")


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def _shown(value: object) -> str:
    """A value as the user wrote it (arrays and tensors as lists)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    if hasattr(value, "tolist"):
        value = value.tolist()
    return repr(value)


def _has_bool(value: object) -> bool:
    if isinstance(value, bool | np.bool_):
        return True
    return isinstance(value, list | tuple) and any(_has_bool(v) for v in value)


def _numbers(value: object, where: str, name: str, form: str) -> np.ndarray:
    """``value`` as a float64 array of finite numbers, or the one error for ``name``."""
    error = ValueError(f"{_at(where)}{name} must be {form} of finite numbers, got {_shown(value)}")
    raw = value
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        raise error from None
    if array.dtype.kind == "O":
        flat = array.reshape(-1)
        if not all(isinstance(v, int | float | np.integer | np.floating) and not _has_bool(v) for v in flat):
            raise error
    elif array.dtype.kind not in "iuf" or _has_bool(raw):
        raise error
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise error
    return array


def _inside(xy: np.ndarray, frame_hw: Sequence[int] | None, where: str, name: str) -> None:
    """Raise unless every ``(x, y)`` row lies in the frame ``[0, W] x [0, H]``."""
    if frame_hw is None:
        return
    height, width = (int(v) for v in frame_hw[:2])
    bad = (xy[:, 0] < 0) | (xy[:, 0] > width) | (xy[:, 1] < 0) | (xy[:, 1] > height)
    if bad.any():
        raise ValueError(
            f"{_at(where)}{name} {xy[bad].tolist()} lies outside the {width}x{height} (W x H) frame: x must be in "
            f"[0, {width}] and y in [0, {height}] (frame pixel coordinates)"
        )


def check_points(
    points: object, labels: object, where: str = "", frame_hw: Sequence[int] | None = None
) -> tuple[np.ndarray, list[int]] | None:
    """Points and their labels of one prompt.

    Args:
        points: ``(P, 2)`` ``[x, y]`` pairs (list, numpy or torch; one bare ``[x, y]`` pair too),
            or ``None``.
        labels: ``(P,)`` ints, 1 (object) or 0 (background), or ``None`` (all 1).
        where: Who gave the prompt, the start of every message (``""``: none).
        frame_hw: ``(H, W)`` of the frame the points must lie in; ``None``: not checked.

    Returns:
        ``((P, 2) float64 points, P int labels)``, or ``None`` for no points (``None`` or zero
        pairs, with no labels).

    Raises:
        ValueError: For points that are not finite ``[x, y]`` pairs or lie outside the frame,
            labels that are not one int 0 / 1 per point, or labels without points.
    """
    pts = None
    if points is not None:
        pts = _numbers(points, where, "points", "[[x, y], ...]")
        if pts.shape == (2,):
            pts = pts[None]
        elif pts.size == 0:
            pts = np.zeros((0, 2))
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"{_at(where)}points must be [[x, y], ...] of finite numbers, got {_shown(points)}")
    count = 0 if pts is None else len(pts)
    if count:
        _inside(pts, frame_hw, where, "point")
    if labels is None:
        return None if count == 0 else (pts, [1] * count)
    if count == 0:
        raise ValueError(f"{_at(where)}labels without points: give one label per point, got labels {_shown(labels)}")
    raw = labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels
    try:
        lab = np.asarray(raw).reshape(-1)
    except (TypeError, ValueError):
        lab = np.asarray([None])
    if lab.dtype.kind not in "iu" or _has_bool(raw) or lab.shape != (count,) or not np.isin(lab, (0, 1)).all():
        raise ValueError(
            f"{_at(where)}labels must be one 1 (object) or 0 (background) per point, got {_shown(labels)} for "
            f"{count} point{'s' if count > 1 else ''} (labels are the ints 0 and 1)"
        )
    return pts, [int(v) for v in lab]


def check_box(box: object, where: str = "", frame_hw: Sequence[int] | None = None) -> np.ndarray:
    """One box ``[x0, y0, x1, y1]`` (list, numpy or torch, 4 numbers in any shape).

    Args:
        box: The box.
        where: Who gave it, the start of every message.
        frame_hw: ``(H, W)`` of the frame its corners must lie in; ``None``: not checked.

    Returns:
        ``(4,)`` float64.

    Raises:
        ValueError: For a box that is not 4 finite numbers, has ``x1 <= x0`` or ``y1 <= y0``,
            or reaches outside the frame.
    """
    b = _numbers(box, where, "box", "[x0, y0, x1, y1]").reshape(-1)
    if b.shape != (4,):
        raise ValueError(f"{_at(where)}box must be [x0, y0, x1, y1] of finite numbers, got {_shown(box)}")
    if not (b[2] > b[0] and b[3] > b[1]):
        raise ValueError(f"{_at(where)}box must have x1 > x0 and y1 > y0, got {_shown(box)}")
    _inside(b.reshape(2, 2), frame_hw, where, "box corner")
    return b


def check_prompt(prompt: object, where: str = "", frame_hw: Sequence[int] | None = None) -> Prompt:
    """One prompt mapping (see the module docstring), checked and normalised.

    Args:
        prompt: ``{"points": ..., "labels": ...}`` and/or ``{"box": ...}``.
        where: Who gave it (file, episode, camera, object), the start of every message.
        frame_hw: ``(H, W)`` of the frame; ``None``: coordinates are not checked against a frame.

    Returns:
        ``{"points": [[x, y], ...], "labels": [int, ...]}`` and/or ``{"box": [x0, y0, x1, y1]}``
        (floats, in that key order).

    Raises:
        ValueError: For a prompt that is not a mapping of :data:`PROMPT_KEYS`, is empty, or
            breaks a rule of :func:`check_points` / :func:`check_box`.
    """
    if not isinstance(prompt, Mapping):
        raise ValueError(f"{_at(where)}a prompt is a mapping of {list(PROMPT_KEYS)}, got {_shown(prompt)}")
    extra = sorted(map(str, set(prompt) - set(PROMPT_KEYS)))
    if extra:
        raise ValueError(f"{_at(where)}unknown keys {extra}; a prompt is a mapping of {list(PROMPT_KEYS)}")
    points = check_points(prompt.get("points"), prompt.get("labels"), where, frame_hw)
    box = prompt.get("box")
    if points is None and box is None:
        raise ValueError(f"{_at(where)}{empty_prompt_message()}, got {_shown(dict(prompt))}")
    out: Prompt = {}
    if points is not None:
        out["points"], out["labels"] = points[0].tolist(), points[1]
    if box is not None:
        out["box"] = check_box(box, where, frame_hw).tolist()
    return out


def empty_prompt_message() -> str:
    """The text of the empty-prompt error (after its ``where``)."""
    return "empty prompt: give points [[x, y], ...] (with labels) or a box [x0, y0, x1, y1]"


def object_id(raw: object, where: str = "", *, text: bool = False) -> int:
    """An object id: a Python or numpy int (``text``: also a string of one, as JSON keys are).

    Raises:
        ValueError: ``"<where>: object ids must be ints, got <raw>"`` (bools and floats too).
    """
    if isinstance(raw, int | np.integer) and not isinstance(raw, bool | np.bool_):
        return int(raw)
    if text and isinstance(raw, str) and _INT_TEXT.fullmatch(raw):
        return int(raw)
    raise ValueError(f"{_at(where)}object ids must be ints, got {raw!r}")


def parse_object_prompts(
    spec: Mapping[str, Any] | None,
    frame_sizes: Mapping[str, Sequence[int]],
    num_objects: int,
    what: str = "object_prompts",
) -> Prompts:
    """Check first-frame prompts per camera and object, and return them normalised.

    Args:
        spec: ``{camera: {obj_id: prompt}}`` (see the module docstring). Coordinates are camera
            pixels. Object ids are ints (or strings of ints, as JSON keys are). ``None`` or
            ``{}``: no prompts.
        frame_sizes: ``{camera: (H, W)}`` of every camera that gets object masks: every one
            needs prompts, and no other camera may have any.
        num_objects: ``K``: each camera names exactly ``K`` distinct ids.
        what: Name of the option, for messages (``"<what>['cam'][1]: ..."``).

    Returns:
        ``{camera: {obj_id: prompt}}`` as :func:`check_prompt` returns them, cameras and ids
        sorted; ``{}`` for no prompts.

    Raises:
        ValueError: Naming the camera, object and value, for an unknown or missing camera, ids that
            are not ``K`` distinct ints, or a prompt that :func:`check_prompt` refuses.
    """
    if spec is None or (isinstance(spec, Mapping) and not spec):
        return {}
    if not isinstance(spec, Mapping):
        raise ValueError(f"{what} must be {{camera: {{obj_id: prompt}}}}, got {spec!r}")
    cameras = {str(k): (int(v[0]), int(v[1])) for k, v in frame_sizes.items()}
    unknown = sorted(set(map(str, spec)) - set(cameras))
    if unknown:
        raise ValueError(
            f"{what} names cameras {unknown} that get no object masks; cameras with object masks: {sorted(cameras)}"
        )
    missing = sorted(set(cameras) - set(map(str, spec)))
    if missing:
        raise ValueError(
            f"{what} has no prompts for cameras {missing}; every camera with object masks needs {num_objects}"
        )
    out: Prompts = {}
    for camera in sorted(cameras):
        objects = spec[camera]
        where = f"{what}[{camera!r}]"
        if not isinstance(objects, Mapping):
            raise ValueError(f"{where} must be {{obj_id: prompt}}, got {objects!r}")
        ids: dict[int, Any] = {}
        for raw, prompt in objects.items():
            obj_id = object_id(raw, where, text=True)
            if obj_id in ids:
                raise ValueError(f"{where} names object {obj_id} twice (keys {list(objects)})")
            ids[obj_id] = prompt
        if len(ids) != num_objects:
            raise ValueError(
                f"{where} prompts {len(ids)} objects {sorted(ids)}; expected num_objects={num_objects} "
                "(one prompt per mask channel)"
            )
        out[camera] = {i: check_prompt(ids[i], f"{where}[{i}]", cameras[camera]) for i in sorted(ids)}
    return out


def parse_episode_prompts(
    spec: object, n_episodes: int, frame_hw: Sequence[int] | None = None, where: str = "prompts"
) -> dict[str, Any]:
    """Check the mask cache's prompt table ``{"objects": [ids], "episodes": {index: {obj_id: prompt}}}``.

    Args:
        spec: The parsed table.
        n_episodes: Episodes of the replay buffer: every one must be listed (``{}`` for none).
        frame_hw: ``(H, W)`` of the frames, to check coordinates against; ``None``: not checked.
        where: The file (or ``"prompts"``), the start of every message.

    Returns:
        ``{"objects": [ids], "episodes": {int: {int: prompt}}}``, each prompt as given (a copy
        of its mapping: :func:`prompt_table_sha256` of it is the table's identity).

    Raises:
        ValueError: Naming ``where``, the episode and the object of the first problem.
    """
    if not isinstance(spec, Mapping) or set(spec) != {"objects", "episodes"}:
        got = sorted(spec) if isinstance(spec, Mapping) else type(spec).__name__
        raise ValueError(f"{where} must be {{'objects': [ids], 'episodes': {{...}}}}, got {got}")
    objects = spec["objects"]
    if (
        not isinstance(objects, list)
        or not objects
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in objects)
        or len(set(objects)) != len(objects)
    ):
        raise ValueError(f"{where}: 'objects' must be a non-empty list of distinct integer ids, got {objects!r}")
    episodes = spec["episodes"]
    if not isinstance(episodes, Mapping):
        raise ValueError(f"{where}: 'episodes' must map episode index -> prompts, got {type(episodes).__name__}")
    out: dict[int, dict[int, Prompt]] = {}
    for name, per_object in episodes.items():
        if not str(name).isdigit() or int(name) >= n_episodes:
            raise ValueError(f"{where}: episode {name!r} is not an index of the {n_episodes} episodes")
        if not isinstance(per_object, Mapping):
            raise ValueError(f"{where}: episode {name} must map object id -> prompt, got {per_object!r}")
        out[int(name)] = {}
        for obj, prompt in per_object.items():
            obj_id = object_id(obj, f"{where}: episode {name}", text=True)
            if obj_id not in objects:
                raise ValueError(f"{where}: episode {name} prompts object {obj!r}, which is not in objects {objects}")
            check_prompt(prompt, f"{where}: episode {name} object {obj_id}", frame_hw)
            out[int(name)][obj_id] = dict(prompt)
    missing = [e for e in range(n_episodes) if e not in out]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise ValueError(f"{where}: episodes {shown} have no prompts (list every episode; {{}} for none)")
    return {"objects": list(objects), "episodes": out}


def prompt_table_sha256(table: Mapping[str, Any]) -> str:
    """Hex sha256 of a table from :func:`parse_episode_prompts`: keys as strings, sorted, JSON."""
    canonical = {
        "objects": table["objects"],
        "episodes": {str(e): {str(o): p for o, p in sorted(v.items())} for e, v in sorted(table["episodes"].items())},
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class View:
    """A resize then a centre crop: camera pixels -> the pixels of the frame the encoder sees.

    A camera point ``(x, y)`` lands at ``(x * scale_x - left, y * scale_y - top)``; the view is
    ``height x width`` pixels.

    Attributes:
        scale_y: Resized height / camera height.
        scale_x: Resized width / camera width.
        top: Rows cropped off the top of the resized frame.
        left: Columns cropped off its left.
        height: Rows of the view.
        width: Columns of the view.
    """

    scale_y: float
    scale_x: float
    top: int
    left: int
    height: int
    width: int

    @classmethod
    def of(cls, frame_hw: Sequence[int], resize_hw: Sequence[int] | None, crop_hw: Sequence[int] | None) -> View:
        """The view of a ``frame_hw`` camera resized to ``resize_hw`` then centre-cropped to ``crop_hw``."""
        height, width = (int(v) for v in frame_hw)
        rh, rw = resize_hw or (height, width)
        ch, cw = crop_hw or (rh, rw)
        return cls(rh / height, rw / width, (rh - ch) // 2, (rw - cw) // 2, ch, cw)

    def is_identity(self, frame_hw: Sequence[int]) -> bool:
        """Whether the view is the whole camera frame, unscaled."""
        return (self.top, self.left, self.height, self.width) == (0, 0, *(int(v) for v in frame_hw))

    def bounds(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)``: the part of the camera frame the view shows, in camera pixels."""
        sx, sy = self.scale_x, self.scale_y
        return self.left / sx, self.top / sy, (self.left + self.width) / sx, (self.top + self.height) / sy

    def outside(self, prompt: Mapping[str, Any]) -> list[list[float]]:
        """The points and box corners of a checked prompt that fall outside the view (camera pixels)."""
        x0, y0, x1, y1 = self.bounds()
        box = [prompt["box"][:2], prompt["box"][2:]] if "box" in prompt else []
        corners = list(prompt.get("points", [])) + box
        return [list(xy) for xy in corners if not (x0 <= xy[0] <= x1 and y0 <= xy[1] <= y1)]

    def point(self, xy: Sequence[float]) -> list[float]:
        """One ``[x, y]`` in camera pixels, in view pixels."""
        return [xy[0] * self.scale_x - self.left, xy[1] * self.scale_y - self.top]

    def map(self, prompt: Mapping[str, Any]) -> Prompt:
        """A checked prompt moved into view pixels (labels kept)."""
        moved = dict(prompt)
        if "points" in prompt:
            moved["points"] = [self.point(xy) for xy in prompt["points"]]
        if "box" in prompt:
            moved["box"] = self.point(prompt["box"][:2]) + self.point(prompt["box"][2:])
        return moved


def map_to_view(prompts: Mapping[int, Mapping[str, Any]], view: View) -> dict[int, Prompt]:
    """``{obj_id: prompt}`` in camera pixels -> the same in the pixels of ``view``."""
    return {obj_id: view.map(prompt) for obj_id, prompt in prompts.items()}
