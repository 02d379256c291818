from types import SimpleNamespace

import pytest
import torch

from snapdistill.diffusion import (
    PREDICTION_TYPES,
    DiffusionModel,
    NoiseSchedule,
    Prediction,
    cfg,
    eps_from_x0,
    from_x0_eps,
    x0_from_eps,
)
from snapdistill.errors import SnapdistillError
from snapdistill.models.tiny import SD_SCHEDULER_CONFIG, tiny_components

SD = NoiseSchedule.from_scheduler_config(SD_SCHEDULER_CONFIG)


@pytest.fixture(scope="module")
def unet():
    return tiny_components(prediction_type="epsilon")["unet"]


class Reparametrised(torch.nn.Module):
    """A model of another prediction type whose outputs mean exactly what an eps model's do."""

    def __init__(self, eps_model, prediction_type):
        super().__init__()
        self.eps_model, self.prediction_type = eps_model, prediction_type

    def forward(self, z, t, encoder_hidden_states, timestep_cond=None, return_dict=True):
        eps = self.eps_model(z, t, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
        alpha, sigma = SD.alpha_sigma(t)
        x0 = x0_from_eps(z=z, eps=eps, alpha=alpha, sigma=sigma)
        return (from_x0_eps(self.prediction_type, x0=x0, eps=eps, alpha=alpha, sigma=sigma),)


def _inputs(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 4, 8, 8, generator=g)
    cond = torch.randn(batch, 77, 32, generator=g)
    uncond = torch.randn(1, 77, 32, generator=g)
    return z, cond, uncond


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_wrappers_of_every_type_agree(unet, prediction_type):
    z, cond, _ = _inputs()
    t = torch.tensor([999, 400])
    eps_model = DiffusionModel(unet, SD, "epsilon")
    other = DiffusionModel(Reparametrised(unet, prediction_type), SD, prediction_type)
    with torch.no_grad():
        a, b = eps_model.predict(z, t, cond), other.predict(z, t, cond)
    torch.testing.assert_close(b.x0, a.x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.eps, a.eps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.as_type(prediction_type), b.output, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.as_type("epsilon"), a.output, rtol=1e-5, atol=1e-5)
    assert (a.prediction_type, b.prediction_type) == ("epsilon", prediction_type)


def test_predict_reads_the_schedule_per_sample(unet):
    """x0 and eps satisfy z = α_t·x0 + σ_t·eps with each sample's own t; the raw output is eps."""
    z, cond, _ = _inputs()
    t = torch.tensor([999, 50])
    with torch.no_grad():
        pred = DiffusionModel(unet, SD, "epsilon").predict(z, t, cond)
        ref = unet(z, t, encoder_hidden_states=cond).sample
    assert torch.equal(pred.output, ref) and torch.equal(pred.eps, ref)
    for i in range(2):
        a, s = SD.alpha(t[i]), SD.sigma(t[i])
        torch.testing.assert_close(a * pred.x0[i] + s * pred.eps[i], z[i], rtol=1e-5, atol=1e-5)
    assert pred.alpha.shape == (2,)
    for name in PREDICTION_TYPES:  # re-expressing in its own type or via x0/eps round-trips
        back = Prediction.from_output(
            name, z=z, output=pred.as_type(name), alpha=pred.alpha, sigma=pred.sigma
        )
        torch.testing.assert_close(back.x0, pred.x0, rtol=1e-5, atol=1e-5)


def test_predict_cfg_matches_two_calls(unet):
    z, cond, uncond = _inputs(batch=3)
    t = torch.tensor([999, 600, 100])
    s = torch.tensor([1.0, 4.0, 7.5])
    model = DiffusionModel(unet, SD, "epsilon")
    with torch.no_grad():
        guided = model.predict_cfg(z, t, cond, uncond, s)
        p_c = model.predict(z, t, cond)
        p_u = model.predict(z, t, uncond.expand_as(cond))
    torch.testing.assert_close(guided.eps, cfg(eps_u=p_u.eps, eps_c=p_c.eps, s=s), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guided.x0, cfg(eps_u=p_u.x0, eps_c=p_c.x0, s=s), rtol=1e-4, atol=1e-4)
    # s=1 on the first sample: the guided prediction is the conditional one.
    torch.testing.assert_close(guided.eps[0], p_c.eps[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(guided.eps[2], p_c.eps[2], atol=1e-3)


def test_predict_cfg_with_scale_one_is_the_cond_prediction(unet):
    z, cond, uncond = _inputs()
    model = DiffusionModel(Reparametrised(unet, "v_prediction"), SD, "v_prediction")
    with torch.no_grad():
        guided = model.predict_cfg(z, 500, cond, uncond, 1.0)
        plain = model.predict(z, 500, cond)
    torch.testing.assert_close(guided.output, plain.output, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guided.x0, plain.x0, rtol=1e-5, atol=1e-5)


def test_from_pipeline_reads_prediction_type_and_schedule():
    components = tiny_components(prediction_type="v_prediction")
    pipe = SimpleNamespace(unet=components["unet"], scheduler=components["scheduler"])
    model = DiffusionModel.from_pipeline(pipe)
    assert model.prediction_type == "v_prediction"
    assert model.unet is components["unet"]
    assert torch.equal(model.schedule.alphas_cumprod, SD.alphas_cumprod)
    z, cond, _ = _inputs()
    with torch.no_grad():
        pred = model.predict(z, 999, cond)
    # For a v model, x0 = α·z − σ·v.
    torch.testing.assert_close(pred.x0, SD.alpha(999) * z - SD.sigma(999) * pred.output, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        pred.eps, eps_from_x0(z=z, x0=pred.x0, alpha=SD.alpha(999), sigma=SD.sigma(999)), rtol=1e-4, atol=1e-4
    )


def test_unknown_prediction_type_is_refused(unet):
    with pytest.raises(SnapdistillError, match="'flow_prediction'.*epsilon, v_prediction, sample"):
        DiffusionModel(unet, SD, "flow_prediction")
