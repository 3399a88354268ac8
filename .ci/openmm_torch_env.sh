#!/usr/bin/env bash
# Second CI environment: a real openmm-torch TorchForce in a real OpenMM Context.
#
# openmm-torch wheels are built against one specific torch, so this environment pins the
# combination known to work (see pyproject extra "openmm-torch") and runs only the tests
# marked ``openmm_torch``. Called from .ci/run; usable on its own:
#
#   bash .ci/openmm_torch_env.sh            # create/update .venv-omt, run the tests
#   OMT_VENV=/tmp/omt bash .ci/openmm_torch_env.sh
#
# Environment:
#   OMT_VENV     where to create the venv (default: <repo>/.venv-omt)
#   OMT_PYTHON   interpreter used to create it (default: python3)
#   OMT_SKIP_INSTALL=1   reuse an existing venv as is
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${OMT_VENV:-$ROOT/.venv-omt}"
PY="${OMT_PYTHON:-python3}"

TORCH_VERSION="2.9.0"
OPENMM_VERSION="8.6.1"
OPENMMTORCH_VERSION="1.5"   # PyPI name: openmmtorch (there is no "openmm-torch" on PyPI)
# vesin-torch ships its library for each torch 2.3-2.14: the main example's model.pt is exported
# with the vesin neighbour list and can only be loaded where vesin_torch is importable.
VESIN_TORCH_SPEC="vesin-torch>=0.3"

cd "$ROOT"
install() {
    # && chains: `set -e` does not apply inside a function called from `||`.
    { [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"; } &&
    "$VENV/bin/python" -m pip install -q --upgrade pip &&
    "$VENV/bin/python" -m pip install -q \
        "torch==$TORCH_VERSION" "openmm==$OPENMM_VERSION" "openmmtorch==$OPENMMTORCH_VERSION" &&
    # maskpot itself without letting pip touch the pinned torch/openmm, then its light deps.
    "$VENV/bin/python" -m pip install -q -e ".[test]" --no-deps &&
    "$VENV/bin/python" -m pip install -q "numpy>=1.24" "ase>=3.23" "mdtraj>=1.10" "tqdm>=4.60" \
        "pyyaml>=6.0" "pytest>=7" &&
    # --no-deps: never let it move the pinned torch
    "$VENV/bin/python" -m pip install -q --no-deps "$VESIN_TORCH_SPEC"
}
if [[ "${OMT_SKIP_INSTALL:-0}" != "1" ]]; then
    # exit 3 = the environment could not be installed (registry trouble), distinct from a test failure
    install || { echo "openmm-torch env: installation failed" >&2; exit 3; }
fi

# Fail loudly (not skip) when the TorchForce plugin cannot be loaded in this environment.
"$VENV/bin/python" - <<'PY'
import importlib.metadata, torch, openmm, openmmtorch, vesin_torch
print(f"openmm-torch env: torch {torch.__version__}, openmm {openmm.__version__}, "
      f"openmmtorch {importlib.metadata.version('openmmtorch')}, vesin-torch {importlib.metadata.version('vesin-torch')}")
PY
MASKPOT_REQUIRE_OPENMM_TORCH=1 "$VENV/bin/python" -m pytest -m openmm_torch tests/deploy tests/robustness -q "$@"
