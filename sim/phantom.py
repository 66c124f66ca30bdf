"""Seeded parametric phantoms in patient coordinates (mm).

A phantom is a curved body surface with skin, fat and muscle layers under it, a background organ,
and solid structures (organs, vessels, fluid, bone, calcification) painted over the layers in order.
One structure is the exam's **target**; ``Phantom.target_pose`` is the probe pose of its standard
view: the image plane contains the target's long axis and the beam axis passes through its centre.
Sizes, depths, positions and echogenicity vary with the seed; the handedness of the anatomy does
not, as in patients: in the standard view's probe frame, what lies off the image plane on +y (the
elevation side the orientation marker convention fixes) is always the same kind of structure
(abdomen: the renal hilum, renal veins and IVC; vascular: the thyroid; cardiac: the coronary sinus and
right-heart inflow), and on −y another (vascular: the jugular vein; cardiac: the pulmonary outflow). This is the cue a
sonographer uses to tell which side of the plane the probe has drifted to; with mirror-symmetric
anatomy no single frame could tell it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim.presets import ExamPreset, get_preset
from sim.shapes import Cylinder, Ellipsoid, Shape, aabb_hits
from sim.tissues import LABEL, property_arrays
from sim.types import Pose, look_rotation, rotvec_to_matrix

# The probe rests this far below the undeformed skin at the standard view (gentle pressure).
PRESS_MM = 2.0


@dataclass
class Phantom:
    preset: ExamPreset
    seed: int
    curvature: tuple[float, float]  # surface z = cx * x^2 + cy * y^2 (1/mm)
    skin_mm: float
    fat_mm: float
    fat_wave: tuple[float, float, float, float]  # amplitude mm, kx, ky (rad/mm), phase
    muscle_mm: float
    background: int  # label below the muscle layer
    structures: list[tuple[Shape, int]]
    target: Ellipsoid
    target_name: str
    target_pose: Pose
    echo_amp: np.ndarray = field(repr=False)
    atten: np.ndarray = field(repr=False)
    impedance: np.ndarray = field(repr=False)
    texture: np.ndarray = field(repr=False)

    # --- body surface -------------------------------------------------------------------------
    def surface_z(self, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
        cx, cy = self.curvature
        return np.asarray(cx * np.square(x) + cy * np.square(y))

    def surface_normal(self, x: float, y: float) -> np.ndarray:
        """Unit normal pointing into the body at surface point (x, y)."""
        cx, cy = self.curvature
        n = np.array([-2 * cx * x, -2 * cy * y, 1.0])
        return n / np.linalg.norm(n)

    def pose_on_skin(
        self, x: float, y: float, tilt_deg: tuple[float, float] = (0.0, 0.0), rotation_deg: float = 0.0
    ) -> Pose:
        """A pose with the face at surface point (x, y) pressed in PRESS_MM, beam along the inward
        normal tilted by (about probe x, about probe y) degrees, array turned ``rotation_deg`` from +y."""
        n = self.surface_normal(x, y)
        hint = rotvec_to_matrix(n * rotation_deg) @ np.array([0.0, 1.0, 0.0])
        base = look_rotation(n, hint)
        rot = base @ rotvec_to_matrix([tilt_deg[0], tilt_deg[1], 0.0])
        pos = np.array([x, y, float(self.surface_z(x, y))]) + PRESS_MM * n
        return Pose.from_matrix(pos, rot)

    # --- tissue labels ------------------------------------------------------------------------
    def depth_below_skin(self, points: np.ndarray) -> np.ndarray:
        return points[:, 2] - self.surface_z(points[:, 0], points[:, 1]).astype(np.float32)

    def layer_labels(
        self, points: np.ndarray, conform: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Labels (uint8) of the skin, fat, muscle and background layers, and the depth below the skin.

        ``conform``: points where the probe face pushes the skin in (so gel/air between the face and
        the undeformed skin counts as skin, as under a pressed probe).
        """
        d = self.depth_below_skin(points)
        a, kx, ky, ph = self.fat_wave
        fat_bottom = self.skin_mm + self.fat_mm + a * np.sin(kx * points[:, 0] + ky * points[:, 1] + ph)
        lab = np.full(len(points), self.background, dtype=np.uint8)
        lab[d < fat_bottom + self.muscle_mm] = LABEL["muscle"]
        lab[d < fat_bottom] = LABEL["fat"]
        lab[d < self.skin_mm] = LABEL["skin"]
        outside = d < 0
        if conform is not None:
            outside &= ~conform
        lab[outside] = LABEL["outside"]
        return lab, d

    def labels(self, points: np.ndarray, conform: np.ndarray | None = None) -> np.ndarray:
        """Tissue label (uint8) of each point (N, 3) float32: layers, then structures painted in order."""
        lab, d = self.layer_labels(points, conform)
        if len(points) == 0:
            return lab
        lo, hi = points.min(axis=0), points.max(axis=0)
        below_skin = d >= self.skin_mm
        for shape, label in self.structures:
            if aabb_hits(shape, lo, hi):
                lab[shape.contains(points) & below_skin] = label
        return lab


def make_phantom(preset: str | ExamPreset, seed: int) -> Phantom:
    """Build the phantom for an exam preset; the same (preset, seed) always gives the same phantom."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    rng = np.random.default_rng([int(seed), sum(map(ord, p.name))])
    builders = {"abdomen": _abdomen, "vascular": _vascular, "cardiac": _cardiac}
    if p.name not in builders:
        raise ValueError(f"no phantom builder for preset {p.name!r}")
    return builders[p.name](p, int(seed), rng)


def _common(p: ExamPreset, seed: int, rng: np.random.Generator, radius_range: tuple[float, float]) -> dict:
    rx = rng.uniform(*radius_range)
    ry = rng.uniform(2.0, 4.0) * rx
    echo = {name: float(rng.normal(0.0, 1.5)) for name in ("fat", "muscle", "liver", "kidney", "soft_tissue")}
    amp, att, imp, tex = property_arrays(echo)
    return {
        "preset": p,
        "seed": seed,
        "curvature": (1.0 / (2 * rx), 1.0 / (2 * ry)),
        "echo_amp": amp,
        "atten": att,
        "impedance": imp,
        "texture": tex,
        "fat_wave": (
            float(rng.uniform(0.5, 2.0)),
            float(rng.uniform(0.02, 0.06)),
            float(rng.uniform(0.0, 0.03)),
            float(rng.uniform(0, 2 * np.pi)),
        ),
    }


def _target_frame(
    ph_partial: Phantom, rng: np.random.Generator, xy_spread: float, turn_range: tuple[float, float]
) -> tuple[Pose, np.ndarray]:
    x, y = rng.uniform(-xy_spread, xy_spread, size=2)
    tilt = (float(rng.uniform(-12, 12)), float(rng.uniform(-12, 12)))
    pose = ph_partial.pose_on_skin(float(x), float(y), tilt, float(rng.uniform(*turn_range)))
    return pose, pose.rotation_matrix()


def _abdomen(p: ExamPreset, seed: int, rng: np.random.Generator) -> Phantom:
    c = _common(p, seed, rng, (160.0, 260.0))
    ph = Phantom(
        skin_mm=float(rng.uniform(1.5, 2.5)),
        fat_mm=float(rng.uniform(8, 25)),
        muscle_mm=float(rng.uniform(8, 15)),
        background=LABEL["liver"],
        structures=[],
        target=Ellipsoid(np.zeros(3), np.eye(3), np.ones(3)),
        target_name="kidney",
        target_pose=Pose(np.zeros(3)),
        **c,
    )
    pose, r = _target_frame(ph, rng, 25.0, (-30.0, 30.0))
    depth = rng.uniform(*p.target_depth_range_mm)
    centre = pose.position_mm + r[:, 2] * depth
    semi = np.array([rng.uniform(45, 58), rng.uniform(20, 26), rng.uniform(18, 24)])
    kidney = Ellipsoid(centre, r, semi)
    structures: list[tuple[Shape, int]] = []
    # Retroperitoneal fat and the posterior abdominal wall below the kidney.
    deep = centre + r[:, 2] * (semi[2] + rng.uniform(12, 25))
    structures.append((Ellipsoid(deep + r[:, 2] * 400, r, np.array([900.0, 900.0, 400.0])), LABEL["muscle"]))
    structures.append((Ellipsoid(centre, r, semi + 6.0), LABEL["fat"]))
    structures.append((kidney, LABEL["kidney"]))
    # The hilum opens toward +y (medial): the sinus sits off-centre toward it and breaks through the
    # medial border, where the renal vein leaves for the IVC beside the kidney.
    medial = r[:, 1]
    sinus_c = centre + medial * (0.3 * semi[1]) + r[:, 2] * rng.uniform(-2, 2)
    sinus = Ellipsoid(sinus_c, r, semi * np.array([0.6, 0.5, 0.4]))
    structures.append((sinus, LABEL["renal_sinus"]))
    hilum = Ellipsoid(centre + medial * (0.8 * semi[1]), r, semi * np.array([0.25, 0.45, 0.3]))
    structures.append((hilum, LABEL["renal_sinus"]))
    # A segmental renal vein along the sinus, 2.5-4 mm medial of the plane: a turn of the probe brings
    # it into the side of the image the turn swings medially.
    seg_r = rng.uniform(2.0, 3.0)
    seg = (
        centre
        + medial * (rng.uniform(2.5, 4.0) + seg_r)
        + r[:, 2] * float(sinus_c @ r[:, 2] - centre @ r[:, 2])
    )
    structures.append((Cylinder(seg, r[:, 0], seg_r, 0.5 * semi[0]), LABEL["blood"]))
    # IVC and aorta medial to the kidney, running beside its long axis (a few degrees oblique).
    turn = np.radians(rng.uniform(-8, 8))
    along = r[:, 0] * np.cos(turn) + medial * np.sin(turn)
    ivc_r, ao_r = rng.uniform(9, 12), rng.uniform(8, 11)
    ivc = centre + medial * (semi[1] + rng.uniform(10, 16) + ivc_r) + r[:, 2] * rng.uniform(-6, 6)
    aorta = ivc + medial * (ivc_r + ao_r + rng.uniform(8, 14)) + r[:, 2] * rng.uniform(0, 10)
    for pos, radius in ((ivc, ivc_r), (aorta, ao_r)):
        structures.append((Cylinder(pos, along, radius + 1.5), LABEL["vessel_wall"]))
        structures.append((Cylinder(pos, along, radius), LABEL["blood"]))
    hilum_c = centre + medial * (0.7 * semi[1])
    vein = ivc - hilum_c
    structures.append(
        (
            Cylinder(
                (hilum_c + ivc) / 2,
                vein / np.linalg.norm(vein),
                rng.uniform(3.5, 5.0),
                np.linalg.norm(vein) / 2,
            ),
            LABEL["blood"],
        )
    )
    # Gallbladder or a cyst in the liver: fluid with posterior enhancement.
    gb = pose.position_mm + r @ np.array([rng.uniform(-35, 35), rng.uniform(-30, 30), rng.uniform(30, 45)])
    structures.append(
        (Ellipsoid(gb, r, np.array([rng.uniform(12, 20), 10.0, rng.uniform(7, 11)])), LABEL["fluid"])
    )
    # Kidney stone in the sinus (bright, shadowing), present in most seeds.
    if rng.uniform() < 0.7:
        stone = sinus.center + r @ np.array([rng.uniform(-15, 15), 0.0, rng.uniform(-4, 4)])
        structures.append((Ellipsoid(stone, r, np.full(3, rng.uniform(2.5, 4.0))), LABEL["calcification"]))
    # A rib above the field edge, off to one side of the standard view (elevation).
    rib_y = float(rng.choice([-1.0, 1.0])) * rng.uniform(22, 32)
    rib_c = pose.position_mm + r @ np.array([0.0, rib_y, 0.0]) + np.array([0.0, 0.0, ph.fat_mm + 8])
    structures.append((Cylinder(rib_c, r[:, 0], rng.uniform(5, 7)), LABEL["bone"]))
    ph.structures = structures
    ph.target = kidney
    ph.target_pose = pose
    return ph


def _vascular(p: ExamPreset, seed: int, rng: np.random.Generator) -> Phantom:
    c = _common(p, seed, rng, (50.0, 80.0))
    ph = Phantom(
        skin_mm=float(rng.uniform(0.8, 1.4)),
        fat_mm=float(rng.uniform(2, 5)),
        muscle_mm=float(rng.uniform(4, 8)),
        background=LABEL["soft_tissue"],
        structures=[],
        target=Ellipsoid(np.zeros(3), np.eye(3), np.ones(3)),
        target_name="carotid bulb",
        target_pose=Pose(np.zeros(3)),
        **c,
    )
    ph.fat_wave = (ph.fat_wave[0] * 0.3, *ph.fat_wave[1:])
    pose, r = _target_frame(ph, rng, 10.0, (-15.0, 15.0))
    depth = rng.uniform(*p.target_depth_range_mm)
    centre = pose.position_mm + r[:, 2] * depth
    radius = rng.uniform(3.0, 4.0)
    wall = 0.7
    axis = r[:, 0]
    structures: list[tuple[Shape, int]] = []
    # Cervical vertebra: a bony mass deep to the artery (bright edge, shadow).
    vert = centre + r[:, 2] * rng.uniform(14, 20) + r[:, 1] * rng.uniform(-8, 8)
    structures.append((Ellipsoid(vert, r, np.array([60.0, 12.0, 6.0])), LABEL["bone"]))
    # Thyroid lobe medial to the artery.
    thy = centre + r[:, 1] * rng.uniform(10, 14) - r[:, 2] * 3
    structures.append((Ellipsoid(thy, r, np.array([22.0, 7.0, 8.0])), LABEL["thyroid"]))
    # Jugular vein: larger, oval, superficial and lateral.
    jv = centre + r[:, 1] * rng.uniform(-11, -8) - r[:, 2] * rng.uniform(3, 6)
    jv_semi = np.array([1000.0, rng.uniform(5, 7), rng.uniform(3, 5)])
    structures.append((Ellipsoid(jv, r, jv_semi + np.array([0, 0.6, 0.6])), LABEL["vessel_wall"]))
    structures.append((Ellipsoid(jv, r, jv_semi), LABEL["blood"]))
    # Common carotid with its bulb (the target) and internal carotid beyond it.
    structures.append((Cylinder(centre, axis, radius + wall), LABEL["vessel_wall"]))
    bulb_semi = np.array([9.0, radius * 1.35, radius * 1.35])
    structures.append((Ellipsoid(centre, r, bulb_semi + wall), LABEL["vessel_wall"]))
    structures.append((Cylinder(centre, axis, radius), LABEL["blood"]))
    structures.append((Ellipsoid(centre, r, bulb_semi), LABEL["blood"]))
    # A calcified plaque on the far wall of the bulb in some seeds.
    if rng.uniform() < 0.5:
        plaque = centre + r @ np.array([rng.uniform(-5, 5), 0.0, bulb_semi[2] + 0.2])
        structures.append((Ellipsoid(plaque, r, np.array([2.5, 1.5, 1.0])), LABEL["calcification"]))
    ph.structures = structures
    ph.target = Ellipsoid(centre, r, np.array([16.0, bulb_semi[1] + wall, bulb_semi[2] + wall]))
    ph.target_pose = pose
    return ph


def _cardiac(p: ExamPreset, seed: int, rng: np.random.Generator) -> Phantom:
    c = _common(p, seed, rng, (180.0, 300.0))
    ph = Phantom(
        skin_mm=float(rng.uniform(1.5, 2.5)),
        fat_mm=float(rng.uniform(5, 15)),
        muscle_mm=float(rng.uniform(8, 14)),
        background=LABEL["soft_tissue"],
        structures=[],
        target=Ellipsoid(np.zeros(3), np.eye(3), np.ones(3)),
        target_name="left ventricle long axis",
        target_pose=Pose(np.zeros(3)),
        **c,
    )
    pose, r = _target_frame(ph, rng, 20.0, (50.0, 80.0))
    depth = rng.uniform(*p.target_depth_range_mm)
    centre = pose.position_mm + r[:, 2] * depth
    structures: list[tuple[Shape, int]] = []
    # Ribs parallel to the array at the standard view: the window is the intercostal space.
    gap = rng.uniform(26, 32)
    rib_depth = ph.skin_mm + ph.fat_mm + rng.uniform(6, 10)
    offset = rng.uniform(-3, 3)
    for k in (-2, -1, 1, 2):
        y = (k - np.sign(k) * 0.5) * gap + offset
        rc = pose.position_mm + r[:, 1] * y + r[:, 2] * rib_depth
        structures.append((Cylinder(rc, r[:, 0], rng.uniform(5.5, 7.0)), LABEL["bone"]))
    semi = np.array([rng.uniform(45, 55), rng.uniform(32, 38), rng.uniform(30, 36)])
    heart = Ellipsoid(centre, r, semi)
    structures.append((Ellipsoid(centre, r, semi + 3), LABEL["fat"]))  # pericardial fat
    structures.append((heart, LABEL["myocardium"]))
    # Left ventricle (apex toward -x), left atrium (toward +x, deeper), aortic root (shallower).
    lv = centre + r @ np.array([-10.0, 0.0, 2.0])
    structures.append((Ellipsoid(lv, r, semi * np.array([0.62, 0.55, 0.5])), LABEL["blood"]))
    la = centre + r @ np.array([semi[0] * 0.55, 0.0, semi[2] * 0.35])
    structures.append((Ellipsoid(la, r, np.array([16.0, 15.0, 13.0])), LABEL["blood"]))
    ao = centre + r @ np.array([semi[0] * 0.45, 0.0, -semi[2] * 0.45])
    structures.append((Ellipsoid(ao, r, np.array([15.0, 10.0, 9.0])), LABEL["blood"]))
    # Off the plane, one handedness, each running along the long axis and starting 2.5-4 mm from the
    # plane, so a sweep, tilt or turn of a few mm or degrees brings it in (on the side of the image the
    # turn swings toward it): on +y, deep in the posterior wall, the coronary sinus and right-heart
    # inflow; on -y, shallow in the anterior wall, the right ventricular outflow to the pulmonary trunk.
    inflow_semi = np.array([0.6 * semi[0], rng.uniform(7, 9), 5.0])
    inflow = centre + r @ np.array([-0.1 * semi[0], rng.uniform(2.5, 4) + inflow_semi[1], 0.82 * semi[2]])
    structures.append((Ellipsoid(inflow, r, inflow_semi), LABEL["blood"]))
    outflow_r = rng.uniform(5, 7)
    outflow = centre + r @ np.array([-0.1 * semi[0], -(rng.uniform(2.5, 4) + outflow_r), -0.72 * semi[2]])
    structures.append((Cylinder(outflow, r[:, 0], outflow_r, 0.55 * semi[0]), LABEL["blood"]))
    # Descending aorta behind the atrium, seen in cross-section.
    dao = centre + r @ np.array([semi[0] * 0.6, 0.0, semi[2] + 14])
    structures.append((Cylinder(dao, r[:, 1], 10.0), LABEL["blood"]))
    ph.structures = structures
    ph.target = heart
    ph.target_pose = pose
    return ph


def qa_phantom(atten_db_cm_mhz: float = 0.5, seed: int = 0, preset: str = "abdomen") -> Phantom:
    """A flat tissue-mimicking block (like a commercial QA phantom): uniform scatterers of known
    attenuation, an anechoic cyst at 40 mm and a bone rod at 80 mm, both at x = +20 mm."""
    p = get_preset(preset)
    amp, att, imp, tex = property_arrays(atten_override={"qa_tissue": atten_db_cm_mhz})
    cyst = Ellipsoid(np.array([20.0, 0.0, 40.0]), np.eye(3), np.array([6.0, 6.0, 6.0]))
    rod = Cylinder(np.array([20.0, 0.0, 80.0]), np.array([0.0, 1.0, 0.0]), 3.0)
    pose = Pose(np.array([0.0, 0.0, 0.0]))
    return Phantom(
        preset=p,
        seed=seed,
        curvature=(0.0, 0.0),
        skin_mm=0.0,
        fat_mm=0.0,
        fat_wave=(0.0, 0.0, 0.0, 0.0),
        muscle_mm=0.0,
        background=LABEL["qa_tissue"],
        structures=[(cyst, LABEL["fluid"]), (rod, LABEL["bone"])],
        target=cyst,
        target_name="cyst",
        target_pose=pose,
        echo_amp=amp,
        atten=att,
        impedance=imp,
        texture=tex,
    )
