"""Ward clustering of directions, region labels and purity (paper Fig. 6)."""

from __future__ import annotations

import numpy as np
import torch

from models.clustering import cosine_distance, purity, region_cosines, region_labels, ward_clusters


def test_ward_returns_three_planted_groups_whatever_the_signs():
    g = torch.Generator().manual_seed(0)
    centres = torch.linalg.qr(torch.randn(32, 3, generator=g))[0].T  # 3 orthogonal directions
    members = []
    for c in range(3):
        for _ in range(5):
            v = centres[c] + 0.15 * torch.randn(32, generator=g)
            members.append(v * (1 if torch.rand(1, generator=g) < 0.5 else -1))  # sign does not matter
    units = torch.stack(members)
    _, labels = ward_clusters(units, n_clusters=3)
    truth = np.repeat(np.arange(3), 5)
    assert purity(labels, truth) == 1.0 and len(set(labels)) == 3
    assert purity(np.ones(15, int), truth) == 5 / 15
    _, cut = ward_clusters(units, distance=5.0)  # a cut above every merge: one cluster
    assert len(set(cut)) == 1


def test_cosine_distance_is_sign_free_and_symmetric():
    v = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]])
    d = cosine_distance(v)
    np.testing.assert_allclose(d, [[0, 0, 1], [0, 0, 1], [1, 1, 0]], atol=1e-12)


def test_region_labels_take_the_majority_region():
    regions = torch.zeros(3, 4, 4, dtype=torch.bool)
    regions[0, :2], regions[1, 2:3], regions[2, 3:] = True, True, True
    touched = torch.zeros(3, 4, 4, dtype=torch.bool)
    touched[0, 0, :3] = True  # region 0
    touched[1, 2, :] = True
    touched[1, 3, 0] = True  # mostly region 1
    assert region_labels(touched, regions).tolist() == [0, 1, -1]


def test_region_cosines_separate_grouped_from_unrelated_directions():
    """Planted groups: within-region |cos| far above across; random directions: equal means."""
    g = torch.Generator().manual_seed(1)
    centres = torch.linalg.qr(torch.randn(64, 3, generator=g))[0].T
    grouped = torch.stack([centres[c] + 0.05 * torch.randn(64, generator=g) for c in range(3) for _ in range(6)])
    own = np.repeat(np.arange(3), 6)
    within, across = region_cosines(grouped, own)
    assert within > 0.7 and across < 0.1
    scattered = torch.randn(300, 64, generator=g)
    within, across = region_cosines(scattered, np.arange(300) % 3)
    assert abs(within - across) < 0.01
    assert np.isnan(region_cosines(grouped[:2], np.array([-1, 0]))[0])
