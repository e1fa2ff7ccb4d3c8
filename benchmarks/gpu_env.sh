#!/usr/bin/env bash
# The environment of benchmarks/gpu_check.sh on a CUDA machine that reaches no package index (a lent GPU
# machine whose image holds PyTorch but not our other dependencies). Two steps:
#
#   bash benchmarks/gpu_env.sh fetch     here, with PyPI: the wheels such an image lacks, into .whl/
#                                        (for Python $GPU_PYTHON_VERSION, default 3.12; x86-64 Linux)
#   bash benchmarks/gpu_env.sh install   there, offline: .venv from its python3 ($PYTHON) that keeps that
#                                        python's packages (its CUDA build of torch) and adds .whl/ and this
#                                        project; then one line of versions, and whether CUDA is seen
#
# The versions pinned in constraints.txt (numpy, pillow) are fetched too, so the venv's copies win over the
# image's: cityscapesscripts' evaluator needs numpy < 2.4 and its instance tools pillow < 13. A machine with a
# package index needs none of this: ./run.sh test installs everything there.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=.whl
# what a PyTorch image usually lacks: ours and cityscapesscripts' own dependencies (typing is the standard library)
EXTRA="pyspng-seunglab deflate cityscapesscripts coloredlogs humanfriendly pyquaternion appdirs"
PINNED="numpy pillow"

pinned() {  # the version constraints.txt gives PACKAGE
  sed -n "s/^$1==\([^ #]*\).*/\1/p" constraints.txt
}

case "${1:-}" in
  fetch)
    version=${GPU_PYTHON_VERSION:-3.12}
    rm -rf "$WHEELS"  # one version of each package: two would stop the install there
    mkdir -p "$WHEELS"
    for name in $EXTRA $PINNED; do
      spec=$name
      if [ -n "$(pinned "$name")" ]; then spec="$name==$(pinned "$name")"; fi
      python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version "$version" --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d "$WHEELS" "$spec"
    done
    ls -l "$WHEELS"
    du -sh "$WHEELS"
    ;;
  install)
    PYTHON=${PYTHON:-python3}
    [ -d "$WHEELS" ] || { echo "gpu_env: no $WHEELS/ here; run 'bash benchmarks/gpu_env.sh fetch' where PyPI is reachable" >&2; exit 2; }
    "$PYTHON" -c 'import torch' 2>/dev/null \
      || { echo "gpu_env: $PYTHON has no torch; set PYTHON to the image's python that has it" >&2; exit 2; }
    rm -rf .venv
    # without pip of its own (ensurepip may be missing there): the image's pip, seen through the .pth file
    # below, installs into the venv
    "$PYTHON" -m venv --without-pip .venv
    # the image's packages after the venv's own (a .pth file appends its lines to sys.path), so that the
    # wheels installed below take precedence; works whether $PYTHON is a venv's python or the system's
    site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$PYTHON" -c 'import site; print("\n".join(site.getsitepackages()))' > "$site/image-packages.pth"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile \
      "$WHEELS"/*.whl
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
      --no-build-isolation -e .
    .venv/bin/python - <<'EOF'
import cv2, numpy, PIL, torch
import cityscapes_lab, cityscapesscripts, deflate, pyspng  # noqa: F401  (each must import)
print(f"gpu_env: torch {torch.__version__}, numpy {numpy.__version__}, pillow {PIL.__version__}, "
      f"opencv {cv2.__version__}; cuda available: {torch.cuda.is_available()}")
EOF
    ;;
  *)
    echo "usage: bash benchmarks/gpu_env.sh fetch | install" >&2
    exit 2
    ;;
esac
