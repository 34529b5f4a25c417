"""Tests of the CLEVR-like ray-cast generator (lib/prepare/generators/clevr.py).

Geometry is checked against independent computations: the camera against values worked out
by hand, intersections against hand-solved cases and a per-ray loop over every candidate
surface, silhouettes against the analytic projection of a sphere (a disc on the optical axis,
an ellipse off it) and of a cube or cylinder seen from straight above, per-pixel labels against
a float64 ray-sphere test, non-intersection against a dense sampling of the footprints.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lib.prepare.generators.clevr import (
    COLORS,
    MATERIALS,
    SHAPES,
    SIZE_VALUES,
    SIZES,
    Camera,
    Light,
    Scene,
    SceneObject,
    generate,
    intersect_box,
    intersect_cylinder,
    intersect_sphere,
    local_normals,
    min_pixels_for,
    render_scene,
    sample_scene,
    scene_factors,
    to_local,
)

H, W = 240, 320
F_PX = W * 35.0 / 32.0  # CLEVR's 35 mm lens on a 32 mm sensor, sensor width -> image width
SPHERE, CUBE, CYLINDER = SHAPES.index("sphere"), SHAPES.index("cube"), SHAPES.index("cylinder")
LARGE = SIZES.index("large")
ONE_LIGHT = (Light((6.0, -3.0, 6.0), shadow=True),)


@pytest.fixture(scope="module")
def clevr6():
    """Twelve default examples (3 to 6 objects), shared by several tests."""
    return list(generate(12, seed=123))


def _pinhole_rays(camera_pos, look_at, height=H, width=W):
    """Independent float64 pinhole model: unit ray directions (H, W, 3) through pixel centres."""
    pos, target = np.asarray(camera_pos, float), np.asarray(look_at, float)
    forward = (target - pos) / np.linalg.norm(target - pos)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    f = width * 35.0 / 32.0
    j, i = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    d = forward + ((j - width / 2) / f)[..., None] * right + ((height / 2 - i) / f)[..., None] * up
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------
# The dataset interface


def test_example_layout(clevr6):
    max_objects = 6
    for ex in clevr6:
        assert ex["image"].shape == (H, W, 3) and ex["image"].dtype == np.uint8
        assert ex["mask"].shape == (H, W) and ex["mask"].dtype == np.uint8
        f = ex["factors"]
        e = max_objects + 1
        for key in ("shape", "size", "color", "material", "x", "y", "z", "rotation", "visibility"):
            assert f[key].shape == (e,), key
        assert f["pixel_coords"].shape == (e, 3)
        n = int(f["visibility"].sum()) - 1  # background counts as visible
        assert f["visibility"][0] == 1 and np.all(f["visibility"][: n + 1] == 1)
        assert np.all(f["visibility"][n + 1 :] == 0)
        # Categorical codes of real objects are valid, background and padding are -1.
        for key, names in (
            ("shape", SHAPES),
            ("size", SIZES),
            ("color", COLORS),
            ("material", MATERIALS),
        ):
            assert np.all((f[key][1 : n + 1] >= 0) & (f[key][1 : n + 1] < len(names))), key
            assert f[key][0] == -1 and np.all(f[key][n + 1 :] == -1), key
        # Objects rest on the ground: centre height = half size.
        half = np.asarray(SIZE_VALUES)[f["size"][1 : n + 1]]
        np.testing.assert_allclose(f["z"][1 : n + 1], half, rtol=1e-6)
        assert np.all((f["rotation"][1 : n + 1] >= 0) & (f["rotation"][1 : n + 1] < 360))
        assert np.all(np.abs(f["x"][1 : n + 1]) <= 3) and np.all(np.abs(f["y"][1 : n + 1]) <= 3)


def test_masks_partition_and_visible_area(clevr6):
    min_pixels = min_pixels_for(H, W)
    assert min_pixels == 200  # CLEVR's --min_pixels_per_object at 320x240
    for ex in clevr6:
        n = int(ex["factors"]["visibility"].sum()) - 1
        counts = np.bincount(ex["mask"].ravel(), minlength=256)
        # One label per pixel, all in 0..N: the label histogram covers the image exactly.
        assert counts.sum() == H * W
        assert np.all(counts[n + 1 :] == 0)
        assert counts[0] > 0  # the ground is visible
        assert np.all(counts[1 : n + 1] >= min_pixels), counts[: n + 1]


def test_pixel_coords_match_mask_centroid():
    # A lone sphere away from the image centre: the silhouette (an ellipse, nearly a disc)
    # is centred within a pixel of the projected sphere centre.
    rng = np.random.default_rng(0)
    scene = sample_scene(rng, 1, camera_jitter=0.0)
    sphere = SceneObject(SPHERE, LARGE, 1, 0, (1.5, -1.0, 0.7))
    _, mask = render_scene([sphere], scene.camera, scene.lights)
    coords = scene_factors(Scene((sphere,), scene.camera, scene.lights), 1)["pixel_coords"][1]
    rows, cols = np.nonzero(mask == 1)
    assert abs(cols.mean() + 0.5 - coords[0]) < 1.0  # x = column (pixel centres at +0.5)
    assert abs(rows.mean() + 0.5 - coords[1]) < 1.0  # y = row, downwards
    forward = np.asarray(scene.camera.look_at) - np.asarray(scene.camera.position)
    depth = (
        (np.asarray(sphere.position) - scene.camera.position) @ forward / np.linalg.norm(forward)
    )
    assert coords[2] == pytest.approx(depth, rel=1e-5)


def test_object_counts_cover_range():
    counts6 = [
        int(ex["factors"]["visibility"].sum()) - 1
        for ex in generate(24, seed=7, height=60, width=80)
    ]
    assert min(counts6) == 3 and max(counts6) == 6
    kw = dict(height=60, width=80)
    counts10 = [
        int(ex["factors"]["visibility"].sum()) - 1
        for ex in generate(40, seed=8, min_objects=3, max_objects=10, **kw)
    ]
    assert set(counts10) <= set(range(3, 11))
    assert min(counts10) == 3 and max(counts10) == 10
    assert len(set(counts10)) >= 6  # roughly uniform, not stuck on a few values


def test_determinism():
    a = list(generate(3, seed=5))
    b = list(generate(3, seed=5))
    for x, y in zip(a, b):
        assert x["image"].tobytes() == y["image"].tobytes()
        assert x["mask"].tobytes() == y["mask"].tobytes()
        for key in x["factors"]:
            assert x["factors"][key].tobytes() == y["factors"][key].tobytes()
    # Example i depends on (seed, i) only: a shorter run is a prefix.
    c = list(generate(2, seed=5))
    assert all(x["image"].tobytes() == y["image"].tobytes() for x, y in zip(a, c))
    d = list(generate(3, seed=6))
    assert all(x["image"].tobytes() != y["image"].tobytes() for x, y in zip(a, d))


def test_unknown_option_rejected():
    with pytest.raises(TypeError):
        next(generate(1, seed=0, colour="red"))


# ----------------------------------------------------------------------------------------
# Geometry against analytic projections


def _lone_render(obj, camera):
    image, mask = render_scene([obj], camera, ONE_LIGHT)
    assert image.shape == (H, W, 3) and image.dtype == np.float32
    assert image.min() >= 0 and image.max() <= 1
    assert set(np.unique(mask)) <= {0, 1}
    return mask


def test_sphere_on_axis_is_disc_of_analytic_radius():
    r, centre = 0.7, np.array([0.0, 0.0, 0.7])
    cam_pos = np.array([7.48, -6.51, 5.34])
    d = np.linalg.norm(cam_pos - centre)
    mask = _lone_render(
        SceneObject(SPHERE, LARGE, 2, 0, tuple(centre)), Camera(tuple(cam_pos), tuple(centre))
    )
    radius_px = F_PX * math.tan(math.asin(r / d))
    area = (mask == 1).sum()
    assert area == pytest.approx(math.pi * radius_px**2, rel=0.02)
    # Centred on the image centre.
    rows, cols = np.nonzero(mask)
    assert abs(rows.mean() + 0.5 - H / 2) < 0.5 and abs(cols.mean() + 0.5 - W / 2) < 0.5


@pytest.mark.parametrize("centre", [(2.5, 1.5, 0.35), (-2.0, -2.5, 0.7), (0.5, 2.8, 0.7)])
def test_sphere_off_axis_is_ellipse_of_analytic_area(centre):
    r = centre[2]
    cam = Camera()  # CLEVR's camera, looking at the origin
    cam_pos = np.asarray(cam.position)
    to_centre = np.asarray(centre) - cam_pos
    axis = -cam_pos / np.linalg.norm(cam_pos)
    d = np.linalg.norm(to_centre)
    alpha = math.acos(to_centre @ axis / d)  # angle off the optical axis
    rho = math.asin(r / d)  # angular radius
    # The cone of half-angle rho around a direction alpha off axis cuts the image plane
    # (at distance f) in an ellipse with these semi-axes.
    denom = math.cos(alpha) ** 2 - math.sin(rho) ** 2
    a = F_PX * math.sin(rho) * math.cos(rho) / denom
    b = F_PX * math.sin(rho) / math.sqrt(denom)
    size = SIZES.index("small") if r < 0.5 else LARGE
    mask = _lone_render(SceneObject(SPHERE, size, 3, 1, tuple(centre)), cam)
    assert (mask == 1).sum() == pytest.approx(math.pi * a * b, rel=0.03)


def test_sphere_mask_matches_independent_ray_test():
    centre, r = np.array([1.0, -0.5, 0.7]), 0.7
    cam = Camera()
    mask = _lone_render(SceneObject(SPHERE, LARGE, 4, 0, tuple(centre)), cam)
    dirs = _pinhole_rays(cam.position, cam.look_at)
    oc = np.asarray(cam.position) - centre
    b = dirs @ oc
    miss_dist2 = oc @ oc - b**2  # squared distance from the centre to each ray
    inside = miss_dist2 < r * r
    # Leave out pixel centres whose rays graze the sphere (float32 rendering vs float64).
    clear = np.abs(np.sqrt(miss_dist2) - r) > 1e-4
    assert clear.mean() > 0.99
    np.testing.assert_array_equal((mask == 1)[clear], inside[clear])


@pytest.mark.parametrize("shape", [CUBE, CYLINDER])
@pytest.mark.parametrize("rotation", [0.0, 33.0])
def test_top_view_silhouettes(shape, rotation):
    # From straight above the object's centre only its top face is visible: a square of
    # side 2r (cube) or a disc of radius r (cylinder) at height 2r, so the silhouette area is
    # known exactly for a pinhole camera and does not depend on the rotation.
    r, height = 0.7, 9.0
    cam = Camera((0.0, 0.0, height), (0.0, 0.0, 0.0))
    obj = SceneObject(shape, LARGE, 5, 0, (0.0, 0.0, r), rotation)
    mask = _lone_render(obj, cam)
    scale = F_PX / (height - 2 * r)
    expected = (2 * r * scale) ** 2 if shape == CUBE else math.pi * (r * scale) ** 2
    assert (mask == 1).sum() == pytest.approx(expected, rel=0.02)


def test_nearer_object_wins():
    cam = Camera()
    far = SceneObject(CUBE, LARGE, 1, 0, (0.0, 0.0, 0.7), 10.0)
    # A small sphere on the line from the camera to the cube's centre, halfway there.
    mid = 0.5 * (np.asarray(cam.position) + np.asarray(far.position))
    near = SceneObject(SPHERE, SIZES.index("small"), 2, 0, tuple(mid))
    _, mask = render_scene([far, near], cam, ONE_LIGHT)
    assert mask[H // 2, W // 2] == 2
    assert (mask == 1).sum() > 0 and (mask == 2).sum() > 0


def test_key_light_casts_shadow():
    # The ground point on the line from the key light through the sphere's centre is in the
    # sphere's umbra: darker than the same pixel without the sphere. The light stands behind
    # the sphere, so the shadow falls towards the camera, in view.
    light = Light((-3.0, 3.5, 6.0), intensity=1.0, shadow=True)
    centre = np.array([-0.5, 0.5, 0.7])
    lp = np.asarray(light.position)
    ground = lp + (centre - lp) * (lp[2] / (lp[2] - centre[2]))
    cam = Camera()
    dirs = _pinhole_rays(cam.position, cam.look_at)
    ray = (ground - np.asarray(cam.position)) / np.linalg.norm(ground - np.asarray(cam.position))
    row, col = np.unravel_index(np.argmax(dirs @ ray), (H, W))
    sphere = SceneObject(SPHERE, LARGE, 0, 0, tuple(centre))
    lit, _ = render_scene([], cam, (light,))
    shaded, mask = render_scene([sphere], cam, (light,))
    assert mask[row, col] == 0  # the shadow point itself is visible ground
    assert shaded[row, col].mean() < 0.75 * lit[row, col].mean()
    # Far from the sphere the ground is unchanged.
    assert np.allclose(shaded[5, 5], lit[5, 5])


# ----------------------------------------------------------------------------------------
# Scene sampling


def _footprint_points(shape, half, x, y, rotation, n=80):
    """Dense points covering an object's footprint (its horizontal cross-section)."""
    u, v = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n))
    u, v = u.ravel(), v.ravel()
    if shape == CUBE:
        a = math.radians(rotation)
        pu, pv = half * u, half * v
        return np.stack(
            [x + pu * math.cos(a) - pv * math.sin(a), y + pu * math.sin(a) + pv * math.cos(a)], 1
        )
    keep = u * u + v * v <= 1
    return np.stack([x + half * u[keep], y + half * v[keep]], 1)


def _inside_footprint(pts, shape, half, x, y, rotation):
    dx, dy = pts[:, 0] - x, pts[:, 1] - y
    if shape == CUBE:
        a = math.radians(rotation)
        lu = dx * math.cos(a) + dy * math.sin(a)
        lv = -dx * math.sin(a) + dy * math.cos(a)
        return (np.abs(lu) < half) & (np.abs(lv) < half)
    return dx * dx + dy * dy < half * half


@pytest.mark.parametrize("seed", range(4))
def test_objects_do_not_intersect(seed):
    scene = sample_scene(np.random.default_rng(seed), 10, height=120, width=160)
    objs = scene.objects
    assert len(objs) == 10
    # CLEVR's margin rule: every pair is at least 0.4 apart along the camera's ground-plane
    # "behind" and "left" directions, so left/right/front/behind relations are unambiguous.
    behind = np.asarray(scene.camera.look_at[:2]) - np.asarray(scene.camera.position[:2])
    behind /= np.linalg.norm(behind)
    left = np.array([-behind[1], behind[0]])
    xy = np.array([o.position[:2] for o in objs])
    delta = xy[:, None] - xy[None]
    for axis in (behind, left):
        along = np.abs(delta @ axis)[np.triu_indices(len(objs), 1)]
        assert np.all(along >= 0.4 - 1e-9)
    for i, a in enumerate(objs):
        assert a.position[2] == pytest.approx(SIZE_VALUES[a.size])  # on the ground
        pts = _footprint_points(
            a.shape, SIZE_VALUES[a.size], a.position[0], a.position[1], a.rotation
        )
        for b in objs[i + 1 :]:
            # All objects stand on z = 0, so they intersect in 3D iff their footprints do.
            hit = _inside_footprint(
                pts, b.shape, SIZE_VALUES[b.size], b.position[0], b.position[1], b.rotation
            )
            assert not hit.any(), (a, b)


def test_sample_scene_respects_min_pixels():
    rng = np.random.default_rng(11)
    scene = sample_scene(rng, 6, min_pixels=400)
    _, mask = render_scene(*scene)
    counts = np.bincount(mask.ravel(), minlength=7)
    assert np.all(counts[1:] >= 400)


def test_generate_matches_render_of_sampled_scene():
    ex = next(generate(1, seed=9))
    rng = np.random.default_rng(np.random.SeedSequence([9, 0]))
    n = int(rng.integers(3, 7))
    image, mask = render_scene(*sample_scene(rng, n))
    np.testing.assert_array_equal(mask, ex["mask"])
    np.testing.assert_array_equal(np.round(image * 255).astype(np.uint8), ex["image"])


# ----------------------------------------------------------------------------------------
# Camera and ray-primitive intersections


def _rays(origins, directions):
    """Rays as the module takes them: (ox, oy, oz, dx, dy, dz), unit float32 directions."""
    o = np.asarray(origins, np.float32).reshape(-1, 3)
    d = np.asarray(directions, np.float64).reshape(-1, 3)
    d = (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
    o = np.broadcast_to(o, d.shape)
    return tuple(np.ascontiguousarray(o[:, k]) for k in range(3)) + tuple(
        np.ascontiguousarray(d[:, k]) for k in range(3)
    )


def test_camera_basis_by_hand():
    # Looking along +y from (0, -5, 1): right = +x, up = +z, forward = +y.
    side = Camera((0.0, -5.0, 1.0), (0.0, 0.0, 1.0))
    np.testing.assert_allclose(side.basis(), [[1, 0, 0], [0, 0, 1], [0, 1, 0]], atol=1e-12)
    # Straight down: the horizon is undefined, world +y is taken as up.
    top = Camera((0.0, 0.0, 5.0), (0.0, 0.0, 0.0))
    np.testing.assert_allclose(top.basis(), [[1, 0, 0], [0, 1, 0], [0, 0, -1]], atol=1e-12)


def test_clevr_camera_basis_is_level_and_orthonormal():
    cam = Camera()
    right, up, forward = cam.basis()
    position = np.array([7.48113, -6.50764, 5.34367])
    np.testing.assert_allclose(forward, -position / np.linalg.norm(position), atol=1e-12)
    assert abs(right[2]) < 1e-12  # the horizon stays level
    np.testing.assert_allclose(cam.basis() @ cam.basis().T, np.eye(3), atol=1e-12)
    assert np.linalg.det(cam.basis()) == pytest.approx(-1.0)  # right, up, forward: left-handed
    assert up[2] > 0
    # Horizontal field of view 2 atan(16 / 35): a 64-pixel image has f = 64 * 35 / 32 = 70.
    assert cam.focal_pixels(64) == 70.0


def test_rays_by_hand():
    cam = Camera((0.0, -5.0, 0.0), (0.0, 0.0, 0.0))  # right +x, up +z, forward +y
    rows = np.array([0.5, 32.0, 10.0])
    cols = np.array([0.5, 32.0, 50.0])
    ox, oy, oz, dx, dy, dz = cam.rays(rows, cols, 64, 64)
    assert (ox, oy, oz) == (0.0, -5.0, 0.0)
    assert dx.dtype == np.float32
    f = 70.0
    for k, (r, c) in enumerate(zip(rows, cols)):
        u, v = (c - 32.0) / f, (32.0 - r) / f
        expected = np.array([u, 1.0, v]) / math.sqrt(u * u + v * v + 1.0)
        np.testing.assert_allclose([dx[k], dy[k], dz[k]], expected, atol=1e-6)
    np.testing.assert_allclose([dx[1], dy[1], dz[1]], [0, 1, 0], atol=1e-7)  # image centre


def test_project_inverts_rays():
    cam = Camera()
    rows = np.array([3.5, 20.25, 47.0])
    cols = np.array([60.5, 11.0, 33.75])
    ox, oy, oz, dx, dy, dz = cam.rays(rows, cols, 48, 64)
    distance = np.array([2.0, 9.0, 14.0])
    points = np.stack([ox + distance * dx, oy + distance * dy, oz + distance * dz], axis=1)
    projected = cam.project(points, 48, 64)
    np.testing.assert_allclose(projected[:, 0], cols, atol=1e-4)
    np.testing.assert_allclose(projected[:, 1], rows, atol=1e-4)
    # Depth along the optical axis: distance times cos(angle to the axis).
    cos = np.stack([dx, dy, dz], axis=1) @ cam.basis()[2]
    np.testing.assert_allclose(projected[:, 2], distance * cos, rtol=1e-6)


@pytest.mark.parametrize("degrees", [0.0, 37.0, 90.0, -120.0])
def test_to_local_is_the_inverse_rigid_motion(degrees):
    rng = np.random.default_rng(0)
    origins = rng.normal(size=(6, 3)).astype(np.float32)
    rays = _rays(origins, rng.normal(size=(6, 3)))
    center = np.array([0.5, -1.25, 0.35])
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])  # local to world
    local = np.stack(to_local(rays, center, degrees), axis=1)
    world_o = np.stack(rays[:3], axis=1).astype(np.float64)
    world_d = np.stack(rays[3:], axis=1).astype(np.float64)
    # Explicit matrix products: local = R^T (p - c) for points, R^T d for directions.
    np.testing.assert_allclose(local[:, :3], (world_o - center) @ rot, atol=1e-5)
    np.testing.assert_allclose(local[:, 3:], world_d @ rot, atol=1e-6)
    # Without a rotation only the translation applies.
    plain = np.stack(to_local(rays, center, None), axis=1)
    np.testing.assert_allclose(plain[:, :3], world_o - center, atol=1e-6)
    np.testing.assert_allclose(plain[:, 3:], world_d, atol=0)


def test_sphere_hits_by_hand():
    # From z = -5 towards +z: entry at 5 - sqrt(r^2 - x^2) for an offset x; a miss beyond r;
    # a sphere behind the origin is not hit.
    rays = _rays(
        [[0, 0, -5], [0.6, 0, -5], [1.1, 0, -5], [0, 0, -5]],
        [[0, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, -1]],
    )
    t = intersect_sphere(rays, 1.0)
    np.testing.assert_allclose(t[:2], [4.0, 4.2], atol=1e-5)
    assert np.isinf(t[2]) and np.isinf(t[3])


def test_box_hits_by_hand():
    s2 = math.sqrt(2.0)
    rays = _rays(
        [[0, 0, -5], [0.5, -0.5, -5], [2, 0, -5], [-5, -5, 0.5], [-5, 0, 0]],
        [[0, 0, 1], [0, 0, 1], [0, 0, 1], [1, 1, 0], [1, 0.5, 0]],
    )
    t = intersect_box(rays, 1.0)
    # Face z = -1 at distance 4; the diagonal ray reaches the edge x = y = -1 after 4 sqrt 2;
    # the last one enters x = -1 at t = 4 / cos(atan(0.5)), where y = 2 is outside: a miss.
    np.testing.assert_allclose(t[[0, 1, 3]], [4.0, 4.0, 4 * s2], atol=1e-5)
    assert np.isinf(t[2]) and np.isinf(t[4])


def test_cylinder_hits_by_hand():
    rays = _rays(
        [[-5, 0, 0], [-5, 0, 0.9], [0.2, 0.3, 5], [0, 0, -5], [-5, 0, 1.5]],
        [[1, 0, 0], [1, 0, 0], [0, 0, -1], [0, 0, 1], [1, 0, 0]],
    )
    t = intersect_cylinder(rays, 0.5, 1.0)
    # Side at x = -0.5 (4.5 away), the top cap from above (4), the bottom cap from below (4),
    # and a miss above the top.
    np.testing.assert_allclose(t[:4], [4.5, 4.5, 4.0, 4.0], atol=1e-5)
    assert np.isinf(t[4])


def _first_hit_loop(o, d, surfaces) -> float:
    """Nearest t > 1e-4 over candidate surfaces, each (t list, on-surface test), for one ray."""
    best = math.inf
    for ts, on_surface in surfaces(o, d):
        for t in ts:
            if t > 1e-4 and on_surface(o + t * d) and t < best:
                best = t
    return best


def _box_surfaces(half):
    def surfaces(o, d):
        for axis in range(3):
            if d[axis] == 0:
                continue
            others = [a for a in range(3) if a != axis]
            for plane in (-half, half):
                t = (plane - o[axis]) / d[axis]
                yield [t], lambda p, others=others: all(abs(p[a]) <= half + 1e-6 for a in others)

    return surfaces


def _sphere_surfaces(radius):
    def surfaces(o, d):
        roots = np.roots([d @ d, 2 * (o @ d), o @ o - radius**2])
        yield [r.real for r in roots if abs(r.imag) < 1e-12], lambda p: True

    return surfaces


def _cylinder_surfaces(radius, half):
    def surfaces(o, d):
        a, b = d[0] ** 2 + d[1] ** 2, 2 * (o[0] * d[0] + o[1] * d[1])
        roots = np.roots([a, b, o[0] ** 2 + o[1] ** 2 - radius**2]) if a > 0 else []
        yield [r.real for r in roots if abs(r.imag) < 1e-12], lambda p: abs(p[2]) <= half
        if d[2] != 0:
            caps = [(z - o[2]) / d[2] for z in (-half, half)]
            yield caps, lambda p: p[0] ** 2 + p[1] ** 2 <= radius**2

    return surfaces


@pytest.mark.parametrize(
    "name, intersect, surfaces",
    [
        ("sphere", lambda r: intersect_sphere(r, 0.7), _sphere_surfaces(0.7)),
        ("box", lambda r: intersect_box(r, 0.6), _box_surfaces(0.6)),
        ("cylinder", lambda r: intersect_cylinder(r, 0.5, 0.8), _cylinder_surfaces(0.5, 0.8)),
    ],
)
def test_intersections_match_a_per_ray_loop(name, intersect, surfaces):
    # Rays from outside every primitive (distance 3) aimed near the origin: hits and misses.
    rng = np.random.default_rng(1)
    n = 64
    start = rng.normal(size=(n, 3))
    start = 3.0 * start / np.linalg.norm(start, axis=1, keepdims=True)
    target = rng.uniform(-1.0, 1.0, size=(n, 3))
    rays = _rays(start, target - start)
    t = intersect(rays)
    o_all = np.stack(rays[:3], axis=1).astype(np.float64)
    d_all = np.stack(rays[3:], axis=1).astype(np.float64)
    expected = np.array([_first_hit_loop(o, d, surfaces) for o, d in zip(o_all, d_all)])
    hits = np.isfinite(expected)
    assert 10 < hits.sum() < n, name  # both hits and misses are exercised
    np.testing.assert_array_equal(np.isfinite(t), hits)
    np.testing.assert_allclose(t[hits], expected[hits], atol=1e-4)


def test_normals_by_hand():
    nx, ny, nz = local_normals(
        SPHERE, np.array([0.0, 0.6]), np.array([0.0, 0.0]), np.array([2.0, 1.6]), 2.0
    )
    np.testing.assert_allclose(np.stack([nx, ny, nz], 1), [[0, 0, 1], [0.3, 0, 0.8]])
    # The face is that of the largest |coordinate|, whatever the edge length.
    px = np.array([1.0, 0.1, -0.3, 0.2])
    py = np.array([0.3, -1.0, 0.2, 0.4])
    pz = np.array([-0.2, 0.5, 0.1, -1.0])
    np.testing.assert_array_equal(
        np.stack(local_normals(CUBE, px, py, pz, 1.0), 1),
        [[1, 0, 0], [0, -1, 0], [-1, 0, 0], [0, 0, -1]],
    )
    # A side point at angle a has normal (cos a, sin a, 0); cap points have (0, 0, +-1).
    a = np.array([0.3, 2.0])
    px = np.concatenate([0.5 * np.cos(a), [0.1, -0.2]])
    py = np.concatenate([0.5 * np.sin(a), [0.2, 0.1]])
    pz = np.array([0.2, -0.4, 0.5, -0.5])
    normals = np.stack(local_normals(CYLINDER, px, py, pz, 0.5), 1)
    expected = [[math.cos(0.3), math.sin(0.3), 0], [math.cos(2.0), math.sin(2.0), 0]]
    np.testing.assert_allclose(normals, [*expected, [0, 0, 1], [0, 0, -1]], atol=1e-12)
