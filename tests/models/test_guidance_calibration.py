"""The target belief's calibration (models/guidance_calibration.py): the fits recover known
parameters from synthetic data, and the shipped manifest carries a section the service can read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from models.guidance_calibration import fit_axis, fit_score_field, population_prior
from service.policy.belief import AXES, BeliefCalibration

ROOT = Path(__file__).resolve().parents[2]


def test_fit_axis_recovers_gain_spread_and_flip_rate() -> None:
    rng = np.random.default_rng(0)
    truth = rng.uniform(-30, 30, 4000)
    sign = np.where(rng.uniform(size=truth.size) < 0.2, -1.0, 1.0)
    obs = sign * 0.6 * truth + rng.normal(0, 2.0, truth.size)
    got = fit_axis(obs, truth)
    assert abs(got["gain"] - 0.6) < 0.03 and abs(got["sigma"] - 2.0) < 0.2 and abs(got["flip"] - 0.2) < 0.03


def test_fit_score_field_recovers_peak_and_scales() -> None:
    rng = np.random.default_rng(1)
    truth = rng.uniform(-25, 25, (3000, 6))
    scales = np.array([12.0, 4.0, 8.0, 9.0, 10.0, 20.0])
    score = 0.6 * np.exp(-0.5 * np.sum((truth / scales) ** 2, axis=1)) + rng.normal(0, 0.02, 3000)
    got = fit_score_field(score, truth)
    assert abs(got["peak"] - 0.6) < 0.05
    for a, s in zip(AXES, scales, strict=True):
        assert abs(got["scales"][a] - s) < 0.25 * s, (a, got["scales"][a], s)


def test_prior_comes_from_training_phantoms_and_spans_the_targets() -> None:
    prior = population_prior(("vascular",), n=40)["vascular"]
    assert prior["seeds"][1] < 10000  # training seeds only
    cov = np.array(prior["covariance"])
    assert cov.shape == (6, 6) and np.all(np.linalg.eigvalsh(cov) > -1e-6)
    assert 2.0 < np.sqrt(cov[0, 0]) < 12.0  # vascular targets lie within ±10 mm


def test_shipped_manifest_calibrates_the_belief() -> None:
    manifest = json.loads((ROOT / "models/sonoguide-view/1.4.0/manifest.json").read_text())
    cal = BeliefCalibration.from_manifest(manifest)
    assert cal is not None
    assert set(cal.priors) == set(cal.quality) == set(cal.visibility) == {"abdomen", "vascular", "cardiac"}
    assert [b[0] for b in cal.bands] == [0.0, 0.3, 0.7]
    assert manifest["guidance"]["held_out"]["seeds_from"] >= 100000  # measured off the training seeds
    assert BeliefCalibration.from_manifest({"name": "no guidance section"}) is None
