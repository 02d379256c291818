"""`snapdistill inspect`: parameter count, UNet calls per image (CFG or guidance input) and timing."""

import json

import pytest

from snapdistill.sampling.inspect import unet_calls_per_image


@pytest.fixture(scope="module")
def tiny_guided_dir(tmp_path_factory):
    """A tiny pipeline whose UNet takes the guidance embedding (like a distill-guidance student)."""
    from snapdistill.models.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-w"), seed=2, time_cond_proj_dim=32)


def _unet_params(folder):
    from diffusers import UNet2DConditionModel

    return sum(p.numel() for p in UNet2DConditionModel.from_pretrained(folder / "unet").parameters())


@pytest.mark.parametrize("steps, guidance, w_dim, calls", [
    (8, 7.5, None, 16), (8, 1.0, None, 8), (8, 0.0, None, 8), (4, 7.5, 256, 4), (20, 1.01, None, 40)])
def test_unet_calls_per_image(steps, guidance, w_dim, calls):
    assert unet_calls_per_image(steps, guidance, w_dim) == calls


@pytest.mark.parametrize("fixture, guidance, calls", [
    ("tiny_eps_dir", "7.5", 6), ("tiny_eps_dir", "1", 3), ("tiny_guided_dir", "7.5", 3)])
def test_inspect_json_counts_and_measures(request, cli, fixture, guidance, calls):
    folder = request.getfixturevalue(fixture)
    code, out, err = cli("inspect", folder, "--steps", 3, "--guidance", guidance, "--batch-size", 2, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["unet_parameters"] == _unet_params(folder)
    assert r["unet_calls_per_image"] == r["measured_unet_calls_per_image"] == calls
    assert r["guidance_embedding"] == (fixture == "tiny_guided_dir")
    assert r["s_per_image"] > 0 and (r["size"], r["batch_size"], r["steps"]) == (32, 2, 3)


def test_inspect_prints_params_and_calls(cli, tiny_eps_dir):
    code, out, err = cli("inspect", tiny_eps_dir, "--steps", 2, "--batch-size", 1)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1] == f"UNet parameters: {_unet_params(tiny_eps_dir):,} ({_unet_params(tiny_eps_dir) / 1e6:.2f}M)"
    assert lines[2] == "UNet calls per image: 4 (2 steps, guidance 7.5, classifier-free guidance: 2 per step)"
    assert lines[3].startswith("s/image: ")
    assert lines[4].startswith("training memory per process (estimate; same-size student, AdamW, EMA, batch 1, 32 px")


def test_inspect_default_steps_of_a_student(cli, tmp_path, tiny_eps_dir):
    """A student folder's recorded step count is the default, as in `sample`."""
    import shutil

    folder = shutil.copytree(tiny_eps_dir, tmp_path / "student")
    (folder / "snapdistill.json").write_text(json.dumps({"num_inference_steps": 2, "timesteps": [999, 499]}))
    code, out, err = cli("inspect", folder, "--guidance", "1", "--batch-size", 1, "--json")
    assert code == 0, err
    assert json.loads(out)["steps"] == 2 and json.loads(out)["unet_calls_per_image"] == 2


@pytest.mark.parametrize("args, message", [
    (("--steps", "0"), "--steps must be a positive integer"),
    (("--batch-size", "0"), "--batch-size must be positive"),
])
def test_inspect_bad_input(cli, tiny_eps_dir, args, message):
    code, _, err = cli("inspect", tiny_eps_dir, *args)
    assert code == 2 and message in err and err.count("\n") == 1


def test_inspect_unknown_model(cli):
    code, _, err = cli("inspect", "sd99")
    assert code == 2 and "unknown teacher 'sd99'" in err


def test_repeated_seconds_warms_up_once_then_times_each_call(monkeypatch):
    """On a fake clock each call of fn takes 1, 2, 3, ... seconds: the warm-up (1 s) is not among the values."""
    from snapdistill.sampling import inspect

    clock = [0.0]
    calls = []

    def fn():
        calls.append(1)
        clock[0] += len(calls)

    monkeypatch.setattr(inspect.time, "perf_counter", lambda: clock[0])
    assert inspect.repeated_seconds(fn, repeats=4) == [2.0, 3.0, 4.0, 5.0] and len(calls) == 5
    calls.clear()
    assert inspect.median_seconds(fn, repeats=3) == 3.0


def test_fastest_seconds_alternates_and_keeps_each_minimum(monkeypatch):
    """On a fake clock `a` takes 5, 3, 4 s and `b` 2, 6, 1 s over the warm-up and two rounds: the calls alternate
    (a, b, a, b) after one warm-up each, and each keeps its own fastest timed call, not the warm-up's."""
    from snapdistill.sampling import inspect

    clock, order = [0.0], []
    cost = {"a": iter([5.0, 3.0, 4.0]), "b": iter([2.0, 6.0, 1.0])}

    def call(name):
        def fn():
            order.append(name)
            clock[0] += next(cost[name])
        return fn

    monkeypatch.setattr(inspect.time, "perf_counter", lambda: clock[0])
    best = inspect.fastest_seconds({"a": call("a"), "b": call("b")}, repeats=2)
    assert best == {"a": 3.0, "b": 1.0}
    assert order == ["a", "b", "a", "b", "a", "b"]


def test_fastest_runs_keeps_what_the_fastest_call_returned(monkeypatch):
    from snapdistill.sampling import inspect

    clock, costs = [0.0], iter([4.0, 2.0, 3.0])

    def fn():
        cost = next(costs)
        clock[0] += cost
        return f"took {cost:g}"

    monkeypatch.setattr(inspect.time, "perf_counter", lambda: clock[0])
    assert inspect.fastest_runs({"a": fn}, repeats=3, warmup=False) == {"a": (2.0, "took 2")}
