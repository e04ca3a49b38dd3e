"""docker/: the two images, their pinned versions, the compose file and .dockerignore, checked offline.

No docker engine (and no compose plugin) runs here, so: hadolint lints the Dockerfiles; the compose file is
validated against the Compose Specification's JSON schema, vendored (see compose_schema.py); the rest are
the promises the files make, read from the files themselves.
"""

from __future__ import annotations

import copy
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dev_tools import dev_tool

sys.path.insert(0, str(Path(__file__).parent))
import compose_schema  # noqa: E402  (a helper beside this file, not a package)

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = {"gpu": DOCKER / "Dockerfile", "cpu": DOCKER / "Dockerfile.cpu"}
CONSTRAINTS = {"gpu": DOCKER / "constraints-gpu.txt", "cpu": DOCKER / "constraints-cpu.txt"}
BIN = Path(sys.executable).parent

# The CUDA pairing, as checked on PyPI (pip install --dry-run --report, wheel metadata): torch 2.14.1's
# Linux wheels require cuda-toolkit==13.0.3 and nvidia-cudnn-cu13 (CUDA 13.0, cuDNN 9); onnxruntime-gpu's
# `cuda` extra requires nvidia-cuda-runtime~=13.0 from 1.27.0 on (1.26.0 and older: *-cu12, CUDA 12).
TORCH_CUDA_MAJOR = {"2.14.1": 13}
FIRST_ORT_GPU_FOR_CUDA = {13: (1, 27, 0)}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in text.splitlines()
        if line.strip()
    ]


def _pins(kind: str) -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS[kind].read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"{CONSTRAINTS[kind].name}: {line!r} is not pinned with =="
            pins[_normal(name)] = version
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- Dockerfiles ---------------------------------------------------------------------------------------------
# Each linter (from the dev extra) and the files it checks: the Dockerfiles, the image check and CI's script.
LINTED = {
    "hadolint": [DOCKERFILES["gpu"], DOCKERFILES["cpu"]],
    "shellcheck": [DOCKER / "check.sh", REPO / ".ci" / "run"],
}


@pytest.mark.parametrize(
    "tool, path",
    [(tool, path) for tool, paths in LINTED.items() for path in paths],
    ids=lambda x: x.name if isinstance(x, Path) else x,
)
def test_linter_passes(tool, path):
    proc = subprocess.run([dev_tool(tool), str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# The hadolint rules each Dockerfile switches off: a new one is a decision, made here and explained there.
IGNORED_HADOLINT_RULES = {"gpu": {"DL3008"}, "cpu": {"DL3008"}}  # apt packages unpinned: see the Dockerfiles


def test_every_ignored_hadolint_rule_is_expected_and_says_why():
    for kind, dockerfile in DOCKERFILES.items():
        lines = dockerfile.read_text().splitlines()
        ignored = set()
        for i, line in enumerate(lines):
            if "hadolint ignore=" in line:
                ignored |= set(line.split("hadolint ignore=", 1)[1].split(","))
                reason = lines[i - 1].strip() if i else ""
                assert reason.startswith("#") and len(reason) > 20, (
                    f"{dockerfile.name} line {i + 1}: explain {line.strip()!r} on the line above"
                )
        assert ignored == IGNORED_HADOLINT_RULES[kind], dockerfile.name


def _build_args(dockerfile: Path) -> dict[str, str]:
    """ARG NAME=default of a Dockerfile (a bare `ARG NAME` re-declares, and keeps the first default)."""
    args: dict[str, str] = {}
    for op, arg in _instructions(dockerfile):
        if op == "ARG" and "=" in arg:
            name, value = arg.split("=", 1)
            args.setdefault(name, value)
    return args


def _base_image(kind: str) -> str:
    """The image FROM builds on by default: `FROM ${BASE_IMAGE}` reads the ARG's default (docker/check.sh
    passes a local stand-in there only where the real one cannot be pulled)."""
    (base,) = [args for op, args in _instructions(DOCKERFILES[kind]) if op == "FROM"]
    assert base == "${BASE_IMAGE}", f"{DOCKERFILES[kind].name}: FROM takes the BASE_IMAGE build argument"
    return _build_args(DOCKERFILES[kind])["BASE_IMAGE"]


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_image_is_pinned_runs_as_non_root_and_starts_fashiondist(kind):
    steps = _instructions(DOCKERFILES[kind])
    base = _base_image(kind)
    image, _, tag = base.partition(":")
    assert tag and tag != "latest" and re.match(r"\d+\.\d+\.\d+", tag), (
        f"pin the base image by its full version tag: {base}"
    )
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must end as a non-root user"
    assert re.fullmatch(r"\d+:\d+", users[-1]), "a numeric USER lets a platform verify it is not root"
    assert ("ENTRYPOINT", '["fashiondist"]') in steps
    installs = [args for op, args in steps if op == "RUN" and "pip install" in args]
    assert installs and all(f"--constraint docker/{CONSTRAINTS[kind].name}" in args for args in installs)
    assert any(f'".[{kind}]"' in args for args in installs), (
        f"fashiondist must be installed with its {kind} extra"
    )


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_image_names_itself_for_the_runs_it_makes(kind):
    env = " ".join(args for op, args in _instructions(DOCKERFILES[kind]) if op == "ENV")
    assert f"FASHIONDIST_IMAGE=fashiondist:{kind}" in env.split()
    assert "FASHIONDIST_BASE_IMAGE=${BASE_IMAGE}" in env.split(), (
        "a stand-in base must show in the provenance"
    )


def test_gpu_image_pairs_cuda_13_with_torch_and_onnxruntime_gpu():
    base = _base_image("gpu")
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu24\.04", base)
    assert match, base
    cuda_major = int(match.group(1))
    pins = _pins("gpu")
    assert TORCH_CUDA_MAJOR[pins["torch"]] == cuda_major
    assert _version(pins["cuda-toolkit"])[0] == cuda_major and "nvidia-cudnn-cu13" in pins
    assert _version(pins["onnxruntime-gpu"]) >= FIRST_ORT_GPU_FOR_CUDA[cuda_major]
    assert "onnxruntime" not in pins, "onnxruntime and onnxruntime-gpu install the same module; keep one"


def test_cpu_image_takes_torch_from_the_cpu_index_and_no_cuda_wheels():
    text = " ".join(args for op, args in _instructions(DOCKERFILES["cpu"]) if op == "RUN")
    assert '--index-url "$TORCH_INDEX"' in text and "--no-deps" in text
    assert _build_args(DOCKERFILES["cpu"])["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    pins = _pins("cpu")
    assert "onnxruntime" in pins and "onnxruntime-gpu" not in pins
    assert not [n for n in pins if n.startswith(("nvidia-", "cuda-", "triton"))]


@pytest.mark.parametrize("kind", sorted(CONSTRAINTS))
def test_constraints_pin_every_dependency_of_the_package(kind):
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"][kind]]
    pins = _pins(kind)
    names = {_normal(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]) for req in wanted}
    assert names <= set(pins), f"unpinned in {CONSTRAINTS[kind].name}: {sorted(names - set(pins))}"
    assert (pins["torch"], pins["torchvision"]) == ("2.14.1", "0.29.1")


# --- compose ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_vendored_schema_is_the_published_file():
    assert hashlib.sha256(compose_schema.SCHEMA_PATH.read_bytes()).hexdigest() == compose_schema.SCHEMA_SHA256


def _verdicts(instance) -> list[bool]:
    """[the offline validator's verdict] + [jsonschema's, where it is installed]: True = valid."""
    schema = compose_schema.load_schema()
    verdicts = [not compose_schema.validate(instance, schema)]
    try:
        import jsonschema
    except ImportError:
        return verdicts
    return verdicts + [jsonschema.Draft201909Validator(schema).is_valid(instance)]


def test_compose_file_is_valid_against_the_compose_spec(compose):
    assert compose_schema.validate(compose) == []
    assert all(_verdicts(compose))


BROKEN = {
    "an unknown service key": lambda d: d["services"]["train"].update(gpus_please=True),
    "a GPU count as a list": lambda d: d["services"]["train"]["deploy"]["resources"]["reservations"][
        "devices"
    ][0].update(count=[1]),
    "an unknown device key": lambda d: d["services"]["train"]["deploy"]["resources"]["reservations"][
        "devices"
    ][0].update(gpu=1),
    "a volume as a number": lambda d: d["services"]["infer"].update(volumes=[42]),
    "an unknown top-level key": lambda d: d.update(nme="x"),
    "a duplicated volume": lambda d: d["services"]["infer"].update(volumes=["a:/b", "a:/b"]),
    "a build as a number": lambda d: d["services"]["infer"].update(build=3),
    "a bad ulimit": lambda d: d["services"]["train"].update(ulimits={"memlock": "x"}),
}


@pytest.mark.parametrize("problem", sorted(BROKEN))
def test_the_schema_check_rejects_a_broken_compose_file(compose, problem):
    broken = copy.deepcopy(compose)
    BROKEN[problem](broken)
    assert not any(_verdicts(broken))


def test_train_reserves_every_gpu_and_infer_uses_the_cpu_image(compose):
    train, infer = compose["services"]["train"], compose["services"]["infer"]
    (device,) = train["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    assert train["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert infer["build"] == {"context": "..", "dockerfile": "docker/Dockerfile.cpu"}
    assert "deploy" not in infer
    for service in (train, infer):
        targets = {volume.split(":")[1] for volume in service["volumes"]}
        assert {"/opt/fashiondist/data", "/opt/fashiondist/runs"} <= targets
        assert any(v.startswith("../data:") and v.endswith(":ro") for v in service["volumes"])


# --- .dockerignore ------------------------------------------------------------------------------------------------
def _pattern(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex, as Docker reads it: root-relative, `*` within one path segment,
    `**` across segments; a pattern that matches a directory matches everything under it."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "(?:/.*)?")


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches decides; a leading `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        if _pattern(pattern.lstrip("!").strip("/")).fullmatch(path):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_build_inputs_and_drops_the_heavy_rest():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        args.split()[0]
        for kind in DOCKERFILES
        for op, args in _instructions(DOCKERFILES[kind])
        if op == "COPY"
    ]
    needed = [
        *copied,
        "fashiondist/data/sample/train-images-idx3-ubyte.gz",
        "launch/accelerate/multi_gpu.yaml",
    ]
    assert not [p for p in needed if _ignored(p, patterns)]
    for heavy in (
        ".git",
        ".venv",
        "runs/sweep/model.onnx",
        "fashiondist/__pycache__/x.pyc",
        "data/train.csv",
        "tests",
    ):
        assert _ignored(heavy, patterns), heavy
