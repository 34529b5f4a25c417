"""CLEVR-like scenes with exact instance masks, ray cast in NumPy (no Blender, no GPU).

CLEVR's recipe (``render_images.py``, ``properties.json``): spheres, cubes and cylinders of
half-size 0.35 or 0.7, eight colours, rubber or metal, turned about the vertical, on the ground
at ``x, y`` uniform in ``[-3, 3]``, 0.25 apart between footprints (the footprint radius, so
turned cubes never interpenetrate) and 0.4 along the camera's left and behind directions; 50
tries per object, then the layout is redrawn, also until every object owns 200 mask pixels at
320x240 (scaled with the area). CLEVR's camera and key, fill and back lights, jittered by up to
0.5 and 1 per axis (the camera re-aimed at the origin).

Rendering is plain: one ray per pixel centre (exact masks), Lambert shading plus ambient, the
key light's hard shadow, a Blinn-Phong highlight on metal, a gamma curve; no soft shadows,
reflections or antialiasing, which no metric, mask or factor needs. Labels: 0 ground, 1..N the
objects in placement order; factors as the official file (:func:`scene_factors`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

SHAPES = ("sphere", "cube", "cylinder")
SIZES = ("small", "large")
SIZE_VALUES = (0.35, 0.7)  # half-size in world units, CLEVR's properties.json
# gray, red, blue, green, brown, purple, cyan, yellow (sRGB)
COLORS = tuple(
    tuple(bytes.fromhex(h))
    for h in "575757 ad2323 2a4bd7 1d6914 814a19 8126c0 29d0d0 ffee33".split()
)
MATERIALS = ("rubber", "metal")
HEIGHT, WIDTH = 240, 320
MIN_PIXELS = 200  # CLEVR's --min_pixels_per_object, at 320x240
PLACEMENT_EXTENT = 3.0
MIN_DIST, MARGIN = 0.25, 0.4
MAX_RETRIES = 50  # tries per object before the layout is drawn again
# Layouts attempted together: a few at first, doubling up to 64 while they keep failing
# (10-object layouts fail about 30 times in 31).
FIRST_LAYOUT_BATCH, LAYOUT_BATCH = 4, 64
MAX_LAYOUTS = 10_000  # an error rather than an endless loop on impossible settings
SQRT2, SQRT3 = 2.0**0.5, 3.0**0.5
CAMERA_POSITION = (7.48113, -6.50764, 5.34367)
T_EPS = 1e-4  # hits nearer than this are ignored: a shadow ray must not re-hit its surface
# Shading (linear RGB), tuned by eye: a mid-grey ground, no pure black.
GROUND_ALBEDO, AMBIENT, SKY, EXPOSURE = 0.5, 0.2, 0.5, 0.45
METAL_DIFFUSE, METAL_SPECULAR, METAL_SHININESS = 0.6, 1.0, 64
# Linear albedos of CLEVR's (sRGB) colours.
LINEAR_COLORS = (np.asarray(COLORS, np.float32) / 255.0) ** 2.2

# CLEVR's key (shadowing), fill and back lights in base_scene.blend: position, tint,
# intensity, shadow.
LIGHTS = (
    ((6.44671, -2.90517, 4.2584), (1.0, 0.929, 0.816), 1.0, True),
    ((-4.67112, -4.0136, 3.01122), (0.761, 0.816, 1.0), 0.25, False),
    ((-1.1685, 2.64602, 5.81574), (1.0, 1.0, 1.0), 0.3, False),
)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera at ``position`` looking at ``look_at``, horizon level; the defaults are
    CLEVR's (sensor width fitted to the image width: ``f_px = width * 35 / 32``)."""

    position: tuple[float, float, float] = CAMERA_POSITION
    look_at: tuple[float, float, float] = (0.0, 0.0, 0.0)
    focal_length: float = 35.0
    sensor_width: float = 32.0

    def basis(self) -> np.ndarray:
        """(3, 3) float64 rows ``right``, ``up``, ``forward``; looking straight down, +y is up."""
        return self._basis

    @cached_property
    def _basis(self) -> np.ndarray:
        forward = np.asarray(self.look_at, np.float64) - np.asarray(self.position, np.float64)
        forward /= np.linalg.norm(forward)
        world_up = np.array([0.0, 0.0, 1.0])
        if abs(forward @ world_up) > 1.0 - 1e-9:
            world_up = np.array([0.0, 1.0, 0.0])
        right = np.cross(forward, world_up)
        right /= np.linalg.norm(right)
        return np.stack([right, np.cross(right, forward), forward])

    def focal_pixels(self, width: int) -> float:
        return width * self.focal_length / self.sensor_width

    def rays(self, rows: np.ndarray, cols: np.ndarray, height: int, width: int) -> tuple:
        """Rays ``(ox, oy, oz, dx, dy, dz)`` through image positions (broadcast ``rows``, ``cols``;
        row 0 the top edge, pixel centres at half-integers): the camera centre as floats, float32
        unit directions."""
        right, up, forward = (row.tolist() for row in self.basis())
        f = self.focal_pixels(width)
        # float32 throughout: Python-float coefficients keep NumPy from promoting.
        u = (np.asarray(cols, np.float32) - width / 2.0) * (1.0 / f)
        v = (height / 2.0 - np.asarray(rows, np.float32)) * (1.0 / f)
        inv_norm = 1.0 / np.sqrt(u * u + v * v + 1.0)
        dirs = [(u * right[k] + v * up[k] + forward[k]) * inv_norm for k in range(3)]
        return (*(float(c) for c in self.position), *dirs)

    def pixel_rays(self, height: int, width: int) -> tuple:
        """Rays through every pixel centre, directions (height, width)."""
        rows = np.arange(height, dtype=np.float32)[:, None] + 0.5
        return self.rays(rows, np.arange(width, dtype=np.float32)[None, :] + 0.5, height, width)

    def project(self, points: np.ndarray, height: int, width: int) -> np.ndarray:
        """(..., 3) world points -> (..., 3) float64 column, row (as :meth:`rays`) and depth."""
        local = (np.asarray(points, np.float64) - np.asarray(self.position)) @ self.basis().T
        f = self.focal_pixels(width)
        depth = local[..., 2]
        x = width / 2.0 + f * local[..., 0] / depth
        y = height / 2.0 - f * local[..., 1] / depth
        return np.stack([x, y, depth], axis=-1)


class Light(NamedTuple):
    """A point light: position, linear RGB tint, intensity, whether it casts a hard shadow."""

    position: tuple[float, float, float]
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    intensity: float = 1.0
    shadow: bool = False


@dataclass(frozen=True)
class SceneObject:
    """One object: indices into SHAPES, SIZES, COLORS, MATERIALS; centre (z = half size on the
    ground); rotation about the vertical axis in degrees."""

    shape: int
    size: int
    color: int
    material: int
    position: tuple[float, float, float]
    rotation: float = 0.0

    @property
    def half_size(self) -> float:
        return SIZE_VALUES[self.size]

    @property
    def bounding_radius(self) -> float:
        return self.half_size * (1.0, SQRT3, SQRT2)[self.shape]


class Scene(NamedTuple):
    objects: tuple[SceneObject, ...]
    camera: Camera
    lights: tuple[Light, ...]
    # The accepted layout's trace (hit distance, object id per pixel) at the sampled size,
    # which render_scene reuses instead of tracing the same rays again.
    trace: tuple[np.ndarray, np.ndarray] | None = None


def _jittered(rng: np.random.Generator, point, amount: float) -> tuple[float, ...]:
    # CLEVR's rand(L): uniform in [-L, L] per axis.
    offset = rng.uniform(-amount, amount, size=3) if amount else np.zeros(3)
    return tuple(float(v) for v in np.asarray(point) + offset)


def min_pixels_for(height: int, width: int) -> int:
    """CLEVR's 200-pixel visibility threshold at 320x240, scaled with the image area."""
    return max(1, round(MIN_PIXELS * height * width / (HEIGHT * WIDTH)))


# ----------------------------------------------------------------------------------------
# Ray casting. Intersections take rays in the primitive's local frame; a miss is t = inf.


def _cos_sin(degrees: float) -> tuple[float, float]:
    a = np.deg2rad(degrees)
    return float(np.cos(a)), float(np.sin(a))


def to_local(rays: tuple, center, degrees: float | None = None) -> tuple:
    """World rays in the frame of a primitive centred at ``center`` and turned by ``degrees``
    (counter-clockwise seen from above) about the vertical axis; None skips the rotation."""
    ox, oy, oz, dx, dy, dz = rays
    # Python floats: NumPy float64 scalars would promote float32 rays.
    cx, cy, cz = (float(v) for v in center)
    px, py, pz = ox - cx, oy - cy, oz - cz
    if degrees is None:
        return px, py, pz, dx, dy, dz
    c, s = _cos_sin(degrees)
    return (c * px + s * py, c * py - s * px, pz, c * dx + s * dy, c * dy - s * dx, dz)


def intersect_sphere(rays: tuple, radius: float) -> np.ndarray:
    """Distance to a sphere about the origin (unit directions, origins outside it)."""
    ox, oy, oz, dx, dy, dz = rays
    b = ox * dx + oy * dy + oz * dz
    c = ox * ox + oy * oy + oz * oz - radius * radius
    disc = b * b - c
    with np.errstate(invalid="ignore"):
        t = -b - np.sqrt(disc)
    return np.where((disc >= 0) & (t > T_EPS), t, np.inf)


def intersect_box(rays: tuple, half: float) -> np.ndarray:
    """Distance to the cube ``[-half, half]^3`` (slab method)."""
    tmin = np.full(np.shape(rays[3]), -np.inf, np.float32)
    tmax = np.full(np.shape(rays[3]), np.inf, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        for o, d in zip(rays[:3], rays[3:]):
            inv = 1.0 / d
            t1 = (-half - o) * inv
            t2 = (half - o) * inv
            # fmin/fmax drop the NaN of 0 * inf (a ray in a slab's boundary plane).
            tmin = np.fmax(tmin, np.fmin(t1, t2))
            tmax = np.fmin(tmax, np.fmax(t1, t2))
    return np.where((tmax >= tmin) & (tmin > T_EPS), tmin, np.inf)


def intersect_cylinder(rays: tuple, radius: float, half_height: float) -> np.ndarray:
    """Distance to a closed cylinder about the z axis, ``|z| <= half_height``."""
    ox, oy, oz, dx, dy, dz = rays
    a = dx * dx + dy * dy
    b = ox * dx + oy * dy
    c = ox * ox + oy * oy - radius * radius
    disc = b * b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(disc)) / a
        side_ok = (disc >= 0) & (t_side > T_EPS) & (np.abs(oz + t_side * dz) <= half_height)
        t_side = np.where(side_ok, t_side, np.inf)
        # A ray enters through the cap that faces it: the top one when travelling down.
        t_cap = (np.where(dz < 0, half_height, -half_height) - oz) / dz
        cx, cy = ox + t_cap * dx, oy + t_cap * dy
        cap_ok = (t_cap > T_EPS) & (cx * cx + cy * cy <= radius * radius)
    return np.minimum(t_side, np.where(cap_ok, t_cap, np.inf))


def local_normals(shape: int, px, py, pz, r: float) -> tuple:
    """Outward unit normals at local surface points of a sphere, cube or cylinder (``r`` =
    half size); a cube's face is that of the largest |coordinate|."""
    if SHAPES[shape] == "sphere":
        return px / r, py / r, pz / r
    if SHAPES[shape] == "cube":
        ax, ay, az = np.abs(px), np.abs(py), np.abs(pz)
        on_x = (ax >= ay) & (ax >= az)
        on_y = ~on_x & (ay >= az)
        return np.sign(px) * on_x, np.sign(py) * on_y, np.sign(pz) * (~on_x & ~on_y)
    # A cylinder point is on a cap when nearer the cap plane than the side (radius = height).
    cap = r - np.abs(pz) < r - np.sqrt(px * px + py * py)
    return np.where(cap, 0.0, px / r), np.where(cap, 0.0, py / r), np.where(cap, np.sign(pz), 0.0)


def _intersect(rays: tuple, obj: SceneObject) -> np.ndarray:
    r, center = obj.half_size, obj.position
    if SHAPES[obj.shape] == "sphere":
        return intersect_sphere(to_local(rays, center, None), r)
    if SHAPES[obj.shape] == "cylinder":
        return intersect_cylinder(to_local(rays, center, None), r, r)
    return intersect_box(to_local(rays, center, obj.rotation), r)


def _trace(rays: tuple, objects: Sequence[SceneObject], camera: Camera) -> tuple:
    """Nearest hit of the pixel rays: ``t`` (H, W) float32 (inf: escapes) and ``ids`` (H, W)
    int32 (0 ground, k object k; the earlier object wins a tie). Each object is tested only
    with the rays in the screen box of its bounding cube (one pixel of slack)."""
    oz, dz = rays[2], rays[5]
    height, width = dz.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -oz / dz
    t = np.where((dz < 0) & (t > T_EPS), t, np.inf).astype(np.float32)
    ids = np.zeros(t.shape, np.int32)
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    for k, obj in enumerate(objects, start=1):
        proj = camera.project(np.asarray(obj.position) + obj.bounding_radius * corners, *t.shape)
        box = (slice(None), slice(None))  # the whole frame when a corner is behind the camera
        if (proj[:, 2] > 1e-3).all():
            lo = np.clip(np.floor(proj[:, :2].min(axis=0)) - 1, 0, [width, height]).astype(int)
            hi = np.clip(np.ceil(proj[:, :2].max(axis=0)) + 1, 0, [width, height]).astype(int)
            box = (slice(lo[1], hi[1]), slice(lo[0], hi[0]))
        t_obj = _intersect(tuple(a if np.ndim(a) == 0 else a[box] for a in rays), obj)
        closer = t_obj < t[box]
        t[box][closer] = t_obj[closer]
        ids[box][closer] = k
    return t, ids


# ----------------------------------------------------------------------------------------
# Shading


def _shadowed(points: tuple, ids: np.ndarray, light: Light, objects) -> np.ndarray:
    """(P,) bool: the segment from each surface point to the light hits another object."""
    px, py, pz = points
    lx, ly, lz = (float(c) - p for c, p in zip(light.position, points))
    dist = np.sqrt(lx * lx + ly * ly + lz * lz)
    lx, ly, lz = lx / dist, ly / dist, lz / dist
    blocked = np.zeros(px.shape, bool)
    for k, obj in enumerate(objects, start=1):
        wx, wy, wz = (float(c) - p for c, p in zip(obj.position, points))
        along = wx * lx + wy * ly + wz * lz
        r = obj.bounding_radius
        # Only rays passing through the object's bounding sphere are traced.
        near = (wx * wx + wy * wy + wz * wz - along * along < r * r) & (along > -r) & (ids != k)
        sel = np.flatnonzero(near)
        rays = tuple(a[sel] for a in (px, py, pz, lx, ly, lz))
        blocked[sel] |= _intersect(rays, obj) < dist[sel]
    return blocked


def render_scene(
    objects: Sequence[SceneObject],
    camera: Camera,
    lights: Sequence[Light],
    trace: tuple[np.ndarray, np.ndarray] | None = None,
    height: int = HEIGHT,
    width: int = WIDTH,
) -> tuple[np.ndarray, np.ndarray]:
    """Render a scene, one ray per pixel centre: ``image`` (H, W, 3) float32 in [0, 1] and
    ``mask`` (H, W) uint8, objects labelled 1..N in order (N <= 255). ``trace``: the scene's
    own (``Scene.trace``, traced at this size), or None to trace here."""
    if len(objects) > 255:
        raise ValueError(f"at most 255 objects fit a uint8 label map, got {len(objects)}")
    rays = camera.pixel_rays(height, width)
    t, ids = _trace(rays, objects, camera) if trace is None else trace
    hit = np.flatnonzero(np.isfinite(t))
    flat_ids = ids.ravel()[hit]
    dirs = tuple(d.ravel()[hit] for d in rays[3:])
    points = tuple(o + t.ravel()[hit] * d for o, d in zip(rays[:3], dirs))
    normals = [np.zeros(hit.size, np.float32), np.zeros(hit.size, np.float32)]
    normals.append(np.ones(hit.size, np.float32))  # the ground's
    albedo = np.full((hit.size, 3), GROUND_ALBEDO, np.float32)
    metal = np.zeros(hit.size, bool)
    for k, obj in enumerate(objects, start=1):
        on = flat_ids == k
        turn = obj.rotation if SHAPES[obj.shape] == "cube" else None
        local = to_local((*(p[on] for p in points), 0.0, 0.0, 0.0), obj.position, turn)[:3]
        nx, ny, nz = local_normals(obj.shape, *local, obj.half_size)
        c, s = (1.0, 0.0) if turn is None else _cos_sin(turn)
        normals[0][on], normals[1][on], normals[2][on] = c * nx - s * ny, s * nx + c * ny, nz
        albedo[on] = LINEAR_COLORS[obj.color]
        metal[on] = MATERIALS[obj.material] == "metal"
    diffuse = np.full((hit.size, 3), AMBIENT, np.float32)
    specular = np.zeros((hit.size, 3), np.float32)
    for light in lights:
        to_light = [float(c) - p for c, p in zip(light.position, points)]
        norm = np.sqrt(sum(a * a for a in to_light))
        to_light = [a / norm for a in to_light]
        cos = np.maximum(sum(n * a for n, a in zip(normals, to_light)), 0.0) * light.intensity
        if light.shadow and objects:
            cos[_shadowed(points, flat_ids, light, objects)] = 0.0
        tint = np.asarray(light.color, np.float32)
        diffuse += cos[:, None] * tint
        half = [a - d for a, d in zip(to_light, dirs)]  # Blinn-Phong half vector (unnormalised)
        cos_h = sum(n * a for n, a in zip(normals, half)) / np.sqrt(sum(a * a for a in half))
        specular += ((cos > 0) * np.maximum(cos_h, 0.0) ** METAL_SHININESS)[:, None] * tint
    shaded = albedo * diffuse
    shaded[metal] = (
        METAL_DIFFUSE * shaded[metal]
        + METAL_SPECULAR * (0.5 + 0.5 * albedo[metal]) * specular[metal]
    )
    color = np.full((height * width, 3), SKY, np.float32)
    color[hit] = shaded
    image = np.clip(color * EXPOSURE, 0.0, 1.0) ** (1 / 2.2)
    return image.reshape(height, width, 3).astype(np.float32), ids.astype(np.uint8)


# ----------------------------------------------------------------------------------------
# Scene sampling


def _place_objects(
    rng: np.random.Generator, n: int, camera: Camera, batch: int
) -> Iterator[list[SceneObject]]:
    """CLEVR's sequential placement for ``batch`` independent layouts at once (vectorised).

    Object by object, each layout takes the first of ``MAX_RETRIES`` candidate positions that
    keeps the distance and margin rules; a layout where some object finds none is dropped.
    Every random number is drawn before the first layout is yielded, so how many a caller
    consumes does not change the stream.
    """
    sizes = rng.integers(len(SIZES), size=(batch, n))
    shapes = rng.integers(len(SHAPES), size=(batch, n))
    half = np.asarray(SIZE_VALUES)[sizes]
    foot = half * np.where(shapes == SHAPES.index("cube"), SQRT2, 1.0)
    cand = rng.uniform(-PLACEMENT_EXTENT, PLACEMENT_EXTENT, size=(batch, n, MAX_RETRIES, 2))
    # CLEVR's "0 < offset < margin along left, right, front and behind" is "0 < |offset| <
    # margin along left and along behind" (the camera's axes flattened onto the ground).
    right, _, forward = camera.basis()
    axes = [v[:2] / np.linalg.norm(v[:2]) for v in (-right, forward)]
    (lx, ly), (bx, by) = (a.tolist() for a in axes)
    xy = np.zeros((batch, n, 2))
    alive = np.ones(batch, bool)
    for i in range(n):
        dx = cand[:, i, :, None, 0] - xy[:, None, :i, 0]  # (batch, tries, i)
        dy = cand[:, i, :, None, 1] - xy[:, None, :i, 1]
        bad = np.hypot(dx, dy) - foot[:, i, None, None] - foot[:, None, :i] < MIN_DIST
        for a in (np.abs(dx * lx + dy * ly), np.abs(dx * bx + dy * by)):
            bad |= (a > 0) & (a < MARGIN)
        ok = ~bad.any(axis=-1)  # (batch, tries)
        alive &= ok.any(axis=1)
        xy[:, i] = cand[np.arange(batch), i, np.argmax(ok, axis=1)]
    colors = rng.integers(len(COLORS), size=(batch, n))
    materials = rng.integers(len(MATERIALS), size=(batch, n))
    rotations = rng.uniform(0.0, 360.0, size=(batch, n))
    for b in np.flatnonzero(alive):
        codes = [[int(a[b, i]) for a in (shapes, sizes, colors, materials)] for i in range(n)]
        positions = [(*xy[b, i].tolist(), float(half[b, i])) for i in range(n)]
        yield [SceneObject(*codes[i], positions[i], float(rotations[b, i])) for i in range(n)]


def sample_scene(
    rng: np.random.Generator,
    num_objects: int,
    height: int = HEIGHT,
    width: int = WIDTH,
    min_pixels: int | None = None,
    camera_jitter: float = 0.5,
) -> Scene:
    """Draw a scene of ``num_objects`` (0..255) with ``rng``, as the module docstring says:
    jittered camera and lights, then layouts until each object owns ``min_pixels`` (None:
    :func:`min_pixels_for`) pixels of the mask at ``height`` x ``width``. RuntimeError when
    ``MAX_LAYOUTS`` layouts fail."""
    if not 0 <= num_objects <= 255:
        raise ValueError(f"num_objects must be in 0..255, got {num_objects}")
    min_pixels = min_pixels_for(height, width) if min_pixels is None else min_pixels
    camera = Camera(_jittered(rng, CAMERA_POSITION, camera_jitter))
    lights = tuple(Light(_jittered(rng, pos, 1.0), *rest) for pos, *rest in LIGHTS)
    rays = camera.pixel_rays(height, width)
    batch, attempts = FIRST_LAYOUT_BATCH, 0
    while attempts < MAX_LAYOUTS:
        attempts += batch
        layouts = _place_objects(rng, num_objects, camera, batch)
        batch = min(2 * batch, LAYOUT_BATCH)
        for objects in layouts:
            trace = _trace(rays, objects, camera)
            counts = np.bincount(trace[1].ravel(), minlength=num_objects + 1)
            if num_objects == 0 or counts[1:].min() >= min_pixels:
                return Scene(tuple(objects), camera, lights, trace)
    raise RuntimeError(f"no valid layout of {num_objects} objects in {MAX_LAYOUTS} attempts")


def scene_factors(
    scene: Scene, max_objects: int, height: int = HEIGHT, width: int = WIDTH
) -> dict[str, np.ndarray]:
    """Factors in the official layout, E = max_objects + 1 entries: ``shape``, ``size``,
    ``color``, ``material`` (E,) int64 indices (-1: background, padding); ``x``, ``y``, ``z``,
    ``rotation`` (degrees) (E,) float32; ``pixel_coords`` (E, 3) float32 projected column, row
    and depth; ``visibility`` (E,) float32, 1 for the background and each object."""
    objects = scene.objects
    if len(objects) > max_objects:
        raise ValueError(f"{len(objects)} objects exceed max_objects={max_objects}")
    e = max_objects + 1
    out = {key: np.full(e, -1, np.int64) for key in ("shape", "size", "color", "material")}
    for key in ("x", "y", "z", "rotation", "visibility"):
        out[key] = np.zeros(e, np.float32)
    out["pixel_coords"] = np.zeros((e, 3), np.float32)
    out["visibility"][: len(objects) + 1] = 1.0
    for k, obj in enumerate(objects, start=1):
        out["shape"][k], out["size"][k] = obj.shape, obj.size
        out["color"][k], out["material"][k] = obj.color, obj.material
        out["x"][k], out["y"][k], out["z"][k] = obj.position
        out["rotation"][k] = obj.rotation
    if objects:
        centres = np.array([o.position for o in objects])
        out["pixel_coords"][1 : len(objects) + 1] = scene.camera.project(centres, height, width)
    return out


def generate(
    num_examples: int,
    seed: int,
    min_objects: int = 3,
    max_objects: int = 6,
    start: int = 0,
    height: int = HEIGHT,
    width: int = WIDTH,
    min_pixels: int | None = None,
    camera_jitter: float = 0.5,
) -> Iterator[dict]:
    """Yield examples ``start .. start + num_examples - 1``, example i from
    ``SeedSequence([seed, i])`` alone, with a uniform object count in ``[min_objects,
    max_objects]``: ``image`` (H, W, 3) uint8, ``mask`` (H, W) uint8, ``factors``
    (:func:`scene_factors`). ``min_pixels``, ``camera_jitter``: see :func:`sample_scene`."""
    if not 0 <= min_objects <= max_objects <= 255:
        raise ValueError(
            f"need 0 <= min_objects <= max_objects <= 255, got {min_objects}, {max_objects}"
        )
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    for i in range(start, start + num_examples):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        n = int(rng.integers(min_objects, max_objects + 1))
        scene = sample_scene(rng, n, height, width, min_pixels, camera_jitter)
        image, mask = render_scene(*scene, height=height, width=width)
        yield {
            "image": np.round(image * 255.0).astype(np.uint8),
            "mask": mask,
            "factors": scene_factors(scene, max_objects, height, width),
        }
