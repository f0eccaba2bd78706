"""Foveal training crops: each eye's frame cut down to a window around where the eyes look.

Primate vision resolves detail only in the fovea, a couple of degrees around the point of
gaze, and egocentric gaze dwells on objects (the motion model's gaze events fixate objects,
`egosynth.motion.trajectory`; Land & Hayhoe 2001 for the real thing). So consecutive foveal
views of one fixation show the same object from changing viewpoints and distances: slowness
on them has an object to be invariant to, while on whole frames the slowest signal is where
the camera is and where it looks in the room.

The store gives, per frame, the world `fixation_point` and each eye's OpenCV `cam_to_world`
and pinhole `intrinsics` (pixel centres at +0.5, docs/store.md). The point is projected into
each eye, and a window `fraction` of the frame height tall, with the aspect ratio of the
training `size`, is centred on it, shifted (not shrunk) to stay inside the frame, and resized
to `size` (torchvision's `roi_align`: an average of bilinear samples per output pixel, so it
does not alias when shrinking).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align

from egosynth.errors import EgosynthError

FOVEA_FIELDS = ("fixation_point", "cam_to_world", "intrinsics")


def check_fraction(fraction: float) -> float:
    """The --fovea value: 0 (off) or a fraction of the frame height in (0, 1]."""
    fraction = float(fraction)
    if not (0.0 <= fraction <= 1.0):  # also refuses NaN
        raise EgosynthError(f"--fovea = {fraction}: expected 0 (off) or a fraction in (0, 1]")
    return fraction


def project_fixation(point: Tensor, cam_to_world: Tensor, intrinsics: Tensor) -> Tensor:
    """Pixel position (x, y) of world points in each eye.

    point (..., 3) world metres; cam_to_world (..., E, 4, 4) OpenCV camera-to-world;
    intrinsics (..., E, 3, 3) pinhole K (broadcast over the leading axes) -> (..., E, 2) in
    continuous pixel coordinates (pixel centres at +0.5, the store's convention). A point
    behind or on an eye's image plane has no image: that eye gets its principal point.
    """
    point = point.double()
    world_to_cam = torch.linalg.inv(cam_to_world.double())
    p = (world_to_cam[..., :3, :3] @ point[..., None, :, None]).squeeze(-1)
    p = p + world_to_cam[..., :3, 3]
    uvw = (intrinsics.double() @ p[..., None]).squeeze(-1)
    z = uvw[..., 2:3]
    ok = z > 1e-6
    uv = uvw[..., :2] / torch.where(ok, z, torch.ones_like(z))
    centre = intrinsics.double()[..., :2, 2].expand_as(uv)
    return torch.where(ok, uv, centre).float()


def fovea_boxes(
    centre: Tensor, image_hw: tuple[int, int], fraction: float, size: tuple[int, int]
) -> Tensor:
    """Windows around `centre` (..., 2) pixel (x, y) -> boxes (..., 4) as (x0, y0, x1, y1).

    The window is `fraction` of the image height tall with the aspect ratio of `size` (w, h),
    made smaller only when that aspect does not fit the image width, and shifted to lie
    inside the image: the crop never shows padding and resizing never distorts it.
    """
    img_h, img_w = image_hw
    aspect = size[0] / size[1]
    h = min(check_fraction(fraction) * img_h, img_w / aspect)
    w = h * aspect
    x0 = (centre[..., 0] - w / 2).clamp(0.0, img_w - w)
    y0 = (centre[..., 1] - h / 2).clamp(0.0, img_h - h)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=-1)


def foveate(frames: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Crop boxes out of frames and resize: frames (N, C, H, W) float, boxes (N, 4) as
    (x0, y0, x1, y1) in pixel coordinates -> (N, C, size[1], size[0])."""
    rois = torch.cat([torch.arange(len(boxes), device=boxes.device)[:, None], boxes], 1)
    # aligned=True: box coordinates are continuous with pixel centres at +0.5, as in K.
    # sampling_ratio=-1: ceil(box / output) bilinear samples per output pixel and axis, i.e.
    # an average over the source pixels when shrinking, bilinear when enlarging, and an exact
    # copy at 1:1.
    return roi_align(
        frames, rois.to(frames.dtype), (size[1], size[0]), sampling_ratio=-1, aligned=True
    )


def gaze_boxes(batch: dict, shape: tuple[int, ...], fraction: float, size: tuple[int, int],
               device: torch.device) -> Tensor:  # fmt: skip
    """Foveal windows (B * T * E, 4) for frames of `shape` (B, T, E, C, H, W) around each eye's
    projection of the batch's fixation point (batch fields: fixation_point (B, T, 3),
    cam_to_world (B, T, E, 4, 4), intrinsics (B, E, 3, 3))."""
    missing = [k for k in FOVEA_FIELDS if k not in batch]
    if missing:
        raise EgosynthError(f"--fovea: the batch lacks {missing} (a store with gaze data needed)")
    b, t, e, _, h, w = shape
    k = torch.as_tensor(batch["intrinsics"], device=device)[:, None]  # (B, 1, E, 3, 3)
    uv = project_fixation(
        torch.as_tensor(batch["fixation_point"], device=device),
        torch.as_tensor(batch["cam_to_world"], device=device),
        k,
    )
    if uv.shape[:3] != (b, t, e):
        raise EgosynthError(
            f"--fovea: gaze fields give {tuple(uv.shape[:3])} (batch, time, eye), "
            f"frames {(b, t, e)}"
        )
    return fovea_boxes(uv, (h, w), fraction, size).reshape(-1, 4)


def foveal_frames(batch: dict, x: Tensor, fraction: float, size: tuple[int, int]) -> Tensor:
    """Whole frames x (B, T, E, 3, H, W) float at the store's resolution -> foveal crops
    (B, T, E, 3, size[1], size[0]) (`gaze_boxes`)."""
    b, t, e, c, h, w = x.shape
    boxes = gaze_boxes(batch, tuple(x.shape), fraction, size, x.device)
    out = foveate(x.reshape(-1, c, h, w), boxes, size)
    return out.view(b, t, e, c, size[1], size[0])
