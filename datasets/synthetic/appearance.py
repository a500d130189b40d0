"""How things look to the sensors: object materials (colour, LiDAR reflectivity), the road
surface texture, the sky and the lighting model. Pure functions of the world; no rays here.
"""

from __future__ import annotations

import numpy as np

from bevkd.datasets.synthetic import road as rd
from bevkd.datasets.synthetic.catalog import KINDS, SHAPES
from bevkd.datasets.synthetic.raycast import Parts
from bevkd.datasets.synthetic.world import Actor, Lighting

# Material slot -> (id, which actor colour it takes (-1: fixed), fixed RGB, reflectivity factor).
MATERIALS: dict[str, tuple[int, int, tuple[float, float, float], float]] = {
    "body": (0, 0, (0.0, 0.0, 0.0), 1.0),
    "glass": (1, -1, (0.07, 0.09, 0.12), 0.15),
    "wheel": (2, -1, (0.05, 0.05, 0.05), 0.3),
    "cab": (3, 1, (0.0, 0.0, 0.0), 1.0),
    "legs": (4, 1, (0.0, 0.0, 0.0), 0.8),
    "skin": (5, 2, (0.0, 0.0, 0.0), 0.9),
    "stripe": (6, 0, (0.0, 0.0, 0.0), 1.6),  # reflective bands: cones, barriers
}
STRIPE = MATERIALS["stripe"][0]
BUILDING_REFLECT = 0.3
POLE_REFLECT = 0.45


def actor_parts(actors: tuple[Actor, ...], states: np.ndarray, background: np.ndarray) -> Parts:
    """Parts (global frame) of every actor at ``states`` (N, 9), then the background boxes;
    background object ``j`` gets owner index ``N + j``."""
    owner, centre, half, yaw, material, colour, reflect = [], [], [], [], [], [], []
    for i, (actor, state) in enumerate(zip(actors, states, strict=True)):
        spec = KINDS[actor.kind]
        l, w, h = state[3:6]  # noqa: E741
        c, s = np.cos(state[6]), np.sin(state[6])
        bottom = state[2] - h / 2
        for x0, x1, y0, y1, z0, z1, slot in SHAPES[spec.shape]:
            mid = np.array([(x0 + x1) / 2 * l, (y0 + y1) / 2 * w, bottom + (z0 + z1) / 2 * h])
            owner.append(i)
            centre.append(
                [state[0] + mid[0] * c - mid[1] * s, state[1] + mid[0] * s + mid[1] * c, mid[2]]
            )
            half.append([(x1 - x0) / 2 * l, (y1 - y0) / 2 * w, (z1 - z0) / 2 * h])
            yaw.append(state[6])
            mat_id, source, fixed, factor = MATERIALS[slot]
            material.append(mat_id)
            colour.append(actor.colours[source] if source >= 0 else fixed)
            reflect.append(min(spec.reflectivity * factor, 1.0))
    n = len(actors)
    for j, box in enumerate(background):
        pole = box[3] < 1.0
        owner.append(n + j)
        centre.append(box[:3])
        half.append(box[3:6] / 2)
        yaw.append(box[6])
        material.append(0)
        shade = 0.3 + 0.4 * ((j * 0.618) % 1.0)
        colour.append((shade * 1.05, shade, shade * 0.92) if not pole else (0.35, 0.36, 0.37))
        reflect.append(POLE_REFLECT if pole else BUILDING_REFLECT)
    return Parts(
        owner=np.array(owner, dtype=np.int32),
        centre=np.array(centre, dtype=np.float64).reshape(-1, 3),
        half=np.array(half, dtype=np.float64).reshape(-1, 3),
        yaw=np.array(yaw, dtype=np.float64),
        material=np.array(material, dtype=np.int8),
        colour=np.array(colour, dtype=np.float64).reshape(-1, 3),
        reflect=np.array(reflect, dtype=np.float64),
    )


def noise_tile(seed: int, size: int = 128) -> np.ndarray:
    """A smooth-ish random tile (size, size) around 1.0, for surface texture."""
    rng = np.random.default_rng(seed)
    fine = rng.normal(0.0, 1.0, (size, size))
    coarse = rng.normal(0.0, 1.0, (size // 8, size // 8)).repeat(8, 0).repeat(8, 1)
    return (1.0 + 0.05 * fine + 0.06 * coarse).astype(np.float32)


# Ground surface classes: albedo (RGB) and LiDAR reflectivity.
GROUND_ALBEDO = np.array(
    [
        (0.3, 0.4, 0.22),  # 0 grass / verge
        (0.26, 0.26, 0.27),  # 1 asphalt
        (0.55, 0.54, 0.5),  # 2 sidewalk
        (0.42, 0.41, 0.38),  # 3 sidewalk joint
        (0.7, 0.7, 0.68),  # 4 curb
        (0.8, 0.65, 0.15),  # 5 yellow centre line
        (0.85, 0.85, 0.83),  # 6 white lane marking
    ],
    dtype=np.float32,
)
GROUND_REFLECT = np.array([0.12, 0.06, 0.14, 0.12, 0.2, 0.55, 0.55])


def _exact_ground_class(s: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The ground surface rule in road coordinates: asphalt with a double yellow centre line,
    dashed lane dividers (3 m of every 9 m) and solid edge lines, a curb, a paved sidewalk
    with joints every 2 m, then grass."""
    ad = np.abs(d)
    conditions = [
        np.abs(ad - 0.12) < 0.06,
        (np.abs(ad - rd.CARRIAGEWAY) < 0.1)
        | ((np.abs(ad - rd.LANE_WIDTH) < 0.075) & ((s % 9.0) < 3.0)),
        ad < rd.ROAD_EDGE,
        ad < rd.ROAD_EDGE + 0.2,
        (ad < rd.SIDEWALK_EDGE) & ((s % 2.0) < 0.06),
        ad < rd.SIDEWALK_EDGE,
    ]
    return np.select(conditions, [5, 6, 1, 4, 3, 2], default=0).astype(np.int8)


# The rule tabulated on a 1 cm (|d|) x 2 cm (s, period 18 m = lcm of 2 and 9) grid: one
# lookup per pixel instead of a dozen array passes.
_D_STEP, _S_STEP, _S_PERIOD = 0.01, 0.02, 18.0
_D_BINS = round((rd.SIDEWALK_EDGE + 1.0) / _D_STEP)
_S_BINS = round(_S_PERIOD / _S_STEP)
_CLASS_TABLE = _exact_ground_class(
    ((np.arange(_S_BINS) + 0.5) * _S_STEP)[None, :], ((np.arange(_D_BINS) + 0.5) * _D_STEP)[:, None]
).reshape(-1)


def ground_class(road: rd.Road, xy: np.ndarray) -> np.ndarray:
    """Surface class (N,) int8 of the ground at global points ``xy`` (N, 2) (see
    :func:`_exact_ground_class`; indices into GROUND_ALBEDO / GROUND_REFLECT)."""
    s, d = road.to_road(xy)
    di = np.minimum(np.abs(d) * (1.0 / _D_STEP), _D_BINS - 1).astype(np.int32)
    # s mod the period, written out: numpy's float % is several times slower.
    phase = s - np.floor(s * (1.0 / _S_PERIOD)) * _S_PERIOD
    si = np.clip(phase * (1.0 / _S_STEP), 0, _S_BINS - 1).astype(np.int32)
    return _CLASS_TABLE[di * _S_BINS + si]


def tile_lookup(tile: np.ndarray, xy: np.ndarray, per_metre: float = 4.0) -> np.ndarray:
    """Texture values (N,) of a repeating ``tile`` at global points ``xy`` (N, 2)."""
    size = tile.shape[0]
    if size & (size - 1) or tile.shape[1] != size:
        raise ValueError(f"texture tiles must be square with a power-of-two size, not {tile.shape}")
    # Floor, then wrap with a bit mask (two's complement wraps negatives correctly too).
    i = np.floor(xy[:, 0] * per_metre).astype(np.int32) & (size - 1)
    j = np.floor(xy[:, 1] * per_metre).astype(np.int32) & (size - 1)
    return tile.reshape(-1)[i * size + j]


def light_factor(normal: np.ndarray, light: Lighting) -> np.ndarray:
    """Lambertian light (..., 3) reaching surfaces with global unit normals (..., 3): sun plus
    ambient sky light, which comes mostly from above."""
    cosine = np.clip(normal @ light.sun, 0.0, None)[..., None]
    sky_part = (0.75 + 0.25 * normal[..., 2])[..., None]
    return light.ambient * sky_part + light.sun_colour * cosine


def sky(dirs_z: np.ndarray, light: Lighting) -> np.ndarray:
    """Sky colour (..., 3) for unit ray directions with vertical components ``dirs_z`` (...)."""
    up = np.clip(dirs_z * 3.0, 0.0, 1.0)[..., None]
    return light.sky_horizon * (1.0 - up) + light.sky_top * up


def transmittance(distance: np.ndarray, light: Lighting) -> np.ndarray:
    """Fraction of a surface's colour that survives the haze over ``distance`` metres; the
    rest is the horizon colour."""
    return np.exp(distance * np.float32(-light.haze / 25.0))
