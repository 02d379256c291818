import itertools

import pytest
import torch

from snapdistill.diffusion import (
    PREDICTION_TYPES,
    NoiseSchedule,
    eps_from_v,
    eps_from_x0,
    from_x0_eps,
    per_sample,
    to_x0_eps,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)
from snapdistill.errors import SnapdistillError
from snapdistill.models.tiny import SD_SCHEDULER_CONFIG

SD = NoiseSchedule.from_scheduler_config(SD_SCHEDULER_CONFIG)


def _data(seed=0, shape=(3, 4, 5, 5), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)


# (alpha, sigma) as a python float, a 0-d tensor and a per-sample [B] tensor.
ALPHA_SIGMAS = [
    (0.6, 0.8),
    (torch.tensor(0.28, dtype=torch.float64), torch.tensor(0.96, dtype=torch.float64)),
    (
        SD.alpha(torch.tensor([10, 500, 999]), torch.float64),
        SD.sigma(torch.tensor([10, 500, 999]), torch.float64),
    ),
]


def test_per_sample_broadcasts_and_casts():
    like = torch.zeros(3, 4, 5, 5, dtype=torch.float16)
    assert per_sample(0.5, like) == 0.5
    v = per_sample(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), like)
    assert v.shape == (3, 1, 1, 1) and v.dtype == torch.float16
    assert per_sample(torch.tensor(2.0), like).shape == ()


@pytest.mark.parametrize("alpha, sigma", ALPHA_SIGMAS)
def test_closed_forms(alpha, sigma):
    x0, eps = _data()
    a, s = per_sample(alpha, x0), per_sample(sigma, x0)
    z = a * x0 + s * eps
    v = a * eps - s * x0
    kw = dict(alpha=alpha, sigma=sigma)
    torch.testing.assert_close(x0_from_eps(z=z, eps=eps, **kw), x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(eps_from_x0(z=z, x0=x0, **kw), eps, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(v_from_x0_eps(x0=x0, eps=eps, **kw), v, rtol=0, atol=0)
    torch.testing.assert_close(x0_from_v(z=z, v=v, **kw), x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(eps_from_v(z=z, v=v, **kw), eps, rtol=1e-12, atol=1e-12)
    outputs = {"epsilon": eps, "v_prediction": v, "sample": x0}
    assert set(outputs) == set(PREDICTION_TYPES)
    for name, output in outputs.items():
        got_x0, got_eps = to_x0_eps(name, z=z, output=output, **kw)
        torch.testing.assert_close(got_x0, x0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_eps, eps, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(from_x0_eps(name, x0=x0, eps=eps, **kw), output, rtol=0, atol=0)


@pytest.mark.parametrize("alpha, sigma", ALPHA_SIGMAS)
@pytest.mark.parametrize("src, dst", list(itertools.product(PREDICTION_TYPES, repeat=2)))
def test_round_trip_every_pair(src, dst, alpha, sigma):
    """src output -> (x0, eps) -> dst output -> (x0, eps) -> src output gives back the start."""
    z, output = _data(seed=1)
    kw = dict(alpha=alpha, sigma=sigma)
    x0, eps = to_x0_eps(src, z=z, output=output, **kw)
    other = from_x0_eps(dst, x0=x0, eps=eps, **kw)
    x0_back, eps_back = to_x0_eps(dst, z=z, output=other, **kw)
    torch.testing.assert_close(x0_back, x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(eps_back, eps, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        from_x0_eps(src, x0=x0_back, eps=eps_back, **kw), output, rtol=1e-10, atol=1e-10
    )


def test_x0_error_amplification_at_high_noise():
    """Near α→0 an error δ in eps becomes (σ/α)·δ in x0; in v it becomes σ·δ; in sample δ."""
    alpha, sigma = SD.alpha(999, torch.float64), SD.sigma(999, torch.float64)
    assert (sigma / alpha).item() == pytest.approx(14.6, abs=0.05)
    x0, eps = _data(seed=2)
    z = alpha * x0 + sigma * eps
    delta = 1e-3 * torch.randn_like(x0)
    kw = dict(z=z, alpha=alpha, sigma=sigma)
    err = {
        name: (
            to_x0_eps(name, output=from_x0_eps(name, x0=x0, eps=eps, alpha=alpha, sigma=sigma) + delta, **kw)[
                0
            ]
            - x0
        )
        for name in PREDICTION_TYPES
    }
    gain = {name: (e.norm() / delta.norm()).item() for name, e in err.items()}
    assert gain["epsilon"] == pytest.approx(14.61, abs=0.01)
    assert gain["v_prediction"] == pytest.approx(sigma.item(), rel=1e-9)
    assert gain["sample"] == pytest.approx(1.0, rel=1e-9)


def test_float32_rounding_at_alpha_1e_4():
    """In float32 at α = 1e-4, v and sample recover x0 to rounding; eps amplifies z's rounding by σ/α."""
    alpha = 1e-4
    sigma = (1 - alpha**2) ** 0.5
    x0, eps = _data(seed=3)
    z = alpha * x0 + sigma * eps
    exact = {name: from_x0_eps(name, x0=x0, eps=eps, alpha=alpha, sigma=sigma) for name in PREDICTION_TYPES}
    z32 = z.float()
    err = {
        name: (to_x0_eps(name, z=z32, output=out.float(), alpha=alpha, sigma=sigma)[0].double() - x0)
        .abs()
        .max()
        .item()
        for name, out in exact.items()
    }
    assert err["sample"] < 1e-6
    assert err["v_prediction"] < 1e-6
    assert err["epsilon"] > 5e-4  # ≈ 1e4 × float32's rounding of |z| ≈ 1
    assert err["epsilon"] > 1000 * err["v_prediction"]


def test_unknown_prediction_type_names_the_known_ones():
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(SnapdistillError, match="'flow'.*epsilon, v_prediction, sample"):
        to_x0_eps("flow", z=x, output=x, alpha=1.0, sigma=0.0)
    with pytest.raises(SnapdistillError, match="'eps'"):
        from_x0_eps("eps", x0=x, eps=x, alpha=1.0, sigma=0.0)
