"""Pure conversions between the prediction types epsilon, v_prediction and sample (x0).

All of them assume z = α·x0 + σ·eps. α and σ may be python floats, 0-d tensors, or [B] tensors
(one per sample), which broadcast over the remaining dimensions of the data.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from snapdistill.errors import SnapdistillError

Scalar = float | torch.Tensor

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def per_sample(value: Scalar, like: torch.Tensor) -> Scalar:
    """value as a factor for `like`: a [B] tensor becomes [B, 1, …, 1] in like's dtype and device."""
    if not isinstance(value, torch.Tensor):
        return value
    value = value.to(device=like.device, dtype=like.dtype)
    if value.ndim == 1 and like.ndim > 1:
        value = value.reshape(-1, *([1] * (like.ndim - 1)))
    return value


def x0_from_eps(*, z: torch.Tensor, eps: torch.Tensor, alpha: Scalar, sigma: Scalar) -> torch.Tensor:
    """x0 = (z − σ·eps)/α."""
    return (z - per_sample(sigma, z) * eps) / per_sample(alpha, z)


def eps_from_x0(*, z: torch.Tensor, x0: torch.Tensor, alpha: Scalar, sigma: Scalar) -> torch.Tensor:
    """eps = (z − α·x0)/σ."""
    return (z - per_sample(alpha, z) * x0) / per_sample(sigma, z)


def v_from_x0_eps(*, x0: torch.Tensor, eps: torch.Tensor, alpha: Scalar, sigma: Scalar) -> torch.Tensor:
    """v = α·eps − σ·x0."""
    return per_sample(alpha, x0) * eps - per_sample(sigma, x0) * x0


def x0_from_v(*, z: torch.Tensor, v: torch.Tensor, alpha: Scalar, sigma: Scalar) -> torch.Tensor:
    """x0 = α·z − σ·v."""
    return per_sample(alpha, z) * z - per_sample(sigma, z) * v


def eps_from_v(*, z: torch.Tensor, v: torch.Tensor, alpha: Scalar, sigma: Scalar) -> torch.Tensor:
    """eps = σ·z + α·v."""
    return per_sample(sigma, z) * z + per_sample(alpha, z) * v


# Each prediction type as a pair of small functions: raw output -> (x0, eps), and (x0, eps) -> output.


def _x0_eps_of_epsilon(z, output, alpha, sigma):
    """(x0, eps) = ((z − σ·output)/α, output)."""
    return x0_from_eps(z=z, eps=output, alpha=alpha, sigma=sigma), output


def _x0_eps_of_v(z, output, alpha, sigma):
    """(x0, eps) = (α·z − σ·output, σ·z + α·output)."""
    return x0_from_v(z=z, v=output, alpha=alpha, sigma=sigma), eps_from_v(
        z=z, v=output, alpha=alpha, sigma=sigma
    )


def _x0_eps_of_sample(z, output, alpha, sigma):
    """(x0, eps) = (output, (z − α·output)/σ)."""
    return output, eps_from_x0(z=z, x0=output, alpha=alpha, sigma=sigma)


def _epsilon_of(x0, eps, alpha, sigma):
    """output = eps."""
    return eps


def _v_of(x0, eps, alpha, sigma):
    """output = α·eps − σ·x0."""
    return v_from_x0_eps(x0=x0, eps=eps, alpha=alpha, sigma=sigma)


def _sample_of(x0, eps, alpha, sigma):
    """output = x0."""
    return x0


_TO_X0_EPS: dict[str, Callable] = {
    "epsilon": _x0_eps_of_epsilon,
    "v_prediction": _x0_eps_of_v,
    "sample": _x0_eps_of_sample,
}
_FROM_X0_EPS: dict[str, Callable] = {
    "epsilon": _epsilon_of,
    "v_prediction": _v_of,
    "sample": _sample_of,
}
assert tuple(_TO_X0_EPS) == tuple(_FROM_X0_EPS) == PREDICTION_TYPES


def check_prediction_type(prediction_type: str) -> str:
    """prediction_type, if it is one of PREDICTION_TYPES; otherwise a SnapdistillError."""
    if prediction_type not in _TO_X0_EPS:
        raise SnapdistillError(
            f"unknown prediction type {prediction_type!r}; known types: {', '.join(PREDICTION_TYPES)}"
        )
    return prediction_type


def to_x0_eps(
    prediction_type: str, *, z: torch.Tensor, output: torch.Tensor, alpha: Scalar, sigma: Scalar
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) from a model's raw output of the given prediction type."""
    return _TO_X0_EPS[check_prediction_type(prediction_type)](z, output, alpha, sigma)


def from_x0_eps(
    prediction_type: str, *, x0: torch.Tensor, eps: torch.Tensor, alpha: Scalar, sigma: Scalar
) -> torch.Tensor:
    """The raw output of the given prediction type that means (x0, eps)."""
    return _FROM_X0_EPS[check_prediction_type(prediction_type)](x0, eps, alpha, sigma)
