"""cluster/ configs: they parse, hold what a launch needs, agree with the installed Ray, and every
command they run is a real `pclsim sweep` over a scenario in this repo; benchmarks/gpu_check.sh."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
SHARED = "/shared"

# interface.md: pclsim sweep SCENARIO.yaml [--out DIR] [--data-root DIR] [--address RAY_ADDRESS]
#                                          [--fresh] [--max-concurrent N] [--quiet] [--debug]
SWEEP_VALUE_OPTIONS = {"--out", "--data-root", "--address", "--max-concurrent"}
SWEEP_FLAGS = {"--fresh", "--quiet", "--debug"}
SHELL_SEPARATORS = {";", "&&", "||", "|", "&"}


def ray_major_minor() -> tuple[int, int]:
    ray = pytest.importorskip("ray")
    major, minor = ray.__version__.split(".")[:2]
    return int(major), int(minor)


def load(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


def launcher() -> dict:
    return load("ray-cluster-aws.yaml")


def rayjob_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / "rayjob.yaml").read_text()) if d is not None]


def rayjob() -> dict:
    jobs = [d for d in rayjob_docs() if d.get("kind") == "RayJob"]
    assert len(jobs) == 1, "cluster/rayjob.yaml must hold exactly one RayJob"
    return jobs[0]


def parse_sweep(argv: list[str]) -> tuple[str, dict]:
    """(scenario, {option: value or True}) of a `pclsim sweep ...` argv; fails on anything undocumented."""
    assert argv[:2] == ["pclsim", "sweep"], f"not a pclsim sweep command: {argv}"
    positional, opts = [], {}
    rest = argv[2:]
    i = 0
    while i < len(rest):
        tok = rest[i]
        if tok.startswith("--"):
            name, eq, value = tok.partition("=")
            if name in SWEEP_FLAGS:
                assert not eq, f"{name} takes no value: {argv}"
                opts[name] = True
            elif name in SWEEP_VALUE_OPTIONS:
                if not eq:
                    i += 1
                    assert i < len(rest) and not rest[i].startswith("-"), f"{name} needs a value: {argv}"
                    value = rest[i]
                opts[name] = value
            else:
                pytest.fail(f"undocumented sweep option {name!r} in {argv}")
        else:
            positional.append(tok)
        i += 1
    assert len(positional) == 1, f"sweep takes exactly one SCENARIO.yaml: {argv}"
    if "--max-concurrent" in opts:
        assert int(opts["--max-concurrent"]) >= 1
    return positional[0], opts


def repo_path(path: str) -> Path:
    """A scenario path as the job sees it -> the file in this repo (/app/ is the image's copy of it)."""
    if path.startswith("/app/"):
        return REPO / path[len("/app/"):]
    assert not os.path.isabs(path), f"{path}: a job's scenario must come from the repo (relative or /app/...)"
    return REPO / path


def check_sweep_command(argv: list[str]) -> dict:
    scenario, opts = parse_sweep(argv)
    f = repo_path(scenario).resolve()
    assert f.parent == (REPO / "scenarios").resolve(), f"{scenario}: not in the repo's scenarios/ folder"
    assert f.is_file(), f"{scenario}: no such scenario in the repo"
    sc = yaml.safe_load(f.read_text())
    out = opts.get("--out")
    assert out, f"a cluster job must write to the shared volume: {argv}"
    assert out.startswith(SHARED + "/"), f"--out {out} is not on the shared volume {SHARED}"
    # the convention used in cluster/: results/<scenario name>, so two scenarios never share a folder
    assert Path(out).name == sc["name"], f"--out {out} does not end in the scenario's name {sc['name']!r}"
    return opts


def split_shell(cmd: str) -> list[list[str]]:
    """Simple commands of a shell line (split at ; && || | &), each an argv."""
    lex = shlex.shlex(cmd, posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    parts, cur = [], []
    for tok in lex:
        if tok in SHELL_SEPARATORS:
            parts.append(cur)
            cur = []
        else:
            cur.append(tok)
    parts.append(cur)
    return [p for p in parts if p]


def readme_submit_commands() -> list[list[str]]:
    """Each `ray job submit ...` in cluster/README.md code blocks, continuation lines joined."""
    text = (CLUSTER / "README.md").read_text()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    cmds = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", textwrap.dedent(block))
        cmds += [shlex.split(line) for line in joined.splitlines() if line.strip().startswith("ray job submit")]
    return cmds


def launcher_commands(cfg: dict) -> list[str]:
    keys = [k for k in cfg if k.endswith("_commands")]
    return [c for k in keys for c in (cfg[k] or [])]


# ---- the CLI itself -----------------------------------------------------------------------

def sweep_help_options() -> set[str]:
    try:
        from pclsim.cli import app
    except ImportError as e:
        pytest.skip(f"pclsim.cli not importable yet ({e})")
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["sweep", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"},
                             terminal_width=200)
    assert res.exit_code == 0, res.output
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", res.output))


def test_documented_sweep_options_exist_in_the_cli():
    opts = sweep_help_options()
    missing = (SWEEP_VALUE_OPTIONS | SWEEP_FLAGS) - opts
    assert not missing, f"documented sweep options missing from `pclsim sweep --help`: {sorted(missing)}"


# ---- the commands the cluster files run ---------------------------------------------------

def all_job_commands() -> list[tuple[str, list[str]]]:
    cmds = [("rayjob.yaml entrypoint", shlex.split(rayjob()["spec"]["entrypoint"]))]
    for argv in readme_submit_commands():
        assert "--" in argv, f"README: `ray job submit` without `-- <command>`: {argv}"
        cmds.append(("README.md ray job submit", argv[argv.index("--") + 1:]))
    for line in launcher_commands(launcher()):
        cmds += [("ray-cluster-aws.yaml", argv) for argv in split_shell(line) if argv[0] == "pclsim"]
    return cmds


def test_every_cluster_command_is_a_real_sweep_of_a_repo_scenario():
    cmds = all_job_commands()
    sources = {src for src, _ in cmds}
    assert {"rayjob.yaml entrypoint", "README.md ray job submit"} <= sources
    cli_opts = None
    try:
        cli_opts = sweep_help_options()
    except pytest.skip.Exception:
        pass
    for src, argv in cmds:
        opts = check_sweep_command(argv)
        if cli_opts is not None:
            unknown = set(opts) - cli_opts
            assert not unknown, f"{src}: options not in `pclsim sweep --help`: {sorted(unknown)}"


def test_parse_sweep_rejects_what_the_cli_would_not_run():
    ok = check_sweep_command(shlex.split("pclsim sweep scenarios/orders.yaml --out /shared/results/orders --quiet"))
    assert ok == {"--out": "/shared/results/orders", "--quiet": True}
    bad = [
        "pclsim run scenarios/orders.yaml --out /shared/results/orders",           # not sweep
        "pclsim sweep scenarios/orders.yaml --out /shared/results/orders --gpus 2",  # undocumented option
        "pclsim sweep scenarios/nope.yaml --out /shared/results/nope",            # no such scenario
        "pclsim sweep /etc/orders.yaml --out /shared/results/orders",              # outside the repo
        "pclsim sweep scenarios/orders.yaml --out /tmp/orders",                     # not on shared storage
        "pclsim sweep scenarios/orders.yaml --out",                                 # option without value
    ]
    for cmd in bad:
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            check_sweep_command(shlex.split(cmd))


def test_readme_submits_with_a_valid_runtime_env():
    cmds = readme_submit_commands()
    assert cmds, "cluster/README.md shows no `ray job submit` command"
    for argv in cmds:
        head = argv[:argv.index("--")]
        assert "--address" in head and head[head.index("--address") + 1].endswith(":8265")
        if "--runtime-env-json" in head:
            env = json.loads(head[head.index("--runtime-env-json") + 1])
            assert env["working_dir"] == "." and any(p.startswith("pclsim") for p in env["pip"])
        else:
            path = head[head.index("--runtime-env") + 1]
            assert (REPO / path).is_file(), f"README names a missing runtime env file {path}"
    assert any("--runtime-env-json" in a for a in cmds)


def test_runtime_env_is_accepted_by_ray():
    env = load("runtime_env.yaml")
    RuntimeEnv = pytest.importorskip("ray.runtime_env").RuntimeEnv
    RuntimeEnv(**env)  # raises on unknown fields or malformed pip/env_vars
    assert env["working_dir"] == "."
    assert any(p.split("[")[0] == "pclsim" for p in env["pip"])
    assert env["env_vars"]["PCLSIM_CACHE_DIR"].startswith(SHARED + "/")
    # the job reads its scenario from the uploaded working dir
    assert not any(e.strip("/").startswith("scenarios") for e in env.get("excludes", []))


# ---- the cluster launcher config ----------------------------------------------------------

def test_launcher_config_validates_against_rays_schema():
    cfg = launcher()
    try:
        from ray.autoscaler._private.util import validate_config
        import jsonschema  # noqa: F401
    except ImportError as e:
        pytest.skip(f"Ray's autoscaler validator unavailable ({e})")
    validate_config(cfg)


def test_launcher_has_cpu_head_gpu_workers_and_limits():
    cfg = launcher()
    assert cfg["provider"]["type"] == "aws"
    assert cfg["provider"]["region"] and cfg["provider"]["availability_zone"]
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert not re.match(r"(g\d|p\d)", head["node_config"]["InstanceType"]), "the head should not be a GPU instance"
    gpu_types = {n: t for n, t in types.items() if n != cfg["head_node_type"] and t["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "no worker node type with a GPU resource"
    for t in gpu_types.values():
        assert re.match(r"(g\d|p\d)", t["node_config"]["InstanceType"]), "GPU resource on a non-GPU instance"
    workers = [t for n, t in types.items() if n != cfg["head_node_type"]]
    for t in workers:
        assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"]
    assert sum(t["min_workers"] for t in workers) <= cfg["max_workers"]
    # the sweep sizes its extractor pool from the GPUs present at start
    assert any(t["min_workers"] >= 1 for t in gpu_types.values())


def test_launcher_image_matches_installed_ray_and_mounts_shared_storage():
    cfg = launcher()
    m = re.fullmatch(r"rayproject/ray:(\d+)\.(\d+)\.\d+-py\d+-gpu", cfg["docker"]["image"])
    assert m, cfg["docker"]["image"]
    assert (int(m[1]), int(m[2])) == ray_major_minor()
    # EFS mounted on each host at /shared, and the same path inside the container
    init = " ".join(cfg["initialization_commands"])
    assert re.search(r"mount -t nfs4 .* \S+:/ " + SHARED + r"\b", init)
    assert f"-v {SHARED}:{SHARED}" in cfg["docker"]["run_options"]
    env = [o for o in cfg["docker"]["run_options"] if "PCLSIM_CACHE_DIR" in o]
    assert env and env[0].split("=", 1)[1].startswith(SHARED + "/")
    pip_lines = [c for c in cfg["setup_commands"] if re.search(r"pip install .*\bpclsim\b", c)]
    assert pip_lines, "setup_commands do not install pclsim"


# ---- the KubeRay RayJob -------------------------------------------------------------------

def pod_specs(job: dict) -> list[tuple[str, dict]]:
    spec = job["spec"]["rayClusterSpec"]
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    pods += [(g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    return pods


def test_rayjob_structure():
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("pclsim sweep ")
    assert spec["shutdownAfterJobFinishes"] is True
    rc = spec["rayClusterSpec"]
    assert tuple(int(x) for x in rc["rayVersion"].split(".")[:2]) == ray_major_minor()
    head = rc["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head.get("resources", {}).get("limits", {})
    groups = rc["workerGroupSpecs"]
    assert groups
    gpu_groups = [g for g in groups
                  if int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1]
    assert gpu_groups, "no worker group with nvidia.com/gpu limits"
    for g in groups:
        assert g.get("minReplicas", 0) <= g["replicas"] <= g.get("maxReplicas", g["replicas"])
    images = {c["image"] for _, p in pod_specs(job) for c in p["containers"]}
    assert len(images) == 1, f"head and workers must run one image: {images}"


def test_rayjob_mounts_one_shared_claim_at_the_same_path_everywhere():
    docs = rayjob_docs()
    job = rayjob()
    claims = set()
    for name, pod in pod_specs(job):
        vols = {v["name"]: v for v in pod["volumes"]}
        mounts = [(m, vols[m["name"]]) for c in pod["containers"] for m in c.get("volumeMounts", [])]
        shared = [(m, v) for m, v in mounts if "persistentVolumeClaim" in v]
        assert len(shared) == 1, f"{name}: expected one PVC mount"
        m, v = shared[0]
        assert m["mountPath"] == SHARED, f"{name} mounts the claim at {m['mountPath']}"
        claims.add(v["persistentVolumeClaim"]["claimName"])
        for c in pod["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert env.get("PCLSIM_CACHE_DIR", "").startswith(SHARED + "/"), f"{name}: PCLSIM_CACHE_DIR"
    assert len(claims) == 1
    pvcs = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "PersistentVolumeClaim"}
    claim = pvcs[claims.pop()]  # the claim the pods use is defined beside the job
    assert "ReadWriteMany" in claim["spec"]["accessModes"], "several pods write it at once"
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["PCLSIM_CACHE_DIR"].startswith(SHARED + "/")


def _gib(quantity: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|K|M|G|T)?", str(quantity))
    assert m, quantity
    unit = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, None: 1}
    return float(m[1]) * unit[m[2]] / 2**30


def test_shared_claim_holds_the_paper_feature_store():
    """The claim every pod mounts fits the paper study's float16 feature store (pclsim.store.writing sizes it):
    six BMAD tasks of 2,000 + 2,000 images, 784 patches, D = 1,536, plus one task's chunk files."""
    from pclsim.store.writing import feature_bytes

    per_task = feature_bytes(2000 + 2000, 28 * 28, 1536, itemsize=2)
    need_gib = (6 * per_task + per_task) / 2**30
    claim = next(d for d in rayjob_docs() if d.get("kind") == "PersistentVolumeClaim")
    assert _gib(claim["spec"]["resources"]["requests"]["storage"]) >= need_gib
    # and the store sits on that claim (PCLSIM_CACHE_DIR under /shared), not in a pod's own disk
    assert yaml.safe_load(rayjob()["spec"]["runtimeEnvYAML"])["env_vars"]["PCLSIM_CACHE_DIR"].startswith(SHARED)


# ---- the RayJob image ---------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (CLUSTER / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_uses_the_installed_ray_and_installs_pclsim_with_scenarios():
    ins = dockerfile_instructions()
    froms = [r for w, r in ins if w == "FROM"]
    assert len(froms) == 1
    m = re.fullmatch(r"rayproject/ray:(\d+)\.(\d+)\.\d+-py\d+-gpu", froms[0])
    assert m, froms[0]
    assert (int(m[1]), int(m[2])) == ray_major_minor()
    assert rayjob()["spec"]["rayClusterSpec"]["rayVersion"] == froms[0].split(":")[1].split("-")[0]
    copies = {}
    for w, r in ins:
        if w == "COPY":
            args = [a for a in shlex.split(r) if not a.startswith("--")]
            for src in args[:-1]:
                copies[src] = args[-1]
    installs = [r for w, r in ins if w == "RUN" and "pip install" in r]
    assert installs
    # pclsim from PyPI, or from the repo copy in the image (its pyproject names pclsim)
    local = [src for src, dst in copies.items() if src in ("pclsim", ".")]
    by_name = any(re.search(r"pip install .*[\"' ]pclsim(\[|\b)", r) for r in installs)
    by_path = local and any(re.search(r"pip install .*[\"' ]/app(\[|[\"' ]|$)", r) for r in installs)
    assert by_name or by_path, "the Dockerfile does not install pclsim"
    if by_path:
        assert copies.get("pyproject.toml", "").rstrip("/") == "/app"
        assert 'name = "pclsim"' in (REPO / "pyproject.toml").read_text()
    assert any("faiss" in r for r in installs)
    # the RayJob entrypoint reads /app/scenarios/...
    assert copies.get("scenarios", "").rstrip("/") == "/app/scenarios"


# ---- benchmarks/gpu_check.sh --------------------------------------------------------------

GPU_CHECK = REPO / "benchmarks" / "gpu_check.sh"


def test_gpu_check_script_syntax():
    assert shutil.which("bash")
    r = subprocess.run(["bash", "-n", str(GPU_CHECK)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


STUB = """\
import json, os, sys, time
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "calls.jsonl"), "a") as f:
    f.write(json.dumps([os.path.basename(__file__)] + sys.argv[1:]) + "\\n")
mode = {mode!r}
if mode == "fail" or (mode == "fail_bundled" and "bundled" in sys.argv):
    print("boom", file=sys.stderr); sys.exit(3)
if mode == "hang":
    time.sleep(60)
print(json.dumps({{"benchmark": os.path.basename(__file__), "ok": True}}))
"""


def test_gpu_check_runs_every_step_after_failures_and_timeouts(tmp_path):
    """Stub benchmarks: one fails, one hangs; the script runs them all, logs to $OUT, summarises, exits != 0."""
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(GPU_CHECK, tmp_path / "benchmarks" / "gpu_check.sh")
    for name, mode in [("bench_features.py", "fail_bundled"), ("bench_coreset.py", "ok"), ("bench_knn.py", "hang"),
                       ("bench_paper_task.py", "ok"), ("bench_paper_stages.py", "ok")]:
        (tmp_path / "benchmarks" / name).write_text(STUB.format(mode=mode))
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, GPU_CHECK_SKIP_INSTALL="1",
               GPU_CHECK_STEP_TIMEOUT_S="3")
    env.pop("PCLSIM_BENCH_OUT", None)
    r = subprocess.run(["bash", str(tmp_path / "benchmarks" / "gpu_check.sh")], cwd="/", env=env,
                       capture_output=True, text=True, timeout=55)
    assert r.returncode != 0
    calls = [json.loads(line) for line in (tmp_path / "benchmarks" / "calls.jsonl").read_text().splitlines()]
    assert calls == [
        ["bench_features.py", "--device", "cuda", "--backbone", "wide_resnet50_2", "--weights", "none"],
        ["bench_features.py", "--device", "cuda", "--backbone", "efficientnet_lite0", "--weights", "bundled"],
        ["bench_coreset.py", "--device", "cuda", "--n", "1570000", "--dim", "1536", "--k", "30000"],
        ["bench_knn.py", "--device", "cuda"],
        ["bench_paper_task.py", "--device", "cuda"],
        ["bench_paper_stages.py", "scenarios/paper_table1.yaml", "--synth", "60", "40", "--weights", "none", "--device",
         "cuda"],
    ]
    log = (out / "gpu_check.log").read_text()
    assert log == r.stdout
    summary = log[log.index("=== summary"):]
    assert re.search(r"features_wrn50_none\s+ok", summary)
    assert re.search(r"features_lite0_bundled\s+FAIL\(3\)", summary)
    assert re.search(r"coreset\S*\s+ok", summary)
    assert re.search(r"knn\s+TIMEOUT", summary)
    assert re.search(r"paper_task\s+ok", summary)
    assert re.search(r"paper_stages\s+ok", summary)
    assert "2 not ok" in summary
    assert "boom" in log  # stderr is logged too


def argparse_options(script: Path) -> set[str]:
    """Option strings of every `*.add_argument(...)` call in a script (read, not run: no torch import)."""
    import ast

    opts = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            opts |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")}
    return opts


def test_gpu_check_runs_only_the_chosen_steps_on_the_chosen_device(tmp_path):
    """GPU_CHECK_STEPS picks steps, GPU_CHECK_DEVICE replaces cuda (a CPU check of the script itself)."""
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(GPU_CHECK, tmp_path / "benchmarks" / "gpu_check.sh")
    for name in ("bench_features.py", "bench_coreset.py", "bench_knn.py", "bench_paper_task.py"):
        (tmp_path / "benchmarks" / name).write_text(STUB.format(mode="ok"))
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_SKIP_INSTALL="1", GPU_CHECK_STEPS="knn paper_task",
               GPU_CHECK_DEVICE="cpu")
    env.pop("OUT", None)
    r = subprocess.run(["bash", str(tmp_path / "benchmarks" / "gpu_check.sh")], cwd="/", env=env,
                       capture_output=True, text=True, timeout=55)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = [json.loads(line) for line in (tmp_path / "benchmarks" / "calls.jsonl").read_text().splitlines()]
    assert calls == [["bench_knn.py", "--device", "cpu"], ["bench_paper_task.py", "--device", "cpu"]]


def test_gpu_check_benchmark_options_exist():
    """Every option gpu_check.sh passes to a benchmark script is one that script's parser defines."""
    calls = re.findall(r'"\$PY" (benchmarks/\S+\.py)([^\n]*)', GPU_CHECK.read_text())
    assert {c[0] for c in calls} == {"benchmarks/bench_features.py", "benchmarks/bench_coreset.py",
                                     "benchmarks/bench_knn.py", "benchmarks/bench_paper_task.py",
                                     "benchmarks/bench_paper_stages.py"}
    for script, args in calls:
        defined = argparse_options(REPO / script)
        assert "--device" in defined
        used = set(re.findall(r"(?<!\S)--[a-z][a-z0-9-]*", args))
        assert used <= defined, f"{script} has no option {sorted(used - defined)}"
