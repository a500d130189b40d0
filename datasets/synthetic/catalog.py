"""What the synthetic world is made of: object kinds with nuScenes categories, size priors,
attributes, shapes (a few cuboids inside the GT box) and the KITTI type each one exports as.

Sizes follow the nuScenes training-set means (w, l, h) with a spread, so instances of one
class vary in size and an object's image size does not fix its distance.
"""

from __future__ import annotations

from dataclasses import dataclass

# nuScenes v1.0 categories (all 23, as in the real category table) and attributes.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("animal", "All animals, e.g. cats, rats, dogs, deer, birds."),
    ("human.pedestrian.adult", "Adult subcategory."),
    ("human.pedestrian.child", "Child subcategory."),
    ("human.pedestrian.construction_worker", "Construction worker"),
    ("human.pedestrian.personal_mobility", "A small electric or self-propelled vehicle."),
    ("human.pedestrian.police_officer", "Police officer."),
    ("human.pedestrian.stroller", "Strollers."),
    ("human.pedestrian.wheelchair", "Wheelchairs."),
    ("movable_object.barrier", "Temporary road barrier placed in the scene."),
    ("movable_object.debris", "Movable object that is left on the driveable surface."),
    ("movable_object.pushable_pullable", "Objects that a pedestrian may push or pull."),
    ("movable_object.trafficcone", "All types of traffic cone."),
    ("static_object.bicycle_rack", "Area or device intended to park or secure the bicycles."),
    ("vehicle.bicycle", "Human or electric powered 2-wheeled vehicle."),
    ("vehicle.bus.bendy", "Bendy bus subcategory."),
    ("vehicle.bus.rigid", "Rigid bus subcategory."),
    ("vehicle.car", "Vehicle designed primarily for personal use."),
    ("vehicle.construction", "Vehicles primarily designed for construction."),
    ("vehicle.emergency.ambulance", "All types of ambulances."),
    ("vehicle.emergency.police", "All types of police vehicles."),
    ("vehicle.motorcycle", "Gasoline or electric powered 2-wheeled vehicle."),
    ("vehicle.trailer", "Any vehicle trailer."),
    ("vehicle.truck", "Vehicles primarily designed to haul cargo."),
)

ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("vehicle.moving", "Vehicle is moving."),
    ("vehicle.stopped", "Vehicle, with a driver/rider in/on it, is currently stationary."),
    ("vehicle.parked", "Vehicle is stationary (usually for longer duration) with no driver."),
    ("cycle.with_rider", "There is a rider on the bicycle or motorcycle."),
    ("cycle.without_rider", "There is NO rider on the bicycle or motorcycle."),
    ("pedestrian.sitting_lying_down", "The human is sitting or lying down."),
    ("pedestrian.standing", "The human is standing."),
    ("pedestrian.moving", "The human is moving."),
)

VISIBILITY: tuple[tuple[str, str, str], ...] = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
)

# A part is a cuboid in normalised box coordinates: x0, x1, y0, y1 in [-0.5, 0.5] (fractions
# of length and width), z0, z1 in [0, 1] (fractions of height from the bottom), then a
# material slot. Every part lies inside the unit box, so the GT box encloses the shape.
Part = tuple[float, float, float, float, float, float, str]

# Wheels as one dark cuboid per axle (two parts instead of four keep rendering cheap).
_WHEELS: tuple[Part, ...] = tuple(
    (x - 0.07, x + 0.07, -0.5, 0.5, 0.0, 0.24, "wheel") for x in (-0.32, 0.32)
)

SHAPES: dict[str, tuple[Part, ...]] = {
    "car": (
        (-0.5, 0.5, -0.49, 0.49, 0.17, 0.6, "body"),
        (-0.3, 0.22, -0.44, 0.44, 0.6, 1.0, "glass"),
        *_WHEELS,
    ),
    "van": (
        (-0.5, 0.5, -0.49, 0.49, 0.14, 0.62, "body"),
        (-0.5, 0.3, -0.47, 0.47, 0.62, 1.0, "glass"),
        *_WHEELS,
    ),
    "truck": (
        (0.22, 0.5, -0.48, 0.48, 0.14, 0.82, "cab"),
        (-0.5, 0.2, -0.5, 0.5, 0.14, 1.0, "body"),
        *_WHEELS,
    ),
    "bus": ((-0.5, 0.5, -0.5, 0.5, 0.1, 1.0, "body"), *_WHEELS),
    "trailer": (
        (-0.5, 0.42, -0.5, 0.5, 0.22, 1.0, "body"),
        (0.42, 0.5, -0.05, 0.05, 0.22, 0.3, "wheel"),
        _WHEELS[0],
    ),
    "construction_vehicle": (
        (-0.5, 0.12, -0.5, 0.5, 0.1, 0.55, "body"),
        (-0.25, 0.1, -0.4, 0.4, 0.55, 1.0, "glass"),
        (0.12, 0.5, -0.22, 0.22, 0.25, 0.7, "cab"),
        *_WHEELS,
    ),
    "pedestrian": (
        (-0.2, 0.2, -0.32, 0.32, 0.0, 0.47, "legs"),
        (-0.3, 0.3, -0.5, 0.5, 0.47, 0.85, "body"),
        (-0.22, 0.22, -0.24, 0.24, 0.87, 1.0, "skin"),
    ),
    "bicycle": (
        (-0.5, 0.5, -0.12, 0.12, 0.0, 0.55, "wheel"),
        (-0.1, 0.1, -0.5, 0.5, 0.5, 0.58, "body"),
    ),
    "bicycle_rider": (
        (-0.5, 0.5, -0.12, 0.12, 0.0, 0.38, "wheel"),
        (-0.18, 0.18, -0.45, 0.45, 0.38, 0.9, "body"),
        (-0.1, 0.1, -0.2, 0.2, 0.9, 1.0, "skin"),
    ),
    "motorcycle": (
        (-0.5, 0.5, -0.3, 0.3, 0.0, 0.6, "body"),
        (0.25, 0.4, -0.5, 0.5, 0.6, 0.75, "wheel"),
    ),
    "motorcycle_rider": (
        (-0.5, 0.5, -0.3, 0.3, 0.0, 0.45, "body"),
        (-0.22, 0.1, -0.5, 0.5, 0.45, 0.86, "legs"),
        (-0.15, 0.05, -0.2, 0.2, 0.86, 1.0, "skin"),
    ),
    "barrier": (
        (-0.5, 0.5, -0.5, 0.5, 0.0, 0.25, "body"),
        (-0.3, 0.3, -0.5, 0.5, 0.25, 1.0, "stripe"),
    ),
    "traffic_cone": (
        (-0.5, 0.5, -0.5, 0.5, 0.0, 0.06, "body"),
        (-0.32, 0.32, -0.32, 0.32, 0.06, 0.5, "stripe"),
        (-0.18, 0.18, -0.18, 0.18, 0.5, 1.0, "body"),
    ),
}


@dataclass(frozen=True)
class Kind:
    """One kind of object in the world.

    ``size``: mean (l, w, h) in metres; ``spread``: relative std of each. ``category``:
    nuScenes category name; ``detection``: the nuScenes detection class; ``kitti``: the KITTI
    label type; ``shape``: key of :data:`SHAPES`; ``palette``: body colours (RGB 0..1);
    ``reflectivity``: LiDAR albedo of its main material (0..1).
    """

    name: str
    category: str
    detection: str
    kitti: str
    size: tuple[float, float, float]
    spread: tuple[float, float, float]
    shape: str
    palette: tuple[tuple[float, float, float], ...]
    reflectivity: float


_CAR_COLOURS = (
    (0.92, 0.92, 0.9),
    (0.08, 0.08, 0.09),
    (0.6, 0.62, 0.64),
    (0.62, 0.08, 0.07),
    (0.1, 0.2, 0.5),
    (0.35, 0.36, 0.38),
    (0.75, 0.72, 0.62),
)
_CLOTHES = (
    (0.15, 0.2, 0.45),
    (0.6, 0.1, 0.1),
    (0.2, 0.2, 0.2),
    (0.85, 0.85, 0.8),
    (0.2, 0.45, 0.2),
    (0.9, 0.6, 0.1),
)

_TRUCK_COLOURS = ((0.9, 0.9, 0.88), (0.85, 0.4, 0.1), (0.15, 0.3, 0.6), (0.4, 0.4, 0.42))
_BUS_COLOURS = ((0.8, 0.15, 0.1), (0.92, 0.92, 0.9), (0.95, 0.75, 0.1))
_TRAILER_COLOURS = ((0.88, 0.88, 0.86), (0.5, 0.52, 0.55), (0.3, 0.35, 0.45))
_CYCLE_COLOURS = ((0.1, 0.1, 0.1), (0.7, 0.1, 0.1), (0.1, 0.35, 0.6))

# fmt: off
KINDS: dict[str, Kind] = {k.name: k for k in (
    #    name                    nuScenes category                      detection class         KITTI           size l, w, h         spread               shape                   palette            LiDAR
    Kind("car",                  "vehicle.car",                         "car",                  "Car",          (4.62, 1.95, 1.73),  (0.07, 0.05, 0.06),  "car",                  _CAR_COLOURS,      0.35),
    Kind("van",                  "vehicle.car",                         "car",                  "Van",          (5.1, 2.02, 2.1),    (0.06, 0.04, 0.05),  "van",                  _CAR_COLOURS,      0.35),
    Kind("truck",                "vehicle.truck",                       "truck",                "Truck",        (6.93, 2.51, 2.84),  (0.2, 0.08, 0.12),   "truck",                _TRUCK_COLOURS,    0.4),
    Kind("bus",                  "vehicle.bus.rigid",                   "bus",                  "Misc",         (10.5, 2.94, 3.47),  (0.15, 0.04, 0.06),  "bus",                  _BUS_COLOURS,      0.4),
    Kind("trailer",              "vehicle.trailer",                     "trailer",              "Misc",         (12.29, 2.9, 3.87),  (0.2, 0.05, 0.1),    "trailer",              _TRAILER_COLOURS,  0.45),
    Kind("construction_vehicle", "vehicle.construction",                "construction_vehicle", "Misc",         (6.37, 2.73, 3.19),  (0.2, 0.1, 0.12),    "construction_vehicle", ((0.95, 0.7, 0.05), (0.9, 0.5, 0.05)), 0.45),
    Kind("pedestrian",           "human.pedestrian.adult",              "pedestrian",           "Pedestrian",   (0.73, 0.67, 1.77),  (0.12, 0.12, 0.06),  "pedestrian",           _CLOTHES,          0.25),
    Kind("child",                "human.pedestrian.child",              "pedestrian",           "Pedestrian",   (0.5, 0.5, 1.25),    (0.12, 0.12, 0.1),   "pedestrian",           _CLOTHES,          0.25),
    Kind("worker",               "human.pedestrian.construction_worker", "pedestrian",          "Pedestrian",   (0.75, 0.7, 1.8),    (0.1, 0.1, 0.05),    "pedestrian",           ((1.0, 0.55, 0.05), (0.85, 0.95, 0.15)), 0.6),
    Kind("sitting",              "human.pedestrian.adult",              "pedestrian",           "Person_sitting", (0.8, 0.65, 1.25), (0.1, 0.1, 0.08),    "pedestrian",           _CLOTHES,          0.25),
    Kind("bicycle",              "vehicle.bicycle",                     "bicycle",              "Misc",         (1.7, 0.6, 1.05),    (0.06, 0.1, 0.06),   "bicycle",              _CYCLE_COLOURS,    0.3),
    Kind("cyclist",              "vehicle.bicycle",                     "bicycle",              "Cyclist",      (1.75, 0.65, 1.72),  (0.06, 0.1, 0.05),   "bicycle_rider",        _CLOTHES,          0.3),
    Kind("motorcycle",           "vehicle.motorcycle",                  "motorcycle",           "Misc",         (2.11, 0.77, 1.2),   (0.08, 0.1, 0.07),   "motorcycle",           ((0.1, 0.1, 0.1), (0.7, 0.1, 0.1), (0.85, 0.85, 0.85)), 0.4),
    Kind("motorcyclist",         "vehicle.motorcycle",                  "motorcycle",           "Cyclist",      (2.15, 0.8, 1.6),    (0.08, 0.1, 0.05),   "motorcycle_rider",     ((0.1, 0.1, 0.1), (0.7, 0.1, 0.1), (0.15, 0.2, 0.45)), 0.4),
    Kind("barrier",              "movable_object.barrier",              "barrier",              "Misc",         (0.48, 2.49, 0.98),  (0.15, 0.12, 0.08),  "barrier",              ((0.75, 0.75, 0.72), (0.9, 0.9, 0.9)), 0.55),
    Kind("traffic_cone",         "movable_object.trafficcone",          "traffic_cone",         "Misc",         (0.41, 0.41, 1.07),  (0.12, 0.12, 0.1),   "traffic_cone",         ((1.0, 0.35, 0.02), (1.0, 0.45, 0.05)), 0.7),
)}
# fmt: on


def attribute_for(kind: Kind, moving: bool, parked: bool) -> str | None:
    """The nuScenes attribute name consistent with the class and motion state."""
    det = kind.detection
    if det in ("barrier", "traffic_cone"):
        return None
    if det == "pedestrian":
        if kind.name == "sitting":
            return "pedestrian.sitting_lying_down"
        return "pedestrian.moving" if moving else "pedestrian.standing"
    if det in ("bicycle", "motorcycle"):
        return "cycle.with_rider" if kind.shape.endswith("_rider") else "cycle.without_rider"
    if moving:
        return "vehicle.moving"
    return "vehicle.parked" if parked else "vehicle.stopped"
