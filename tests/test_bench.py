"""The bench's bookkeeping: training budgets followed through stages, and the 'beats' figures."""

import json

import pytest

from snapdistill.bench.toy import best_students, fake_rows, ratios, routes_at, teacher_rows, training_budget


def _run(folder, stage, steps, teacher, **config):
    (folder / "student").mkdir(parents=True)
    manifest = {"stage": stage, "counts": {"steps": steps, "samples": steps * 32},
                "metrics": {"train_seconds": 12.34}, "config": {"common": {"train": {"lr": 3e-4}}, **config},
                "inputs": [{"path": str(teacher)}, {"path": "shards"}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_training_budget_follows_the_teacher_chain(tmp_path):
    _run(tmp_path / "guided", "distill-guidance", 1200, "/weights/toy")
    _run(tmp_path / "direct8", "distill-steps", 500, tmp_path / "guided" / "student", mode="direct", from_steps=16,
         to_steps=8, teacher_substeps=2)
    stages = training_budget(str(tmp_path / "direct8" / "student"))
    assert [(s["run"], s["steps"], s["samples"]) for s in stages] == [("guided", 1200, 38400), ("direct8", 500, 16000)]
    assert [s["teacher_rows_per_sample"] for s in stages] == [2.0, 4.0]
    assert [s["seconds_per_step"] for s in stages] == [round(12.34 / 1200, 3), round(12.34 / 500, 3)]


def test_teacher_rows_per_sample_of_each_route():
    base = {"mode": "direct", "from_steps": 16, "to_steps": 8, "teacher_substeps": 2, "cfg_prob": 0.1}
    assert teacher_rows("distill-steps", base, teacher_takes_w=False) == 4 * 1.1  # CFG on 10% of batches
    assert teacher_rows("distill-steps", {**base, "embed_guidance": True}, teacher_takes_w=False) == 8.0
    assert teacher_rows("distill-steps", {**base, "to_steps": 4}, teacher_takes_w=True) == 8.0
    assert teacher_rows("distill-steps", {**base, "mode": "progressive", "from_steps": 8, "to_steps": 4},
                        teacher_takes_w=True) == 4.0
    # A round whose teacher is a step student lands by one DDIM step per teacher step (`landings`, as resolved).
    landed = {**base, "mode": "progressive", "from_steps": 4, "to_steps": 2, "teacher_substeps": None,
              "landings": [{"round": [4, 2], "teacher_substeps": 1, "teacher_solver": "ddim"}]}
    assert teacher_rows("distill-steps", landed, teacher_takes_w=True) == 2.0
    assert teacher_rows("distill-steps", {"mode": "consistency"}, teacher_takes_w=True) == 2.0
    assert teacher_rows("distill-steps", {"mode": "consistency"}, teacher_takes_w=False) == 3.0
    assert teacher_rows("distill-decoder", {}, teacher_takes_w=False) is None
    # dmd: one real-score call per generator sample, CFG (2 rows) unless the teacher takes w or guidance is 1.
    dmd = {"mode": "dmd", "dmd": {"real_guidance": 3.0, "fake_updates": 5}}
    assert teacher_rows("distill-steps", dmd, teacher_takes_w=False) == 2.0
    assert teacher_rows("distill-steps", dmd, teacher_takes_w=True) == 1.0
    assert teacher_rows("distill-steps", {"mode": "dmd", "dmd": {"real_guidance": 1.0}}, teacher_takes_w=False) == 1.0
    assert fake_rows(dmd) == {"fake_rows_per_sample": 6, "generator_rows_per_sample": 5} and fake_rows(base) == {}
    # A 4-step generator draws each sample in 4 calls; the GAN term adds a fake call per update and one for G.
    multi = {"mode": "dmd", "to_steps": 4, "dmd": {"real_guidance": 1.5, "fake_updates": 5, "gan_weight": 3e-3}}
    assert fake_rows(multi) == {"fake_rows_per_sample": 12, "generator_rows_per_sample": 20}


def _row(fid, exact, mse):
    return {"fid": fid, "exact": exact, "mse_vs_ref": mse, "s_per_image": 1.0}


def test_q8_beats_d8_only_on_every_figure():
    rows = {"teacher16_cfg": _row(400, 0.97, 0), "teacher8_cfg": _row(560, 0.85, 0.0028),
            "guided8_dpm": _row(740, 0.75, 0.0053), "direct8": _row(420, 0.96, 0.0015)}
    out = ratios(rows)
    assert out["D8"] == 560 / 400 and out["Q8"] == 420 / 400 and out["Q8_beats_D8"] == 1.0
    rows["direct8"] = _row(420, 0.80, 0.0015)  # better FID, worse exact: no
    assert ratios(rows)["Q8_beats_D8"] == 0.0


def test_consistency_rows_sample_one_run_at_2_4_8_and_their_ratios():
    from snapdistill.bench.toy import ROWS

    assert {n: ROWS[n][:2] for n in ("consistency2", "consistency4", "consistency8")} == {
        "consistency2": ("consistency", 2), "consistency4": ("consistency", 4), "consistency8": ("consistency", 8)}
    rows = {"teacher16_cfg": _row(400, 0.97, 0), "consistency4": _row(500, 0.9, 0.003),
            "consistency8": _row(450, 0.9, 0.002), "consistency_base4": _row(600, 0.8, 0.004)}
    out = ratios(rows)
    assert (out["Q4_consistency"], out["Q8_consistency"], out["Q4_consistency_base"]) == (1.25, 1.125, 1.5)
    assert "Q8_consistency_base" not in out  # a row that was not built gives no figure


def test_q2_and_q1_are_the_best_student_at_that_step_count():
    def student(fid, exact, steps, samples, seconds):
        return {**_row(fid, exact, 0.01), "steps": steps, "training": [{"teacher_rows_per_sample": 2.0}],
                "train_samples": samples, "train_seconds": seconds}

    rows = {"teacher16_cfg": {**_row(400, 0.97, 0), "steps": 16}, "teacher1_cfg": {**_row(9000, 0.1, 0.2), "steps": 1},
            "teacher2_cfg": {**_row(6000, 0.2, 0.1), "steps": 2},
            "progressive2": student(420, 0.95, 2, 110000, 500.0), "consistency2": student(900, 0.7, 2, 54400, 300.0),
            "progressive1": student(600, 0.8, 1, 140000, 700.0)}
    out = ratios(rows)
    assert (out["Q2_progressive"], out["Q1_progressive"], out["B2"], out["B1"]) == (1.05, 1.5, 15.0, 22.5)
    assert (out["Q2"], out["Q1"]) == (1.05, 1.5)
    best = best_students(rows)
    assert best[2] == {"row": "progressive2", "ratio": 1.05, "exact": 0.95, "exact_vs_reference": pytest.approx(-0.02),
                       "train_samples": 110000, "teacher_rows_per_sample": 2.0, "train_seconds": 500.0}
    rows["consistency2"]["fid"] = 380.0  # a better 2-step student of another route becomes Q2
    assert best_students(rows)[2]["row"] == "consistency2" and ratios(rows)["Q2"] == 0.95
    assert "Q4" not in ratios(rows)  # no 4-step student among these rows
    # A dmd generator better than progressive1 becomes Q1; the route table lists both 1-step routes, best first.
    rows["dmd1"] = student(500, 0.9, 1, 20000, 1400.0)
    out = ratios(rows)
    assert (out["Q1_dmd"], out["Q1"], out["Q1_progressive"]) == (1.25, 1.25, 1.5)
    rows["dmd2"] = student(410, 0.96, 2, 20000, 1200.0)
    out = ratios(rows)
    assert (out["Q2_dmd"], out["Q2"]) == (410 / 400, 0.95) and "Q4_dmd" not in out
    table = routes_at(rows)
    assert list(table["1"]) == ["dmd1", "progressive1"]
    assert list(table["2"]) == ["consistency2", "dmd2", "progressive2"] and "4" not in table
    assert table["1"]["dmd1"]["train_seconds"] == 1400.0 and table["1"]["progressive1"]["train_samples"] == 140000


def test_speed_figures_time_the_rows_in_turn(tmp_path, monkeypatch):
    """S is the reference's fastest batch over direct8's, timed in turn: on a fake clock where the teacher's batches
    take 32, 30, 31 s, direct8's 9, 8, 10 s and the small decoder's 7, 8, 6 s (warm-up first), S = 30/8 and
    S_smalldec = 30/6; without a finished decoder run there is no S_smalldec, without direct8 no figures."""
    from snapdistill.bench import speed

    assert speed.speed_figures(tmp_path) == {}
    _run(tmp_path / "direct8", "distill-steps", 500, "/weights/toy")
    clock, order = [0.0], []
    costs = {"toy": [32.0, 30.0, 31.0], "direct8": [9.0, 8.0, 10.0], "decoder": [7.0, 8.0, 6.0]}

    def fake(model, steps, guidance, scheduler, batch, decoder):
        key = "decoder" if decoder else ("toy" if model == "toy" else "direct8")
        values = iter(costs[key])

        def generate():
            order.append(key)
            clock[0] += next(values)
        return generate, 0

    monkeypatch.setattr(speed, "generate_batch", fake)
    monkeypatch.setattr("snapdistill.sampling.inspect.time.perf_counter", lambda: clock[0])
    out = speed.speed_figures(tmp_path, batch=2, repeats=2, variants=False)
    assert out == {"teacher16_cfg_s_per_image": 15.0, "direct8_s_per_image": 4.0, "S": 30 / 8}
    assert order == ["toy", "direct8"] * 3
    (tmp_path / "decoder").mkdir()
    (tmp_path / "decoder" / "manifest.json").write_text("{}")
    order.clear()
    costs = {"toy": [32.0, 30.0, 31.0], "direct8": [9.0, 8.0, 10.0], "decoder": [7.0, 8.0, 6.0]}
    out = speed.speed_figures(tmp_path, batch=2, repeats=2, variants=False)
    assert out["S"] == 30 / 8 and out["S_smalldec"] == 30 / 6 and order == ["toy", "direct8", "decoder"] * 3


def test_speed_variants_time_each_pair_in_turn_and_s_fastest_takes_each_sides_best(tmp_path, monkeypatch):
    """Each variant loads the reference and the student with its flags and times them in turn; on a fake clock
    (warm-up first) where channels-last speeds the teacher only and compile the student only, S per variant is
    that pair's ratio and S_fastest the teacher's best over the student's best."""
    from snapdistill.bench import speed

    _run(tmp_path / "direct8", "distill-steps", 500, "/weights/toy")
    clock, calls = [0.0], []
    costs = {("toy", ()): 30.0, ("direct8", ()): 8.0, ("toy", ("channels_last",)): 24.0,
             ("direct8", ("channels_last",)): 8.0, ("toy", ("compile",)): 30.0, ("direct8", ("compile",)): 5.0}

    def fake(model, steps, guidance, scheduler, batch, decoder, **flags):
        key = ("toy" if model == "toy" else "direct8", tuple(k for k, v in flags.items() if v))
        calls.append(key)

        def generate():
            clock[0] += costs[key]
        return generate, 0

    monkeypatch.setattr(speed, "generate_batch", fake)
    monkeypatch.setattr(speed, "op_profile", lambda fn: {"top": {}})
    monkeypatch.setattr("snapdistill.sampling.inspect.time.perf_counter", lambda: clock[0])
    out = speed.speed_figures(tmp_path, batch=2, repeats=2)
    assert {k: v["S"] for k, v in out["variants"].items()} == {"plain": 30 / 8, "channels_last": 24 / 8,
                                                               "compile": 30 / 5}
    assert out["S_fastest"] == 24 / 5 and out["S"] == 30 / 8
    assert out["variants"]["compile"]["direct8_s_per_image"] == 2.5
    assert set(calls) == set(costs)


def test_a_fresh_section_is_the_json_another_interpreter_prints(tmp_path):
    from snapdistill.bench.rows import fresh_section

    (tmp_path / "figures.json").write_text('{"scaling_2w": 1.86, "start_method": "fork"}')
    assert fresh_section("json.tool", str(tmp_path / "figures.json")) == {"scaling_2w": 1.86, "start_method": "fork"}
