import pytest
import torch

from snapdistill.diffusion import cfg, guidance_embedding, student_w


def _pair(shape=(3, 4, 5, 5)):
    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def test_cfg_endpoints_and_closed_form():
    u, c = _pair()
    # diffusers' own form u + s·(c − u) is exact at s=0; at s=1 it is c up to one rounding of c − u.
    assert torch.equal(cfg(eps_u=u, eps_c=c, s=0.0), u)
    torch.testing.assert_close(cfg(eps_u=u, eps_c=c, s=1.0), c, rtol=0, atol=1e-6)
    assert torch.equal(cfg(eps_u=u, eps_c=c, s=7.5), u + 7.5 * (c - u))  # as StableDiffusionPipeline


def test_cfg_is_linear_in_s_and_per_sample():
    u, c = _pair()
    for s in (2.0, 4.0, 7.5):
        torch.testing.assert_close(
            cfg(eps_u=u, eps_c=c, s=s),
            (1 - s) * cfg(eps_u=u, eps_c=c, s=0.0) + s * cfg(eps_u=u, eps_c=c, s=1.0),
        )
    s = torch.tensor([1.0, 3.0, 7.5])
    batched = cfg(eps_u=u, eps_c=c, s=s)
    for i in range(3):
        torch.testing.assert_close(batched[i], cfg(eps_u=u[i], eps_c=c[i], s=s[i].item()))


def test_cfg_commutes_with_conversions():
    """Guiding raw v outputs then converting equals converting then guiding."""
    from snapdistill.diffusion import to_x0_eps

    u, c = _pair()
    z = torch.randn_like(u)
    kw = dict(z=z, alpha=0.3, sigma=(1 - 0.09) ** 0.5)
    x0_g, eps_g = to_x0_eps("v_prediction", output=cfg(eps_u=u, eps_c=c, s=5.0), **kw)
    (x0_u, eps_u), (x0_c, eps_c) = (
        to_x0_eps("v_prediction", output=u, **kw),
        to_x0_eps("v_prediction", output=c, **kw),
    )
    torch.testing.assert_close(x0_g, cfg(eps_u=x0_u, eps_c=x0_c, s=5.0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eps_g, cfg(eps_u=eps_u, eps_c=eps_c, s=5.0), rtol=1e-5, atol=1e-5)


def test_student_w():
    assert student_w(7.5) == 6.5
    assert student_w(1.0) == 0.0
    torch.testing.assert_close(student_w(torch.tensor([1.0, 8.0])), torch.tensor([0.0, 7.0]))


@pytest.mark.parametrize("dim", [256, 255])
@pytest.mark.parametrize(
    "w",
    [
        torch.tensor(6.5),
        torch.tensor([0.0]),
        torch.tensor([0.0, 1.5, 6.5, 13.0]),
        torch.tensor([2.0, 7.0], dtype=torch.float64),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_guidance_embedding_is_diffusers_bit_for_bit(dim, w, dtype):
    from diffusers import StableDiffusionPipeline

    ours = guidance_embedding(w, dim, dtype=dtype)
    ref = StableDiffusionPipeline.get_guidance_scale_embedding(
        None, w.reshape(-1), embedding_dim=dim, dtype=dtype
    )
    assert ours.dtype == ref.dtype == dtype
    assert ours.shape == (w.numel(), dim)
    assert torch.equal(ours, ref)
    if dim % 2:
        assert (ours[:, -1] == 0).all()


def test_guidance_embedding_values():
    """w=0 gives sin(0)=0 then cos(0)=1; a python float is a batch of one."""
    emb = guidance_embedding(0.0, 8)
    assert torch.equal(emb, torch.tensor([[0.0] * 4 + [1.0] * 4]))
    emb = guidance_embedding(0.001, 4)  # 1000·w = 1; frequencies 1 and 1e-4
    torch.testing.assert_close(
        emb, torch.tensor([[torch.sin(torch.tensor(1.0)), 1e-4, torch.cos(torch.tensor(1.0)), 1.0]])
    )
