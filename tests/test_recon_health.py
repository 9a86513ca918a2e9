"""Collapse detection of the 3D decomposition (models.recon_health) on forced collapses."""

from __future__ import annotations

import torch
from torch import nn

from models import faces
from models.decomposition import Decomposer, Decomposition
from models.recon_health import HealthMonitor, probe
from models.renderer import render

R = 32


class TruthDecomposer(nn.Module):
    """Returns the true decomposition of known rendered faces (and of their mirror images),
    optionally sabotaged: the stand-in for a perfectly trained net, then for a collapsed one."""

    def __init__(self, n=24, seed=0, **sabotage):
        super().__init__()
        f = faces.sample_factors(n, torch.Generator().manual_seed(seed))
        self.depth, self.albedo = faces.canonical_maps(f, R)
        self.view, self.light = f[:, :6].clone(), f[:, 6:14].clone()
        image, _ = render(self.depth, self.albedo, self.view, self.light)
        self.images = image * 2 - 1
        self.sabotage = sabotage
        self.resolution = R

    def _rows(self, images):
        """Index of each image among the known ones; mirrored ones flagged."""
        idx, mirrored = [], []
        for x in images:
            hit = [k for k in range(len(self.images)) if torch.equal(x, self.images[k])]
            flip = [k for k in range(len(self.images)) if torch.equal(x, self.images[k].flip(2))]
            idx.append((hit or flip)[0])
            mirrored.append(not hit)
        return torch.tensor(idx), torch.tensor(mirrored)

    def predict_view(self, images):
        idx, mirrored = self._rows(images)
        v = self.view[idx].clone()
        v[mirrored, 1:4] *= -1  # a mirror image: yaw, roll and tx change sign
        if "yaw" in self.sabotage:
            v[:, 1] = self.sabotage["yaw"]
        if "tx" in self.sabotage:
            v[:, 3] = self.sabotage["tx"]
        return v

    def forward(self, images):
        idx, _ = self._rows(images)
        depth, albedo = self.depth[idx], self.albedo[idx]
        if self.sabotage.get("black"):
            albedo = torch.zeros_like(albedo)
        if self.sabotage.get("hollow"):
            depth = 2 * depth.mean((1, 2), keepdim=True) - depth
        if "flatten" in self.sabotage:  # the relief shrunk to this fraction
            mean = depth.mean((1, 2), keepdim=True)
            depth = mean + self.sabotage["flatten"] * (depth - mean)
        sigma = torch.full((len(images), 1, R, R), 0.05)
        return Decomposition(depth, albedo, self.predict_view(images), self.light[idx], sigma, sigma)


def verdict(**sabotage) -> list[str]:
    """Reasons a monitor that has seen the healthy truth gives for the sabotaged one."""
    monitor = HealthMonitor()
    truth = TruthDecomposer()
    healthy = probe(truth, truth.images)
    assert monitor.check(healthy) == []
    monitor.update(250, healthy)
    bad = TruthDecomposer(**sabotage)
    return monitor.check(probe(bad, bad.images))


def test_the_truth_is_healthy():
    truth = TruthDecomposer()
    m = probe(truth, truth.images)
    assert m["valid_frac"] > 0.6 and m["recon_contrast"] > 0.8 and m["yaw_std_deg"] > 5
    assert abs(m["yaw_flip_bias_deg"]) < 1e-4 and m["convexity"] > 0
    assert HealthMonitor().check(m) == []


def test_each_forced_collapse_is_named():
    assert any("out of the frame" in r for r in verdict(tx=0.1))
    assert any("near-constant or black" in r for r in verdict(black=True))
    yaw = verdict(yaw=30.0)  # yaw no longer depends on the input
    assert any("no longer varies" in r for r in yaw) and any("ignores the input" in r for r in yaw)
    assert any("hollow face" in r for r in verdict(hollow=True))
    assert any("relief flattened" in r for r in verdict(flatten=0.2))
    assert not any("relief flattened" in r for r in verdict(flatten=0.5))  # half the relief: not yet a sheet


def test_a_loss_far_above_its_best_is_divergence():
    monitor, truth = HealthMonitor(), TruthDecomposer()
    m = probe(truth, truth.images)
    monitor.update(250, m)
    worse = {**m, "probe_loss": m["probe_loss"] + 0.6}
    assert any("loss diverged" in r for r in monitor.check(worse))
    assert monitor.check({**m, "probe_loss": m["probe_loss"] + 0.4}) == []


def _saturated_translation(model: Decomposer) -> Decomposer:
    """A view head whose output bias pushes tx and ty to the end of their range."""

    def hook(module, inputs, output):
        output = output.clone()
        output[:, 3:5] = 1.0
        return output

    model.view_net.register_forward_hook(hook)
    return model


def test_the_view_bound_keeps_the_face_in_frame_and_unsup3d_range_is_caught():
    images = TruthDecomposer().images
    tiny = dict(resolution=R, nf_map=4, zdim_map=8, nf_encoder=4, nf_conf=4, zdim_conf=8)
    torch.manual_seed(0)
    bounded = probe(_saturated_translation(Decomposer(**tiny)), images)
    unsup3d = probe(_saturated_translation(Decomposer(xy_range=0.1, **tiny)), images)
    assert bounded["valid_frac"] > 0.45  # xy_range 0.04: the worst view still shows the face
    assert unsup3d["valid_frac"] < 0.45  # Unsup3D's 0.1: the face leaves the frame ...
    assert any("out of the frame" in r for r in HealthMonitor().check(unsup3d))  # ... and it is caught


def test_monitor_state_round_trips():
    monitor = HealthMonitor()
    truth = TruthDecomposer()
    monitor.update(500, probe(truth, truth.images))
    other = HealthMonitor()
    other.load_state_dict(monitor.state_dict())
    assert other.best == monitor.best and other.best_step == 500 and other.best_steps == monitor.best_steps


def test_a_drift_restarts_where_the_collapsed_measure_was_best():
    """The relief peaks at step 250 and flattens while the loss still falls; the collapse at step
    750 restarts at 250, a collapse of a measure still at its best at the lowest-loss step at 500."""
    monitor, truth = HealthMonitor(), TruthDecomposer()
    m = probe(truth, truth.images)
    assert monitor.restart_step() is None  # nothing healthy yet: a fresh start
    monitor.update(250, m)
    monitor.update(500, {**m, "convexity": 0.5 * m["convexity"], "probe_loss": m["probe_loss"] - 0.1})
    assert monitor.best_steps["convexity"] == 250 and monitor.best_step == 500
    flat = {**m, "convexity": 0.1 * m["convexity"], "probe_loss": m["probe_loss"] - 0.2}
    assert any("relief flattened" in r for r in monitor.check(flat)) and monitor.failed == ["convexity"]
    assert monitor.restart_step() == 250
    assert monitor.check({**m, "valid_frac": 0.1}) and monitor.failed == []  # out of frame: no relative measure
    assert monitor.restart_step() == 500
    monitor.rewind(250, m)
    assert monitor.best_step == 250 and monitor.best["probe_loss"] == m["probe_loss"]
    monitor.rewind(0, {**m, "yaw_std_deg": 0.1})  # a snapshot whose yaw had not learned: nothing to export
    assert monitor.best_step is None and "probe_loss" not in monitor.best


def test_only_a_snapshot_whose_yaw_varies_becomes_the_lowest_loss_one():
    monitor, truth = HealthMonitor(), TruthDecomposer()
    m = probe(truth, truth.images)
    assert not monitor.update(250, {**m, "yaw_std_deg": 0.25, "probe_loss": m["probe_loss"] - 1})
    assert monitor.best_step is None and monitor.update(500, m) and monitor.best_step == 500
