"""launch/: accelerate configs (hardware), experiment configs (hyperparameters), torchrun and SLURM scripts,
and the GPU check, each checked the way its user relies on it.

- every accelerate YAML loads with accelerate's own loader, with the expected type and process counts;
  the two CPU recipes really form a two-process gloo group (a probe script, not the engine);
- every experiment YAML resolves for each variant it names, with the models registry's recipes;
- torchrun.sh and train.sbatch pass `bash -n` and shellcheck, start the processes with the right
  ranks, and deliver SIGUSR1 to them (a stand-in `fashiondist` module on PYTHONPATH records what it got;
  train.sbatch runs under stand-in `srun` and `scontrol` scripts that act as SLURM does for it);
- gpu_check.sh runs end to end in its CPU smoke mode once the engine is there.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from dev_tools import dev_tool

from fashiondist.config import TrainConfig, resolve_config, sweep_models
from fashiondist.models.registry import list_models, model_recipe

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"
ACCELERATE = LAUNCH / "accelerate"
EXPERIMENTS = LAUNCH / "experiments"
SCRIPTS = sorted([*LAUNCH.rglob("*.sh"), *LAUNCH.rglob("*.sbatch")])
BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# file -> (distributed_type, num_processes, num_machines, use_cpu)
ACCELERATE_CONFIGS = {
    "single_gpu.yaml": ("NO", 1, 1, False),
    "multi_gpu.yaml": ("MULTI_GPU", 8, 1, False),
    "multi_node.yaml": ("MULTI_GPU", 16, 2, False),
    "cpu_ddp.yaml": ("MULTI_GPU", 2, 1, True),
    "cpu_multi_node.yaml": ("MULTI_GPU", 2, 2, True),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_tool = dev_tool  # a missing shellcheck fails with its install line (tests/dev_tools.py)


# --- accelerate configs ------------------------------------------------------------------------------------
def test_every_accelerate_config_is_checked():
    assert sorted(p.name for p in ACCELERATE.glob("*.yaml")) == sorted(ACCELERATE_CONFIGS)


@pytest.mark.parametrize("name", sorted(ACCELERATE_CONFIGS))
def test_accelerate_config_loads_with_accelerates_loader(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    kind, processes, machines, cpu = ACCELERATE_CONFIGS[name]
    config = load_config_from_file(str(ACCELERATE / name))
    assert isinstance(config, ClusterConfig)
    assert (config.distributed_type.value, config.num_processes, config.num_machines, config.use_cpu) == (
        kind,
        processes,
        machines,
        cpu,
    )
    assert config.num_processes % config.num_machines == 0
    if machines > 1:  # a static rendezvous: every machine must know where rank 0 listens
        assert config.main_process_ip and config.main_process_port
        assert config.rdzv_backend == "static" and config.same_network


@pytest.mark.parametrize("name", sorted(ACCELERATE_CONFIGS))
def test_accelerate_configs_hold_hardware_only(name):
    keys = set(yaml.safe_load((ACCELERATE / name).read_text()))
    assert not keys & set(TrainConfig.__dataclass_fields__), "hyperparameters belong in launch/experiments/"


PROBE = textwrap.dedent(
    """
    import json, os
    from accelerate import Accelerator
    acc = Accelerator()
    print("PROBE " + json.dumps({"rank": acc.process_index, "world": acc.num_processes,
          "type": acc.distributed_type.value, "backend": acc.state.backend}), flush=True)
    """
)


def _probe_lines(output: str) -> list[dict]:
    """Every rank's probe record; the ranks share one stdout, so a record may not start a line."""
    return [json.loads(record) for record in re.findall(r"PROBE (\{[^{}]*\})", output)]


def _accelerate_launch(config: str, *args: str, probe: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ACCELERATE / config),
        *args,
        str(probe),
    ]


@pytest.mark.ddp
def test_cpu_ddp_recipe_forms_one_two_process_gloo_group(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    cmd = _accelerate_launch("cpu_ddp.yaml", "--main_process_port", str(_free_port()), probe=probe)
    proc = subprocess.run(
        cmd, env={**ENV, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = _probe_lines(proc.stdout)
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    assert all(r["world"] == 2 and r["type"] == "MULTI_CPU" and r["backend"] == "gloo" for r in ranks)


@pytest.mark.ddp
def test_cpu_multi_node_recipe_meets_on_one_host(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            _accelerate_launch(
                "cpu_multi_node.yaml", "--machine_rank", str(rank), "--main_process_port", port, probe=probe
            ),
            env={**ENV, "ACCELERATE_USE_CPU": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (1, 0)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    ranks = [r for out, _ in outs for r in _probe_lines(out)]
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    assert all(r["world"] == 2 and r["backend"] == "gloo" for r in ranks)


# --- experiment configs -----------------------------------------------------------------------------------
EXPERIMENT_FILES = sorted(EXPERIMENTS.glob("*.yaml"))


def test_the_documented_experiments_exist():
    assert {p.name for p in EXPERIMENT_FILES} >= {
        "demo.yaml",
        "fashion-mnist.yaml",
        "fashion-mnist-best.yaml",
    }


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=lambda p: p.name)
def test_experiment_config_resolves_for_every_variant_it_names(path):
    data = yaml.safe_load(path.read_text())
    resolve_config(config_file=path)  # as `fashiondist train --config FILE` with no model named
    names = (
        set(sweep_models(path) or [])
        | set(data.get("per_model") or {})
        | ({data["model"]} if "model" in data else set())
    )
    assert names <= set(list_models()), f"unknown variants: {names - set(list_models())}"
    for name in names:
        cfg = resolve_config(name, path, recipe_for=model_recipe)
        assert cfg.model == name


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=lambda p: p.name)
def test_experiment_configs_hold_hyperparameters_only(path):
    hardware = {"distributed_type", "num_processes", "num_machines", "mixed_precision", "gpu_ids", "use_cpu"}
    assert not set(yaml.safe_load(path.read_text())) & hardware, "hardware belongs in launch/accelerate/"


@pytest.mark.parametrize("path", [*EXPERIMENT_FILES, *SCRIPTS], ids=lambda p: p.name)
def test_recipes_leave_the_precision_to_auto(path):
    # bf16 is 6-9x slower than fp32 on a CPU without native bf16: `--precision auto` decides per machine
    assert "--precision bf16" not in path.read_text()


def test_demo_trains_every_registered_variant_on_the_sample():
    demo = EXPERIMENTS / "demo.yaml"
    assert sweep_models(demo) == list_models()
    for name in list_models():
        assert resolve_config(name, demo, recipe_for=model_recipe).data == "sample"


# --- shell scripts ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(LAUNCH)))
def test_shell_script_parses_and_passes_shellcheck(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    proc = subprocess.run([_tool("shellcheck"), "--shell=bash", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_scripts_are_executable():
    for script in SCRIPTS:
        assert script.stat().st_mode & stat.S_IXUSR, f"chmod +x {script}"


# A stand-in for `python -m fashiondist`: records its rank, environment and arguments, and exits 0 on SIGUSR1
# or SIGTERM (as the engine does after saving last/), after FAKE_SECONDS, or with FAKE_EXIT.
FAKE_FASHIONDIST = textwrap.dedent(
    """
    import json, os, signal, sys, time
    got = []
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, lambda s, f: got.append(signal.Signals(s).name))
    record = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    record["argv"] = sys.argv[1:]
    def write(event):
        with open(os.path.join(os.environ["FAKE_LOG_DIR"], f"rank{record['RANK']}-{event}.json"), "w") as f:
            json.dump({**record, "signals": got}, f)
    write("start")
    deadline = time.time() + float(os.environ.get("FAKE_SECONDS", "60"))
    while not got and time.time() < deadline:
        time.sleep(0.05)
    write("end")
    sys.exit(0 if got else int(os.environ.get("FAKE_EXIT", "0")))
    """
)


@pytest.fixture()
def fake_fashiondist(tmp_path) -> dict[str, str]:
    package = tmp_path / "fake" / "fashiondist"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(FAKE_FASHIONDIST)
    logs = tmp_path / "logs"
    logs.mkdir()
    return {**ENV, "PYTHONPATH": str(package.parent), "FAKE_LOG_DIR": str(logs), "PYTHON": sys.executable}


def _records(env: dict[str, str], event: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(env["FAKE_LOG_DIR"]).glob(f"rank*-{event}.json"))]


def _wait_for(condition, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_torchrun_sh_defaults_and_passes_arguments_on():
    env = {**ENV, "TORCHRUN_DRY_RUN": "1", "PYTHON": "python3"}
    out = subprocess.run(
        ["bash", str(LAUNCH / "torchrun.sh"), "--model", "cnn", "--set", "lr=0.1"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for part in (
        "--nnodes 1",
        "--node-rank 0",
        "--nproc-per-node gpu",
        "--rdzv-backend c10d",
        "--rdzv-endpoint 127.0.0.1:29500",
        "--max-restarts 3",
        "SIGUSR1",
        "-m fashiondist train --model cnn --set lr=0.1",
    ):
        assert part in out.replace("\\,", ","), out


@pytest.mark.ddp
def test_torchrun_sh_starts_the_ranks_and_forwards_sigusr1(fake_fashiondist):
    env = {**fake_fashiondist, "NPROC_PER_NODE": "2", "MASTER_PORT": str(_free_port())}
    # cwd outside the repository: `python -m fashiondist` must find the stand-in, not the real package.
    proc = subprocess.Popen(
        ["bash", str(LAUNCH / "torchrun.sh"), "--epochs", "3"],
        env=env,
        cwd=env["FAKE_LOG_DIR"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: len(_records(env, "start")) == 2)
    proc.send_signal(signal.SIGUSR1)  # the script exec'd torchrun: this reaches torchrun itself
    _, err = proc.communicate(timeout=60)
    ends = _records(env, "end")
    assert sorted(r["RANK"] for r in ends) == ["0", "1"], err[-3000:]
    assert all(
        r["WORLD_SIZE"] == "2" and r["signals"] == ["SIGUSR1"] and r["argv"] == ["train", "--epochs", "3"]
        for r in ends
    )


# Stand-ins for SLURM's commands, as train.sbatch uses them: `scontrol show hostnames` prints the nodes,
# `scontrol requeue` is recorded; `srun` starts SLURM_NTASKS local copies of its command with SLURM_PROCID /
# SLURM_LOCALID set and forwards SIGUSR1 / SIGTERM to them, as the real srun does.
FAKE_SCONTROL = """#!/usr/bin/env bash
case "$1 $2" in
    "show hostnames") printf 'node-a\\nnode-b\\n' ;;
    "requeue "*) echo "$2" >> "$FAKE_LOG_DIR/requeue" ;;
    *) echo "fake scontrol: $*" >&2; exit 1 ;;
esac
"""
FAKE_SRUN = """#!/usr/bin/env bash
while [[ $1 == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
    SLURM_PROCID=$i SLURM_LOCALID=$i "$@" &
    pids+=($!)
done
trap 'kill -USR1 "${pids[@]}"' USR1
trap 'kill -TERM "${pids[@]}"' TERM
status=0
for pid in "${pids[@]}"; do
    while :; do wait "$pid"; rc=$?; kill -0 "$pid" 2>/dev/null || break; done
    (( rc > status )) && status=$rc
done
exit "$status"
"""


@pytest.fixture()
def fake_slurm(fake_fashiondist, tmp_path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {
        **fake_fashiondist,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        # the script cds here: outside the repository, so `python -m fashiondist` finds the stand-in
        "SLURM_SUBMIT_DIR": fake_fashiondist["FAKE_LOG_DIR"],
        "SLURM_CPUS_PER_TASK": "1",
    }


def _sbatch(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["bash", str(LAUNCH / "slurm" / "train.sbatch"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sbatch_starts_one_rank_per_task_and_finishes_without_requeue(fake_slurm):
    proc = _sbatch({**fake_slurm, "FAKE_SECONDS": "0.2"}, "--models", "all", "--out", "runs/x")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    ends = _records(fake_slurm, "end")
    assert sorted((r["RANK"], r["LOCAL_RANK"]) for r in ends) == [("0", "0"), ("1", "1")]
    for r in ends:
        assert (r["WORLD_SIZE"], r["MASTER_ADDR"], r["MASTER_PORT"]) == ("2", "node-a", str(20000 + 4242))
        assert r["argv"] == ["train", "--resume", "auto", "--models", "all", "--out", "runs/x"]
    assert not (Path(fake_slurm["FAKE_LOG_DIR"]) / "requeue").exists()


def test_sbatch_forwards_usr1_to_every_rank_then_requeues(fake_slurm):
    proc = _sbatch(fake_slurm, "--model", "convnet")
    _wait_for(lambda: len(_records(fake_slurm, "start")) == 2)
    proc.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@120` sends the batch shell
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert [r["signals"] for r in _records(fake_slurm, "end")] == [["SIGUSR1"], ["SIGUSR1"]]
    assert (Path(fake_slurm["FAKE_LOG_DIR"]) / "requeue").read_text().split() == ["4242"]


def test_sbatch_forwards_term_without_requeue_and_reports_failures(fake_slurm):
    proc = _sbatch(fake_slurm)
    _wait_for(lambda: len(_records(fake_slurm, "start")) == 2)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert [r["signals"] for r in _records(fake_slurm, "end")] == [["SIGTERM"], ["SIGTERM"]]
    assert not (Path(fake_slurm["FAKE_LOG_DIR"]) / "requeue").exists()

    failing = _sbatch({**fake_slurm, "FAKE_SECONDS": "0.1", "FAKE_EXIT": "3"})
    failing.communicate(timeout=60)
    assert failing.returncode == 3


# --- the GPU check, CPU smoke mode -----------------------------------------------------------------------------
@pytest.mark.slow
def test_gpu_check_smoke_mode_runs_end_to_end_on_the_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CPU smoke mode: on a CUDA machine the check runs for real")
    held = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")  # this test asks for the CPU's own kernels
    env = {
        **{k: v for k, v in ENV.items() if k not in held},
        "GPU_CHECK_SMOKE": "1",
        "OUT": str(tmp_path / "out"),
        "PYTHON": sys.executable,
    }
    proc = subprocess.run(
        ["bash", str(LAUNCH / "gpu_check.sh"), "--work", str(tmp_path / "work")],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert result["ok"] and result["environment"]["smoke"]
    assert [(r["model"], r["precision"]) for r in result["train"]] == [
        ("convnet", "fp32"),
        ("convnet", "bf16"),
    ]
    assert all(r["losses_finite"] and r["steps"] > 0 and r["images_per_s"] > 0 for r in result["train"])
    (onnx,) = result["onnx"]
    assert onnx["exported"] and onnx["parity_ratio"] <= 1.0 and onnx["argmax_agreement"] == 1.0
    assert result["infer"]["ok"] and result["infer"]["rows"] == 1000
    # the GPU inference paths (fp32/fp16 graphs on CUDA/TensorRT, IO binding) are skipped, saying why
    assert result["gpu_paths"] == {"skipped": "smoke mode (CPU-sized run)", "rows": []}
    assert "GPU inference paths: skipped: smoke mode" in proc.stderr
    assert "GPU inference paths: skipped: smoke mode" in (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| convnet | fp32 |" in (tmp_path / "out" / "gpu_check.md").read_text()
    assert "PASSED" in proc.stdout
    assert proc.stdout.index("fashiondist doctor") < proc.stdout.index("PASSED")  # the machine, first
    doctor = json.loads((tmp_path / "out" / "doctor.json").read_text())
    # auto on a CPU: bf16 where it has native bf16 instructions (avx512_bf16 or amx_bf16), else fp32 ("no")
    flags = set(re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M).group(1).split())
    assert doctor["precision_auto"]["precision"] == ("bf16" if flags & {"avx512_bf16", "amx_bf16"} else "no")
    assert doctor["precision_auto"]["reason"]
