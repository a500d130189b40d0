"""Camera simulation: pinhole cameras on the ego vehicle, rendered by per-pixel ray casting
with a depth test (nearest hit wins), so perspective and occlusion are exact.

Pixel ``(row v, col u)`` is the ray through image point ``(u, v)`` (pixel centres at integer
coordinates, as OpenCV calibrations and ``view_points`` use them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bevkd.datasets.synthetic import appearance as ap
from bevkd.datasets.synthetic.raycast import (
    Hits,
    Parts,
    Window,
    cast,
    ground_hits,
    hit_faces,
    part_face_normals,
)
from bevkd.datasets.synthetic.road import Road
from bevkd.datasets.synthetic.world import Lighting
from bevkd.pipeline.geometry import invert_pose

NEAR = 0.05  # m: the camera's near plane for window clipping
FAR = 400.0  # m of ground a camera ray may travel before it counts as sky

# nuScenes-like rig at full resolution (1600 x 900): yaw (deg), pitch (deg, down positive),
# position in the ego frame (m), focal length, principal point. Values near the real
# calibrated_sensor records of a nuScenes car.
NUSCENES_RIG: dict[str, tuple[float, float, tuple[float, float, float], float, float, float]] = {
    "CAM_FRONT": (0.0, 0.6, (1.70, 0.016, 1.511), 1266.4, 816.3, 491.5),
    "CAM_FRONT_RIGHT": (-55.0, 0.3, (1.551, -0.493, 1.496), 1260.8, 808.0, 495.3),
    "CAM_FRONT_LEFT": (55.0, 0.4, (1.522, 0.495, 1.516), 1272.6, 826.6, 479.8),
    "CAM_BACK": (180.0, 0.2, (0.028, 0.004, 1.579), 809.2, 829.2, 481.8),
    "CAM_BACK_LEFT": (110.0, 0.5, (1.036, 0.485, 1.591), 1256.7, 817.8, 451.9),
    "CAM_BACK_RIGHT": (-110.0, 0.3, (1.015, -0.481, 1.562), 1259.5, 807.3, 501.2),
}
FULL_SIZE = (1600, 900)


@dataclass(frozen=True)
class Camera:
    """``intrinsic``: (3, 3) for the stored image size; ``cam2ego``: (4, 4), camera frame
    x right, y down, z forward."""

    name: str
    width: int
    height: int
    intrinsic: np.ndarray
    cam2ego: np.ndarray


def camera_rotation(yaw_deg: float, pitch_deg: float, roll_deg: float = 0.0) -> np.ndarray:
    """cam2ego rotation (3, 3) of a camera looking along ego heading ``yaw`` (0 = forward,
    90 = left), tilted down by ``pitch`` and rolled about its optical axis."""
    yaw, pitch, roll = np.radians([yaw_deg, pitch_deg, roll_deg])
    forward = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), -np.sin(pitch)])
    right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
    down = np.cross(forward, right)
    cr, sr = np.cos(roll), np.sin(roll)
    right, down = cr * right + sr * down, -sr * right + cr * down
    return np.stack([right, down, forward], axis=1)


def nuscenes_rig(scale: float, rng: np.random.Generator) -> list[Camera]:
    """The six cameras at ``scale`` x full resolution, with a small per-vehicle jitter of the
    mounting (as each nuScenes log has its own calibration)."""
    width, height = round(FULL_SIZE[0] * scale), round(FULL_SIZE[1] * scale)
    cams = []
    for name, (yaw, pitch, pos, focal, cx, cy) in NUSCENES_RIG.items():
        jitter = rng.normal(0.0, 0.25, 3)
        cam2ego = np.eye(4)
        cam2ego[:3, :3] = camera_rotation(yaw + jitter[0], pitch + jitter[1], jitter[2])
        cam2ego[:3, 3] = np.array(pos) + rng.normal(0.0, 0.005, 3)
        intrinsic = np.array(
            [[focal * scale, 0.0, cx * scale], [0.0, focal * scale, cy * scale], [0.0, 0.0, 1.0]]
        )
        cams.append(Camera(name, width, height, intrinsic, cam2ego))
    return cams


@dataclass(frozen=True)
class CameraRays:
    """Per-camera ray grid in the ego frame: ``dirs`` (H, W, 3) float32, scaled so that the ray
    parameter is the depth along the optical axis; ``ground_t`` (H, W) depth of the ground
    hit (inf: none); ``ray_len`` (H, W) metres per unit of depth."""

    camera: Camera
    origin: np.ndarray
    dirs: np.ndarray
    ground_t: np.ndarray
    ray_len: np.ndarray

    @classmethod
    def build(cls, camera: Camera, ground_z: float) -> CameraRays:
        u, v = np.meshgrid(
            np.arange(camera.width, dtype=np.float64), np.arange(camera.height, dtype=np.float64)
        )
        pix = np.stack([u, v, np.ones_like(u)], axis=-1)
        cam_dirs = pix @ np.linalg.inv(camera.intrinsic).T
        dirs = cam_dirs @ camera.cam2ego[:3, :3].T
        origin = camera.cam2ego[:3, 3].copy()
        ray_len = np.linalg.norm(dirs, axis=-1)
        ground_t = ground_hits(origin, dirs, ground_z, FAR / ray_len.max())
        return cls(
            camera,
            origin,
            dirs.astype(np.float32),
            ground_t.astype(np.float32),
            ray_len.astype(np.float32),
        )


@dataclass(frozen=True)
class CameraView:
    """A camera's rays plus what stays fixed over a scene, flattened to pixel order: the sky
    (H*W, 3), a screen-space texture (H*W,) for object surfaces, a sensor-noise image
    (H, 2W, 3) that each frame samples at a random offset, and the ground. The world is flat,
    so each pixel's ground hit is fixed in the ego frame. From pixel ``ground_start`` on
    (B pixels): ego x-y of the hit ``ground_xy`` (B, 2), the light and haze transmittance
    that reach the camera from it ``ground_light`` (B, 3), and ``ground_base`` (B, 3): the
    haze in front of the ground, or the sky where a pixel sees no ground (its light is 0)."""

    rays: CameraRays
    sky: np.ndarray
    texture: np.ndarray
    noise: np.ndarray
    ground_start: int
    ground_xy: np.ndarray
    ground_light: np.ndarray
    ground_base: np.ndarray

    @classmethod
    def build(
        cls,
        camera: Camera,
        ground_z: float,
        light: Lighting,
        tile: np.ndarray,
        rng: np.random.Generator,
    ) -> CameraView:
        rays = CameraRays.build(camera, ground_z)
        sky = ap.sky(rays.dirs[..., 2] / rays.ray_len, light).astype(np.float32).reshape(-1, 3)
        rows, cols = np.divmod(np.arange(camera.width * camera.height), camera.width)
        texture = tile[rows % tile.shape[0], cols % tile.shape[1]].astype(np.float32)
        noise = rng.normal(0.0, 0.012, (camera.height, 2 * camera.width, 3)).astype(np.float32)
        t = rays.ground_t.reshape(-1)
        finite = np.isfinite(t)
        start = int(np.argmax(finite)) if finite.any() else len(t)
        hit = finite[start:, None]
        tb = np.where(hit[:, 0], t[start:], 0.0).astype(np.float64)
        xy = rays.origin[None, :2] + tb[:, None] * rays.dirs.reshape(-1, 3)[start:, :2]
        keep = ap.transmittance(tb * rays.ray_len.reshape(-1)[start:], light)[:, None]
        up = ap.light_factor(np.array([0.0, 0.0, 1.0]), light)
        ground_light = np.where(hit, up * keep, 0.0).astype(np.float32)
        ground_base = np.where(hit, light.sky_horizon * (1.0 - keep), sky[start:]).astype(
            np.float32
        )
        return cls(rays, sky, texture, noise, start, xy, ground_light, ground_base)


def cuboid_corners(centre: np.ndarray, half: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """(N, 8, 3) corners of yaw-rotated cuboids with centres and half sizes (N, 3)."""
    signs = np.array(
        [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64
    )
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    local = half[:, None, :] * signs[None]
    corners = np.stack(
        [
            local[..., 0] * c - local[..., 1] * s,
            local[..., 0] * s + local[..., 1] * c,
            local[..., 2],
        ],
        axis=-1,
    )
    return corners + centre[:, None, :]


def project_extent(camera: Camera, corners: np.ndarray) -> np.ndarray:
    """(N, 4) image extents ``u_min, v_min, u_max, v_max`` (unclipped to the image) of
    cuboids with ego-frame ``corners`` (N, 8, 3), clipped at the near plane; NaN rows for
    cuboids wholly behind it."""
    ego2cam = invert_pose(camera.cam2ego)
    corners = corners @ ego2cam[:3, :3].T + ego2cam[:3, 3]
    # Box edges join corners that differ in exactly one sign; where one crosses the near
    # plane, the crossing point bounds the visible part of the box.
    p0 = corners[:, _EDGES[:, 0]]
    p1 = corners[:, _EDGES[:, 1]]
    z0, z1 = p0[..., 2], p1[..., 2]
    crossing = (z0 - NEAR) * (z1 - NEAR) < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(crossing, (NEAR - z0) / (z1 - z0), 0.0)
    cut = p0 + alpha[..., None] * (p1 - p0)
    points = np.concatenate([corners, cut], axis=1)  # (N, 20, 3)
    valid = np.concatenate([corners[..., 2] >= NEAR, crossing], axis=1)
    z = np.where(valid, np.maximum(points[..., 2], NEAR), 1.0)
    k = camera.intrinsic
    u = k[0, 0] * points[..., 0] / z + k[0, 1] * points[..., 1] / z + k[0, 2]
    v = k[1, 1] * points[..., 1] / z + k[1, 2]
    out = np.stack(
        [
            np.where(valid, u, np.inf).min(1),
            np.where(valid, v, np.inf).min(1),
            np.where(valid, u, -np.inf).max(1),
            np.where(valid, v, -np.inf).max(1),
        ],
        axis=1,
    )
    out[~valid.any(1)] = np.nan
    return out


def _windows(rays: CameraRays, parts: Parts) -> dict[int, list[tuple[int, Window]]]:
    """Image windows bounding each part's projection (clipped to the near plane and the
    image), grouped by object."""
    cam = rays.camera
    extent = project_extent(cam, cuboid_corners(parts.centre, parts.half, parts.yaw))
    seen = np.isfinite(extent[:, 0])
    extent = np.nan_to_num(extent, nan=-1.0)
    c0 = np.clip(np.floor(extent[:, 0]), 0, cam.width).astype(np.int64)
    c1 = np.clip(np.ceil(extent[:, 2]) + 1, 0, cam.width).astype(np.int64)
    r0 = np.clip(np.floor(extent[:, 1]), 0, cam.height).astype(np.int64)
    r1 = np.clip(np.ceil(extent[:, 3]) + 1, 0, cam.height).astype(np.int64)
    out: dict[int, list[tuple[int, Window]]] = {}
    for m in np.flatnonzero(seen & (c1 > c0) & (r1 > r0)).tolist():
        out.setdefault(int(parts.owner[m]), []).append(
            (m, (int(r0[m]), int(r1[m]), int(c0[m]), int(c1[m])))
        )
    return out


_EDGES = np.array([(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1])


def trace(rays: CameraRays, parts: Parts) -> Hits:
    """Nearest hits of every pixel against the ground and ``parts`` (ego frame)."""
    return cast(rays.origin, rays.dirs, rays.ground_t, parts, _windows(rays, parts))


def instance_mask(hits: Hits, parts: Parts, n_actors: int) -> np.ndarray:
    """(H, W) int32: index of the actor seen at each pixel, -1 for ground, sky, background."""
    owner = np.where(hits.part >= 0, parts.owner[np.maximum(hits.part, 0)], -1)
    return np.where(owner < n_actors, owner, -1).astype(np.int32)


def shade(
    view: CameraView,
    hits: Hits,
    parts: Parts,
    light: Lighting,
    road: Road,
    ego2global: np.ndarray,
    tile: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """The colour image (H, W, 3) uint8 of traced hits."""
    rays = view.rays
    height, width = hits.t.shape
    horizon = light.sky_horizon.astype(np.float32)
    image = view.sky.copy()

    # Ground everywhere it is in view (objects overwrite it below).
    xy = view.ground_xy @ ego2global[:2, :2].T + ego2global[:2, 3]
    # np.take: row gathers through fancy indexing are several times slower.
    albedo = np.take(ap.GROUND_ALBEDO, ap.ground_class(road, xy), axis=0)
    albedo *= ap.tile_lookup(tile, xy)[:, None]
    albedo *= view.ground_light
    albedo += view.ground_base
    image[view.ground_start :] = albedo

    part = hits.part.reshape(-1)
    obj = np.flatnonzero(part >= 0)
    pidx = part[obj]
    t = hits.t.reshape(-1)[obj]
    points = rays.origin.astype(np.float32) + t[:, None] * np.take(
        rays.dirs.reshape(-1, 3), obj, axis=0
    )
    ego_yaw = np.arctan2(ego2global[1, 0], ego2global[0, 0])
    # Faces are flat: colour times light per (part, face) is one lookup per pixel.
    light6 = ap.light_factor(part_face_normals(parts.yaw + ego_yaw), light).astype(np.float32)
    code = pidx * 6 + hit_faces(points, parts, pidx)
    rgb = np.take(
        (parts.colour.astype(np.float32)[:, None, :] * light6).reshape(-1, 3), code, axis=0
    )
    # Reflective bands on cones and barriers: every other 12 cm of height is near-white.
    striped = np.flatnonzero(parts.material[pidx] == ap.STRIPE)
    band = striped[np.floor(points[striped, 2] / 0.12) % 2 == 0]
    rgb[band] = 0.9 * np.take(light6.reshape(-1, 3), code[band], axis=0)
    keep = ap.transmittance(t * rays.ray_len.reshape(-1)[obj], light)
    rgb *= (view.texture[obj] * keep)[:, None]
    rgb += horizon * (1.0 - keep)[:, None]
    image[obj] = rgb

    shift = int(rng.integers(width))
    image = image.reshape(height, width, 3) + view.noise[:, shift : shift + width]
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
