"""The camera view: one resize + crop for frames and masks, and the same move for prompt points."""

from __future__ import annotations

import pytest
import torch

from sam2_encoder.camera_view import CameraView


def test_frames_and_masks_get_one_centre_crop_at_inference_and_one_random_crop_each_in_training() -> None:
    """At inference the view is the resize then the centre crop; in training each image gets its own random
    crop, and masks stacked on the image's channels get exactly the image's crop."""
    view = CameraView((48, 64), resize_hw=(24, 32), crop_hw=(20, 24), name="cam")
    assert view.shape == (20, 24)
    x = torch.rand(3, 4, 48, 64)
    resized = torch.nn.functional.interpolate(x, size=(24, 32), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(view.apply(x), resized[:, :, 2:22, 4:28])
    torch.manual_seed(0)
    stacked = torch.cat([x[:, :1].expand(3, 3, 48, 64), x[:, :1]], dim=1)  # a "mask" equal to the image's channel
    crops = view.apply(stacked, training=True)
    assert crops.shape == (3, 4, 20, 24)
    assert all(torch.equal(crops[i, 0], crops[i, 3]) for i in range(3)), "masks get the images' crops"
    assert not torch.equal(crops, view.apply(stacked)), "random crops (seeded), not the centre one"
    centre = CameraView((48, 64), resize_hw=(24, 32), crop_hw=(20, 24), random_crop=False)
    assert torch.equal(centre.apply(x, training=True), view.apply(x)), "random_crop=False: the centre crop"


def test_prompt_points_move_into_the_view_and_points_outside_it_are_refused() -> None:
    """A camera point (x, y) lands at (x * scale_x - left, y * scale_y - top); a point or box corner outside
    the part of the frame the view shows is one error naming the object and the bounds in camera pixels."""
    view = CameraView((48, 64), resize_hw=(24, 32), crop_hw=(20, 24), name="cam")
    moved = view.map_prompts({1: {"points": [[20.0, 10.0]], "labels": [1]}, 2: {"box": [10.0, 8.0, 40.0, 30.0]}})
    assert moved == {1: {"points": [[6.0, 3.0]], "labels": [1]}, 2: {"box": [1.0, 2.0, 16.0, 13.0]}}
    view.check_prompts({1: {"points": [[8.0, 4.0]], "labels": [1]}}, "object_prompts['cam']")
    with pytest.raises(ValueError, match=r"object_prompts\['cam'\]\[2\]: \[\[2.0, 4.0\]\] lies outside .*x must be "
                       r"in \[8, 56\] and y in \[4, 44\]"):  # fmt: skip
        view.check_prompts({2: {"box": [2.0, 4.0, 30.0, 30.0]}}, "object_prompts['cam']")
    with pytest.raises(ValueError, match=r"crop_shape \[30, 24\] is larger than camera 'cam' \(24x32\)"):
        CameraView((48, 64), resize_hw=(24, 32), crop_hw=(30, 24), name="cam")
