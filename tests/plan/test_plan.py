"""`pclsim plan`: calibration files, fits, predictions on a node, what will not fit, and the command line."""

import json

import pytest
import yaml

from pclsim.errors import PclsimError
from pclsim.plan.calibration import Calibration, fit_line, fit_terms, load_calibration
from pclsim.plan.command import plan_scenario, this_node
from pclsim.plan.predict import GB, Node, make_plan
from pclsim.plan.work import FAMILIES, STAGES, Sizes, TaskSize
from pclsim.study.scenario import resolve
from pclsim_cli import cli

PROFILE = {"grid": (8, 8), "dim": 152, "macs": 2e7, "params": 4.6e6, "peak_module_bytes": 8e5, "levels_bytes": 2e4}
TASKS = ["Brain_AD", "Chest_AD"]


def calibration(seconds_per_unit=1e-9, intercept=5.0, memory_slope=1.0, devices=("cpu",)) -> Calibration:
    stage = {st: {"intercept_s": intercept, "per_unit_s": seconds_per_unit} for st in STAGES}
    for st in ("selections", "re-reductions", "candidate tables", "trials"):  # makespans in job seconds
        stage[st] = {"intercept_s": intercept, "per_unit_s": 1.0}
    stage["families"] = {f: {t: seconds_per_unit * 1e3 for t in terms} for f, terms in FAMILIES.items()}
    return Calibration({d: json.loads(json.dumps(stage)) for d in devices},
                       {st: {"intercept_bytes": 1e9, "slope": memory_slope} for st in STAGES},
                       {"cpus": 2, "gpus": 0}, {"date": "2026-01-01", "sizes": [4, 8]})


def synthetic(memory_sizes=(20,), train=4, test=4, **extra):
    raw = {"dataset": {"kind": "synthetic", "tasks": TASKS, "image_size": 64,
                       "synthetic": {"train": train, "test": test}},
           "strategies": ["patchcore_cl", "joint", "multi_model", "finetune"], "memory_sizes": list(memory_sizes)}
    raw.update(extra)
    return raw


def sizes(train=4, test=4) -> Sizes:
    return Sizes({t: TaskSize(t, train, train, test, 0, t == "Brain_AD") for t in TASKS}, PROFILE, 64, 2, 32, True)


def node(**kw) -> Node:
    return Node(**{"cpus": 2, "gpus": 0, "memory": 16 * GB, "disk": 100 * GB, "disk_path": "/cache", **kw})


# -------------------------------------------------------------------------------------- calibration files
def test_calibration_round_trip(tmp_path):
    cal = calibration(3e-10)
    path = cal.save(tmp_path / "cal.json")
    back = load_calibration(path)
    assert back.time == cal.time and back.memory == cal.memory and back.node == cal.node
    assert back.measured == cal.measured and back.path == str(path)


def test_environment_names_the_calibration_file(tmp_path, monkeypatch):
    path = calibration(7e-10).save(tmp_path / "env.json")
    monkeypatch.setenv("PCLSIM_PLAN_CALIBRATION", str(path))
    assert load_calibration().time["cpu"]["extraction"]["per_unit_s"] == 7e-10


@pytest.mark.parametrize("body,needle", [
    (None, "calibration file not found"),
    ("{not json", "not JSON"),
    (json.dumps({"format": "other"}), "format 'other'"),
    ("drop:time.cpu.trials", "time.cpu.trials: missing"),
    ("drop:memory.summary", "memory.summary: missing"),
    ("bad:time.cpu.selections.per_unit_s", "time.cpu.selections.per_unit_s: expected a non-negative number"),
    ("drop:time.cpu.families.trial", "time.cpu.families.trial: missing"),
    ("bad:time.cpu.families.greedy.steps", "time.cpu.families.greedy.steps: expected a non-negative number"),
])
def test_a_missing_or_invalid_calibration_is_one_clear_error(tmp_path, body, needle):
    path = tmp_path / "cal.json"
    if body is not None and ":" in body and body.split(":")[0] in ("drop", "bad"):
        what, key = body.split(":")
        raw = calibration().to_json()
        *parents, last = key.split(".")
        d = raw
        for k in parents:
            d = d[k]
        if what == "drop":
            del d[last]
        else:
            d[last] = -1
        path.write_text(json.dumps(raw))
    elif body is not None:
        path.write_text(body)
    with pytest.raises(PclsimError) as e:
        load_calibration(path)
    assert str(path) in str(e.value) and needle in str(e.value)
    assert "bench_plan.py --calibrate" in str(e.value) or "cannot read" in str(e.value)


def test_the_bundled_calibration_loads():
    cal = load_calibration()
    assert "cpu" in cal.time and cal.node.get("cpus")


# -------------------------------------------------------------------------------------- fits
def test_fit_line_recovers_a_line_and_falls_back_where_x_does_not_vary():
    assert fit_line([1, 2, 3, 4], [12, 14, 16, 18]) == pytest.approx((10, 2))
    assert fit_line([1, 2, 3], [3, 2, 1]) == pytest.approx((2, 0))  # no negative slope: x does not explain y
    assert fit_line([1, 2, 3], [3, 2, 1], prior_slope=0.5) == pytest.approx((1, 0.5))
    assert fit_line([10, 20, 30], [10, 30, 50]) == pytest.approx((0, 2200 / 1400))  # no negative intercept
    assert fit_line([5, 5, 5], [7, 8, 9]) == pytest.approx((8, 0))
    assert fit_line([5, 5, 5], [7, 8, 9], prior_slope=1.0) == pytest.approx((3, 1))
    assert fit_line([5, 5, 5], [2, 3, 4], prior_slope=1.0) == pytest.approx((0, 3 / 5))  # no negative intercept


def test_fit_terms_recovers_nonnegative_coefficients_of_very_different_scales():
    true = [2.0, 1e-9, 3e-6]
    rows = [[1, 1e9 * k, 1e6 * (5 - k) ** 2] for k in range(1, 6)]
    y = [sum(c * v for c, v in zip(true, r)) for r in rows]
    assert fit_terms(rows, y) == pytest.approx(true, rel=1e-6)


# -------------------------------------------------------------------------------------- predictions
def test_time_grows_with_work_and_shrinks_with_cpus():
    sc = resolve(synthetic((40,)))
    small, big = (make_plan(sc, sizes(train, test), calibration(), node()) for train, test in ((4, 4), (16, 12)))
    by = lambda p: {s.name: s for s in p.stages}  # noqa: E731
    for st in ("extraction", "selections", "candidate tables"):
        assert by(big)[st].seconds > by(small)[st].seconds > 0
    one = make_plan(sc, sizes(16, 12), calibration(), node(cpus=1))
    assert by(one)["selections"].seconds > by(big)["selections"].seconds
    assert by(big)["selections"].lanes == 2 and by(one)["selections"].lanes == 1
    assert big.fits and not big.problems


def test_gpu_times_are_not_invented_without_gpu_coefficients():
    sc = resolve(synthetic((40,)))
    p = make_plan(sc, sizes(), calibration(devices=("cpu",)), node(gpus=1))
    by = {s.name: s for s in p.stages}
    assert by["selections"].seconds is None and by["extraction"].device == "gpu"
    assert by["trials"].seconds is not None  # trials run on CPUs
    assert p.seconds is None and any("GPU times are not calibrated" in n for n in p.notes)
    assert "not calibrated" in p.text()
    both = make_plan(sc, sizes(), calibration(devices=("cpu", "gpu")), node(gpus=1))
    assert both.seconds is not None


def test_a_memory_size_above_a_tasks_patches_will_not_fit():
    sc = resolve(synthetic((200, 300)))  # 4 images x 64 patches = 256 a task
    p = make_plan(sc, sizes(4), calibration(), node())
    assert not p.fits
    bad = [x for x in p.problems if x.startswith("memory size")]
    assert any("300" in x and "256 patches" in x for x in bad) and not any("needs a bank of 200 " in x for x in bad)
    assert "will not fit: memory size" in p.text()


def test_a_store_larger_than_the_disk_will_not_fit():
    sc = resolve(synthetic((40,)))
    p = make_plan(sc, sizes(), calibration(), node(disk=1e3))
    assert not p.fits and any(x.startswith("disk:") and "/cache" in x for x in p.problems)
    assert make_plan(sc, sizes(), calibration(), node(disk=p.disk * 1.01)).fits


def test_a_peak_above_the_memory_will_not_fit():
    sc = resolve(synthetic((40,)))
    fits = make_plan(sc, sizes(), calibration(), node())
    p = make_plan(sc, sizes(), calibration(), node(memory=fits.peak_memory * 0.9))
    assert not p.fits and any(x.startswith("memory:") and "(--memory)" in x for x in p.problems)


def test_counts_come_from_the_data_or_the_caps(tmp_path):
    from pclsim.plan.command import scenario_sizes

    sc = resolve(synthetic((20,), train=5, test=3))
    sz = scenario_sizes(sc, False)
    assert sz.counted and sz.tasks["Brain_AD"].train == 5 and sz.tasks["Chest_AD"].test == 3
    assert sz.tasks["Brain_AD"].masks and not sz.tasks["Chest_AD"].masks
    bmad = resolve({"dataset": {"kind": "bmad", "root": str(tmp_path / "absent"), "tasks": TASKS, "image_size": 64,
                                "max_train": 7, "max_test": 9}, "memory_sizes": [20]}, "s.yaml")
    sz = scenario_sizes(bmad, False)
    assert not sz.counted and sz.tasks["Chest_AD"].train == 7 and sz.tasks["Chest_AD"].test == 9
    bmad["dataset"]["max_train"] = None
    with pytest.raises(PclsimError, match="dataset.max_train: not set"):
        scenario_sizes(bmad, False)


def test_node_flags_are_checked(tmp_path):
    assert this_node(cpus=3, gpus=0, memory_gb=2, disk_gb=1).memory == 2 * GB
    with pytest.raises(PclsimError, match="--cpus: must be at least 1"):
        this_node(cpus=0)
    with pytest.raises(PclsimError, match="--memory"):
        this_node(memory_gb=0)


# -------------------------------------------------------------------------------------- command line
def write(tmp_path, raw, name="s.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw))
    return p


def test_plan_prints_every_stage_and_exits_0_when_it_fits(tmp_path):
    cal = calibration().save(tmp_path / "cal.json")
    r = cli("plan", write(tmp_path, synthetic((40,))), "--calibration", cal, "--cpus", "2", "--gpus", "0",
            "--memory", "32", "--disk", "100")
    assert r.returncode == 0, r.stderr
    for st in STAGES:
        assert f"\n{st} " in r.stdout
    assert "fits" in r.stdout and "will not fit" not in r.stdout and not r.stderr.strip()


def test_plan_says_plainly_what_will_not_fit_and_exits_2(tmp_path):
    cal = calibration().save(tmp_path / "cal.json")
    r = cli("plan", write(tmp_path, synthetic((300,))), "--calibration", cal, "--cpus", "2", "--gpus", "0",
            "--memory", "0.5", "--disk", "0.000001", "--json")
    assert r.returncode == 2, r.stderr
    out = json.loads(r.stdout)
    assert not out["fits"] and [p.split(":")[0] for p in out["problems"]] == ["memory size"] * 4 + ["memory", "disk"]


def test_plan_bad_input_is_one_error_line(tmp_path):
    r = cli("plan", write(tmp_path, synthetic((40,))), "--calibration", tmp_path / "missing.json")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("error: ") and "missing.json: calibration file not found" in r.stderr
    r = cli("plan", tmp_path / "nope.yaml")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "nope.yaml" in r.stderr
    assert "Traceback" not in r.stderr


def test_plan_scenario_reads_bad_scenarios_like_validate(tmp_path):
    with pytest.raises(PclsimError, match="unknown key"):
        plan_scenario(write(tmp_path, synthetic((40,), bogus=1)), calibration=calibration().save(tmp_path / "c.json"))


def test_adaptive_orders_are_planned_for_their_first_round_and_said_so():
    sc = resolve(synthetic((40,), orders={"search": "worst", "budget": 2}), "s.yaml")
    p = make_plan(sc, sizes(), calibration(), node())
    assert any("first round only" in n for n in p.notes)
    assert not any("first round" in n for n in make_plan(resolve(synthetic((40,))), sizes(), calibration(),
                                                          node()).notes)
