"""Image- and BEV-space augmentation, each draw recorded as a matrix.

Image space: resize (with jitter on train), crop to the network input size (bottom-aligned,
so the sky is cut first; random horizontally on train, centred otherwise), optional
horizontal flip, optional photometric jitter. Pixel coordinates are continuous with pixel
``i`` covering ``[i, i + 1)``, so a resize by ``s`` is exactly ``u -> s * u``.

The geometric part is one 2D affine map, original pixels -> network-input pixels, stored as a
4x4 ``img_aug`` whose top-left 3x3 block is the homogeneous 2D matrix. With the 4x4
``cam2img`` convention ``[u*d, v*d, d, 1] = cam2img @ [x, y, z, 1]`` the network input's
intrinsics are then simply ``img_aug @ cam2img``.

BEV space: flips, rotation about z and scale, as :func:`bevkd.pipeline.geometry.bev_transform`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bevkd.pipeline.config import DataConfig
from bevkd.pipeline.geometry import bev_transform

# ImageNet statistics, the convention of every pretrained image backbone.
IMAGE_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGE_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PHOTOMETRIC_RANGE = (0.8, 1.2)  # brightness, contrast, saturation factors


@dataclass(frozen=True)
class ImageAug:
    """One draw of image augmentation for one camera.

    ``resized``: (W, H) after resizing; ``crop``: (x0, y0) top-left of the crop in the resized
    image (negative or overhanging crops pad with black); ``out``: (W, H) network input;
    ``photometric``: (brightness, contrast, saturation) factors, or None.
    """

    src: tuple[int, int]
    resized: tuple[int, int]
    crop: tuple[int, int]
    out: tuple[int, int]
    flip: bool = False
    photometric: tuple[float, float, float] | None = None

    @property
    def matrix(self) -> np.ndarray:
        """4x4 ``img_aug``: original pixels -> network-input pixels (2D affine in the 3x3 block)."""
        sx = self.resized[0] / self.src[0]
        sy = self.resized[1] / self.src[1]
        affine = np.array([[sx, 0.0, -self.crop[0]], [0.0, sy, -self.crop[1]], [0.0, 0.0, 1.0]])
        if self.flip:
            affine = np.array([[-1.0, 0.0, self.out[0]], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ affine
        out = np.eye(4)
        out[:3, :3] = affine
        return out


def draw_image_aug(
    src_wh: tuple[int, int], cfg: DataConfig, rng: np.random.Generator | None
) -> ImageAug:
    """Choose resize/crop/flip/photometric for an image of ``src_wh`` (W, H).

    ``rng=None`` is validation: the base resize, a centred bottom-aligned crop, nothing random.
    The base resize fits the whole width and at least the height of ``cfg.image_size``.
    """
    out_h, out_w = cfg.image_size
    src_w, src_h = src_wh
    scale = max(out_w / src_w, out_h / src_h)
    if rng is not None:
        scale *= float(rng.uniform(*cfg.resize_jitter))
    new_w, new_h = max(round(src_w * scale), 1), max(round(src_h * scale), 1)
    crop_y = new_h - out_h  # keep the bottom: the road and objects, not the sky
    if rng is not None and new_w > out_w:
        crop_x = int(rng.integers(0, new_w - out_w + 1))
    else:
        crop_x = (new_w - out_w) // 2
    flip = bool(rng is not None and cfg.image_flip and rng.random() < 0.5)
    photometric = None
    if rng is not None and cfg.photometric:
        b, c, s = rng.uniform(*PHOTOMETRIC_RANGE, size=3)
        photometric = (float(b), float(c), float(s))
    return ImageAug(src_wh, (new_w, new_h), (crop_x, crop_y), (out_w, out_h), flip, photometric)


def _normalise(pixels: np.ndarray) -> np.ndarray:
    """Channel-wise ImageNet normalisation of ``(..., 3)`` values in [0, 1] -> ``(3, ...)``."""
    chw = np.empty((3, *pixels.shape[:-1]), dtype=np.float32)
    for c in range(3):  # channel by channel straight into CHW layout
        chw[c] = (pixels[..., c] - IMAGE_MEAN[c]) * (1 / IMAGE_STD[c])
    return chw


# Without photometric jitter a pixel's network value depends only on its 8-bit code and
# channel: one table lookup per channel gives the same float32 values as the arithmetic.
_NORMALISED_CODES = _normalise(
    np.arange(256, dtype=np.float32)[:, None].repeat(3, 1) * np.float32(1 / 255)
)


def apply_image_aug(image: Any, aug: ImageAug) -> np.ndarray:
    """``(H0, W0, 3)`` uint8 RGB (an array or an RGB ``PIL.Image``) -> ``(3, H, W)`` float32,
    photometric-jittered and normalised."""
    from PIL import Image

    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    if pil.size != aug.src:
        raise ValueError(f"image is {pil.size[0]}x{pil.size[1]}, augmentation drawn for {aug.src}")
    pil = pil.resize(aug.resized, Image.Resampling.BILINEAR)
    x0, y0 = aug.crop
    pil = pil.crop((x0, y0, x0 + aug.out[0], y0 + aug.out[1]))  # pads outside with black
    if aug.flip:
        pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if aug.photometric is None:
        codes = np.asarray(pil)
        chw = np.empty((3, aug.out[1], aug.out[0]), dtype=np.float32)
        for c in range(3):
            np.take(_NORMALISED_CODES[c], codes[..., c], out=chw[c])
        return chw
    pixels = np.asarray(pil, dtype=np.float32) * np.float32(1 / 255)
    return _normalise(_photometric(pixels, *aug.photometric))


def _luma(pixels: np.ndarray) -> np.ndarray:
    return pixels[..., 0] * 0.299 + pixels[..., 1] * 0.587 + pixels[..., 2] * 0.114


def _photometric(
    pixels: np.ndarray, brightness: float, contrast: float, saturation: float
) -> np.ndarray:
    out = pixels * np.float32(brightness)
    mean = np.float32(_luma(out).mean())
    out = (out - mean) * np.float32(contrast) + mean
    gray = _luma(out)[..., None]
    out = gray + (out - gray) * np.float32(saturation)
    return np.asarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def intrinsics_4x4(cam2img: np.ndarray) -> np.ndarray:
    """3x3 intrinsics (or a 3x4 / 4x4 projection, KITTI's P2) -> the 4x4 ``cam2img``
    convention used on samples: the matrix in the top-left corner of the identity."""
    matrix = np.asarray(cam2img, np.float64)
    out = np.eye(4)
    out[: matrix.shape[0], : matrix.shape[1]] = matrix
    return out


def draw_bev_aug(cfg: DataConfig, rng: np.random.Generator | None) -> np.ndarray:
    """4x4 ego -> augmented ego; identity when ``rng`` is None (validation)."""
    if rng is None:
        return np.eye(4)
    limit = np.deg2rad(cfg.bev_rotation_deg)
    rotation = float(rng.uniform(-limit, limit))
    scale = float(rng.uniform(*cfg.bev_scale))
    flip_x = bool("x" in cfg.bev_flip and rng.random() < 0.5)
    flip_y = bool("y" in cfg.bev_flip and rng.random() < 0.5)
    return bev_transform(rotation=rotation, scale=scale, flip_x=flip_x, flip_y=flip_y)
