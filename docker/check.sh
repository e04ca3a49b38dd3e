#!/usr/bin/env bash
# Build both images and use them as a user would; exit 0 when every step passed.
#
#   bash docker/check.sh              # from the repository root or anywhere
#   HOST_PYTHON=.venv/bin/python bash docker/check.sh
#
# 1. builds fashiondist:cpu (docker/Dockerfile.cpu) and fashiondist:gpu (docker/Dockerfile) with docker
#    where a docker daemon answers, else with podman;
# 2. in the CPU image, as its non-root user with runs/ and data/ mounted: `fashiondist models`, the main job
#    on the bundled sample (the demo recipe, with --test) and `fashiondist infer` on the sample's testX; the
#    files in runs/ must belong to the calling user, and the submission must equal, byte for byte, the one
#    the host's `fashiondist infer` (HOST_PYTHON, default .venv/bin/python, else python3) writes with the
#    same model.onnx;
# 3. in the GPU image, on the CPU: `launch/gpu_check.sh` with GPU_CHECK_SMOKE=1;
# 4. in each image: the Python packages are exactly the versions pinned in docker/constraints-*.txt.
#
# Where a default cannot be reached it says so loudly and falls back: a base image that cannot be pulled is
# replaced by a local stand-in (Debian bookworm, minbase, python3 3.11, made with mmdebstrap and imported:
# no CUDA libraries, so the GPU image then runs on the CPU only); when PyTorch's CPU index is unreachable
# the CPU image takes torch from PyPI (the CUDA build and its nvidia-* wheels: it runs, but is several GB
# larger). Work files go to a temporary directory (CHECK_KEEP=1 keeps it).
#
# Every build downloads its wheels, as a user's does: a machine's local wheel store is not mounted into the
# build, so the check builds what a user's build would. Measured on 2 shared cores: the 2.9 GB torch closure
# downloads from PyPI in about 95 s, of an image build that took 210-480 s (with the machine's load); local
# wheels would save up to about 3 minutes of a whole check that stays far inside CI's 40.
#
# Flags every `build` and `run` gets on this machine kind (podman from Debian 12, cgroups v1): the
# default nproc limit cannot be set (`setrlimit: operation not permitted`). Docker accepts the same flags.
CONTAINER_FLAGS="--ulimit nofile=20000:20000 --ulimit nproc=4096:4096"
# podman's own flags here: crun fails ("cgroups in hybrid mode not supported"); runc with cgroupfs works.
PODMAN="podman --runtime runc --cgroup-manager cgroupfs"
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
read -r -a flags <<<"$CONTAINER_FLAGS"
STANDIN=localhost/fashiondist-standin:bookworm
CPU_TORCH_INDEX=https://download.pytorch.org/whl/cpu
PYPI_INDEX=https://pypi.org/simple
HOST_CA=/etc/ssl/certs/ca-certificates.crt
started=$SECONDS

say() { echo "check: $*" >&2; }
loud() { printf '\ncheck: ***** %s *****\n\n' "$*" >&2; }
fail() {
    echo "check: FAILED: $*" >&2
    exit 1
}
step() {
    local t0=$SECONDS
    say "$1 ..."
    "${@:2}"
    say "$1: done in $((SECONDS - t0)) s"
}

if [[ -z "${HOST_PYTHON:-}" ]]; then
    HOST_PYTHON=python3
    [[ -x .venv/bin/python ]] && HOST_PYTHON=.venv/bin/python
fi
"$HOST_PYTHON" -c 'import fashiondist.inference' || fail "HOST_PYTHON=$HOST_PYTHON cannot import fashiondist"

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    read -r -a engine <<<"docker"
    # `docker build` has no build-time volumes: a re-signing proxy's CA cannot reach pip there.
    build_net=(--network host)
elif command -v podman >/dev/null 2>&1; then
    read -r -a engine <<<"$PODMAN"
    build_net=(--network host)
    if [[ -f "$HOST_CA" ]]; then
        # pip trusts its own CA bundle, not the system's: hand it the host's for networks that re-sign TLS.
        build_net+=(--volume "$HOST_CA:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
    fi
else
    fail "neither a docker daemon (docker info) nor podman is available (apt-get install podman runc)"
fi
say "engine: ${engine[*]} $("${engine[0]}" --version)"

# The calling user must own what the container writes to runs/, and the container must not run as root.
uid=$(id -u) gid=$(id -g)
if ((uid != 0)); then
    user_flags=(--user "$uid:$gid")
elif [[ "${engine[0]}" == podman ]]; then
    # Root calls: the image's user 10001 is mapped to root outside (uid 0 inside maps to an unused id).
    user_flags=(--user 10001:10001)
    for map in --uidmap --gidmap; do
        user_flags+=("$map" 0:1:10001 "$map" 10001:0:1 "$map" 10002:10002:55000)
    done
else
    fail "run this check as a non-root user with docker: a container running as the image's non-root user cannot write files owned by root"
fi

standin() {
    if ! "${engine[@]}" image inspect "$STANDIN" >/dev/null 2>&1; then
        command -v mmdebstrap >/dev/null 2>&1 || fail "no stand-in base without mmdebstrap (apt-get install mmdebstrap)"
        local tar="$work/standin.tar"
        mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$tar"
        "${engine[@]}" import "$tar" "$STANDIN" >/dev/null
        rm -f "$tar"
    fi
}

# The build argument for the base image: none when the Dockerfile's own FROM can be pulled.
base_arg() {
    local dockerfile=$1 real
    real=$(sed -n 's/^ARG BASE_IMAGE=//p' "$dockerfile")
    if "${engine[@]}" image inspect "$real" >/dev/null 2>&1 || "${engine[@]}" pull -q "$real" >/dev/null 2>&1; then
        return
    fi
    loud "$real cannot be pulled: $dockerfile builds FROM the local stand-in $STANDIN (Debian bookworm, python3 3.11, no CUDA)"
    standin
    echo "--build-arg=BASE_IMAGE=$STANDIN"
}

build() {
    local tag=$1 dockerfile=$2 t0=$SECONDS args
    args=("${build_net[@]}" "${flags[@]}")
    local base
    base=$(base_arg "$dockerfile")
    [[ -n "$base" ]] && args+=("$base")
    if [[ "$tag" == fashiondist:cpu ]]; then
        if ! curl -fsS -o /dev/null --max-time 30 "$CPU_TORCH_INDEX/torch/"; then
            loud "PyTorch's CPU index $CPU_TORCH_INDEX is unreachable: the CPU image takes torch from PyPI (the CUDA build and its nvidia-* wheels)"
            args+=(--build-arg "TORCH_INDEX=$PYPI_INDEX")
            cpu_torch_from_pypi=1
        fi
    fi
    "${engine[@]}" build "${args[@]}" -f "$dockerfile" -t "$tag" . >"$work/build-${tag#*:}.log" 2>&1 \
        || fail "$tag did not build; the end of its log:$(printf '\n')$(tail -n 40 "$work/build-${tag#*:}.log")"
    say "$tag built in $((SECONDS - t0)) s: $(image_size "$tag")"
}

image_size() {
    "${engine[@]}" image inspect --format '{{.Size}}' "$1" | awk '{ printf "%.2f GB", $1 / 1e9 }'
}

in_image() { # in_image IMAGE [run flags...] -- ARGS...: as the non-root user, runs/ and data/ mounted, offline
    local image=$1
    shift
    local extra=()
    while [[ $1 != -- ]]; do
        extra+=("$1")
        shift
    done
    shift
    "${engine[@]}" run --rm --network none "${flags[@]}" "${user_flags[@]}" "${extra[@]}" \
        -v "$work/runs:/opt/fashiondist/runs" -v "$work/data:/opt/fashiondist/data:ro" "$image" "$@"
}

# Every installed distribution against the image's constraints file, name by name; pip (the base's, used
# only to build the image) is not pinned. ALSO_PINNED: a second constraints file whose pins cover packages
# the first lacks (PyPI's torch in the CPU image brings the CUDA wheels that the GPU image pins).
check_versions() {
    local image=$1 constraints=$2 also=${3:-}
    cp docker/constraints-*.txt "$work/data/"
    in_image "$image" -i --entrypoint python3 -- - "data/${constraints#docker/}" "${also:+data/${also#docker/}}" <<'PY'
import importlib.metadata as md
import re
import sys

def pins(path):
    out = {}
    for line in open(path) if path else ():
        name, _, version = line.split("#", 1)[0].strip().partition("==")
        if name:
            out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out

own, also = pins(sys.argv[1]), pins(sys.argv[2])
name, also_name = (f"docker/{path.rsplit('/', 1)[-1]}" for path in sys.argv[1:3])
installed = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version for d in md.distributions()}
wrong = [f"{n}: pinned {v}, installed {installed.get(n, 'nothing')}" for n, v in sorted(own.items())
         if installed.get(n, "").split("+")[0] != v]
extra = {n: v for n, v in installed.items() if n not in own and n not in ("pip", "fashiondist")}
wrong += [f"{n}=={v}: not pinned in {name}" for n, v in sorted(extra.items()) if also.get(n) != v]
print(f"{len(own)} pins of {name} installed exactly" if not wrong else "\n".join(wrong))
if extra and not wrong:
    print(f"{len(extra)} more, pinned in {also_name}: {' '.join(sorted(extra))}")
sys.exit(1 if wrong else 0)
PY
}

owned_by_caller() {
    local strangers count
    count=$(find "$work/runs" | wc -l)
    strangers=$(find "$work/runs" \( ! -uid "$uid" -o ! -gid "$gid" \) -printf '%u:%g %p\n' | head -5)
    [[ -z "$strangers" ]] || fail "files in runs/ that do not belong to $uid:$gid:$(printf '\n')$strangers"
    say "all $count entries under runs/ belong to $uid:$gid"
}

same_submission() {
    "$HOST_PYTHON" -m fashiondist infer "$work/data/testX.csv.gz" --model "$work/runs/demo/model.onnx" \
        --out "$work/host/submission.csv"
    cmp "$work/host/submission.csv" "$work/runs/submission.csv" \
        || fail "the CPU image's submission differs from the host's (same model.onnx)"
    say "the container's and the host's submissions are identical ($(wc -l <"$work/host/submission.csv") lines)"
}

work=$(mktemp -d "${TMPDIR:-/tmp}/fashiondist-check.XXXXXX")
if [[ "${CHECK_KEEP:-0}" == 1 ]]; then
    say "work files: $work"
else
    trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work/runs" "$work/data" "$work/host"
cp fashiondist/data/sample/testX.csv.gz "$work/data/"
cpu_torch_from_pypi=0

step "build fashiondist:cpu" build fashiondist:cpu docker/Dockerfile.cpu
step "build fashiondist:gpu" build fashiondist:gpu docker/Dockerfile

also=""
((cpu_torch_from_pypi)) && also=docker/constraints-gpu.txt
step "cpu: package versions" check_versions fashiondist:cpu docker/constraints-cpu.txt "$also"
step "gpu: package versions" check_versions fashiondist:gpu docker/constraints-gpu.txt
step "cpu: fashiondist models" in_image fashiondist:cpu -- models
step "cpu: the main job on the sample" in_image fashiondist:cpu -- \
    train --models all --config launch/experiments/demo.yaml --test data/testX.csv.gz --out runs/demo
step "cpu: fashiondist infer" in_image fashiondist:cpu -- \
    infer data/testX.csv.gz --model runs/demo/model.onnx --out runs/submission.csv
step "gpu: launch/gpu_check.sh (smoke, on the CPU)" in_image fashiondist:gpu \
    -e GPU_CHECK_SMOKE=1 -e OUT=/opt/fashiondist/runs/gpu_check --entrypoint bash -- launch/gpu_check.sh
step "runs/ belongs to the caller" owned_by_caller
step "host infer with the same model.onnx" same_submission

say "images: fashiondist:cpu $(image_size fashiondist:cpu), fashiondist:gpu $(image_size fashiondist:gpu)"
say "passed in $((SECONDS - started)) s"
