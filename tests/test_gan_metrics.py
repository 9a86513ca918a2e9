"""FID and PPL math on cases with known answers, and the stage's metrics on a tiny run."""

import numpy as np
import pytest
import torch

from models.gan_metrics import feature_statistics, frechet_distance, path_length, ppl_summary


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    # 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2
    mu1, mu2 = np.array([1.0]), np.array([3.0])
    s1, s2 = np.array([[4.0]]), np.array([[1.0]])
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(4.0 + (2 - 1) ** 2)
    # diagonal: per-dimension sums
    a = np.diag([1.0, 4.0, 9.0])
    b = np.diag([4.0, 4.0, 1.0])
    expected = 1.0 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert frechet_distance(np.zeros(3), a, np.array([1.0, 0, 0]), b) == pytest.approx(expected)
    # sample statistics: identical sets -> ~0, shifted set -> shift^2
    x = rng.normal(size=(4000, 4))
    m, s = feature_statistics(x)
    assert abs(frechet_distance(m, s, m, s)) < 1e-6
    m2, s2 = feature_statistics(x + 2.0)
    assert frechet_distance(m, s, m2, s2) == pytest.approx(16.0, rel=1e-6)


def test_frechet_distance_equals_the_reference_matrix_square_root():
    """The eigenvalue form against the reference code's Tr(sqrtm(S1 S2)), full-rank and singular (N < D)."""
    import scipy.linalg

    rng = np.random.default_rng(1)
    for n, d in ((500, 40), (20, 64)):
        x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + 0.5
        (m1, s1), (m2, s2) = feature_statistics(x), feature_statistics(y)
        reference = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
        assert frechet_distance(m1, s1, m2, s2) == pytest.approx(reference, rel=1e-6, abs=1e-6)


def test_path_length_of_a_linear_generator():
    # G(w) = A w with L2 distance squared: d / eps^2 = |A (w1 - w0)|^2 exactly
    A = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = torch.randn(20, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    lengths = path_length(
        lambda z: z,
        lambda w: w @ A.T,
        lambda a, b: ((a - b) ** 2).sum(1),
        z,
        epsilon=1e-3,
        generator=torch.Generator().manual_seed(3),
    )
    expected = ((z[10:] - z[:10]) @ A.T).pow(2).sum(1)
    torch.testing.assert_close(lengths, expected)
    assert ppl_summary(lengths) <= float(expected.max())
    # the percentile trim drops outliers but never everything
    assert ppl_summary(torch.tensor([1.0, 2.0])) == 1.5
    assert ppl_summary(torch.cat([torch.ones(200), torch.tensor([1e6])])) == 1.0


def test_train_gan_reports_fid_and_ppl_with_their_space(repo_root, tmp_path):
    from support.inception import inception_path

    inception_path()  # installed by the Makefile; a missing network must fail, not skip
    from stages import faces, train_gan
    from tests.test_gan_stages import tiny

    params = tiny(repo_root, kind="linear", fid_samples=6, ppl_samples=2)
    faces.run(params, tmp_path / "f.zarr", tmp_path / "r.csv", tmp_path / "m.json")
    result = train_gan.run(params, tmp_path / "f.zarr", tmp_path / "g", tmp_path / "run", tmp_path / "gm.json")
    assert result["fid"] > 0 and np.isfinite(result["fid"]) and "Inception-v3" in result["fid_space"]
    assert result["ppl"] > 0 and "eps 1e-4" in result["ppl_space"]
    assert 0 <= result["mean_abs_rho"] < 1 and "W" in result["mean_abs_rho_space"]


# ------------------------------------------------------------------ in the real Inception-v3 space


@pytest.fixture(scope="module")
def faces32():
    from models import faces

    f = faces.sample_factors(24, torch.Generator().manual_seed(0))
    images, _ = faces.render_faces(f, 32)
    return images * 2 - 1  # [24, 3, 32, 32] in [-1, 1]


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(faces32):
    from support.inception import inception_features

    real = feature_statistics(inception_features(faces32))
    assert abs(frechet_distance(*real, *real)) < 1e-3
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(faces32.shape, generator=g)
    fids = [
        frechet_distance(*real, *feature_statistics(inception_features((faces32 + s * noise).clamp(-1, 1))))
        for s in (0.1, 0.4)
    ]
    assert 0 < fids[0] < fids[1], fids


def test_ppl_is_larger_for_a_generator_with_larger_jumps(faces32):
    """Two generators between the same two faces: a smooth blend and a near-step one. In Inception
    space (the PPL the stage reports) the abrupt one has the longer paths."""
    from support.inception import inception_sq_distance

    a, b = faces32[:1], faces32[1:2]

    def blend(sharpness):
        return lambda w: a + (b - a) * torch.sigmoid(sharpness * w[:, :1, None, None])

    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(2)) * 0.2
    smooth, jumpy = (
        ppl_summary(
            path_length(
                lambda z: z,
                blend(k),
                inception_sq_distance,
                z,
                epsilon=1e-2,
                generator=torch.Generator().manual_seed(3),
            )
        )
        for k in (1.0, 40.0)
    )
    assert jumpy > 5 * smooth > 0, (smooth, jumpy)
