# Source this to build stillflow by hand (the Makefile does it for you):
#   . scripts/dev-env.sh            # uses ./.venv, or $STILLFLOW_VENV if set
# torch-sys runs `python` from the active virtualenv to locate libtorch (LIBTORCH_USE_PYTORCH=1).
_sf_root=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
export STILLFLOW_VENV=${STILLFLOW_VENV:-$_sf_root/.venv}
export VIRTUAL_ENV=$STILLFLOW_VENV
export PATH=$STILLFLOW_VENV/bin:$PATH
export LIBTORCH_USE_PYTORCH=1
unset _sf_root
