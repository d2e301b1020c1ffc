#!/usr/bin/env bash
# The wheels a lent GPU machine lacks for benchmarks/gpu_check.sh, into ./.whl (ignored by
# git, carried by the device tool): its image has torch, numpy, networkx, matplotlib,
# scikit-learn, psutil, pytest and hypothesis, not simpy. Run here, where pip reaches a
# registry; the machine itself reaches none. See "The GPU check" in docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
# the simpy fedsim was tested with: the one scripts/setup.sh installed
if ! simpy=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("simpy"))' \
    2>/dev/null); then
  echo "gpu_wheels.sh: no simpy in .venv; run scripts/setup.sh first" >&2; exit 2
fi
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "simpy==$simpy"
ls .whl
