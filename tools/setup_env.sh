#!/usr/bin/env bash
# Create or reuse the project virtual environment and install everything the
# test suite and the demo need.  Idempotent: a warm run only re-checks.
#
#   DYNSCALE_VENV   where the venv lives            (default: <repo>/.venv)
#   DYNSCALE_CACHE  where the mmcv wheel is cached   (default: ~/.cache/dynscale)
#
# Why it looks like this:
# * pip is run with --isolated so that this machine's pip config / PIP_FIND_LINKS
#   (which offer a local CPU-only torch that cannot load the registry's
#   torchvision) are ignored and the registry's build is used.
# * mmcv 2.1 (full, with ops) has no wheel for torch 2.13: it is compiled from
#   its sdist once (~12 min on 2 cores) against the installed torch and cached
#   under a key made of the torch version and the Python ABI, so a torch change
#   forces a rebuild and a wheel built against another torch is never reused.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DYNSCALE_VENV:-$ROOT/.venv}"
CACHE="${DYNSCALE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dynscale}"
CONSTRAINTS="$ROOT/tools/constraints.txt"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --isolated --disable-pip-version-check -q)
t0=$(date +%s)
log() { echo "[setup $(( $(date +%s) - t0 ))s] $*"; }

# Fingerprint of everything that decides what gets installed: a warm run with
# an unchanged fingerprint skips pip entirely.
stamp="$VENV/.dynscale-stamp"
fp=$(cat "$CONSTRAINTS" "$ROOT/setup.cfg" "$ROOT/pyproject.toml" "$0" | sha256sum | cut -c1-16)
pyver=$(python3 -c 'import sys; print(f"py{sys.version_info.major}{sys.version_info.minor}")')
# A finished environment is kept as a template keyed by the fingerprint: a fresh clone (CI) copies it as hard
# links (seconds; the files are never written in place: pip replaces files, Python writes new .pyc files) instead
# of unpacking torch's wheels again (about a minute), then installs this checkout.  DYNSCALE_ENV_TEMPLATE=0 skips it.
template="$CACHE/venv-template-$fp-$pyver"
use_template="${DYNSCALE_ENV_TEMPLATE:-1}"

# The scale-policy explorer's browser test (tests/test_scale_policy.py) drives Debian's chromium through
# chromium-driver: install both when missing (root with apt-get, as on CI); DYNSCALE_BROWSER=0 skips this.
if [ "${DYNSCALE_BROWSER:-1}" != 0 ] && { ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Debian's chromium and chromium-driver (the explorer's browser test)"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null
  else
    log "chromium / chromium-driver missing and no root apt-get here: the browser test fails under make test;" \
        "install them (apt-get install chromium chromium-driver) or run pytest without DYNSCALE_REQUIRE_BROWSER"
  fi
fi

if [ ! -x "$PY" ] && [ "$use_template" != 0 ] && [ -f "$template/.complete" ]; then
  log "copying the cached environment $template (hard links)"
  rm -rf "$VENV"
  cp -al "$template" "$VENV" 2>/dev/null || { rm -rf "$VENV"; cp -a "$template" "$VENV"; }
  rm -f "$VENV/.complete" "$stamp"
  # scripts and activate files name the environment's own path: rewrite them (sed -i writes a new file, the
  # template's copy is untouched)
  grep -rlI --null -F "$template" "$VENV/bin" | xargs -0 -r sed -i "s#$template#$VENV#g"
  log "installing dynscale (editable) into the copied environment"
  "${PIP[@]}" install -c "$CONSTRAINTS" --no-build-isolation -e "$ROOT[mm,dev,export]"
  if "$PY" "$ROOT/tools/check_env.py" --quiet; then
    echo "$fp" > "$stamp"
    log "done"
    exit 0
  fi
  log "the copied environment fails its check: building a new one"
  rm -rf "$VENV"
fi

if [ ! -x "$PY" ]; then
  log "creating virtual environment $VENV"
  python3 -m venv "$VENV"
fi

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$fp" ] && "$PY" "$ROOT/tools/check_env.py" --quiet; then
  log "environment up to date ($VENV)"
  exit 0
fi

log "installing build tools and torch (registry build, pinned)"
"${PIP[@]}" install -U pip wheel "setuptools<81" ninja
"${PIP[@]}" install -c "$CONSTRAINTS" torch torchvision

key=$("$PY" -c 'import sys, torch; print(f"torch{torch.__version__}-cp{sys.version_info.major}{sys.version_info.minor}")')
wheel_dir="$CACHE/wheels/mmcv-2.1.0-$key"
if ! ls "$wheel_dir"/mmcv-*.whl >/dev/null 2>&1; then
  log "building mmcv 2.1.0 with ops against $key (about 12 minutes on 2 cores; cached in $wheel_dir)"
  mkdir -p "$wheel_dir.tmp"
  MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "${PIP[@]}" wheel --no-build-isolation --no-deps --no-binary mmcv -w "$wheel_dir.tmp" mmcv==2.1.0
  rm -rf "$wheel_dir"; mv "$wheel_dir.tmp" "$wheel_dir"
else
  log "reusing cached mmcv wheel from $wheel_dir"
fi
"${PIP[@]}" install -c "$CONSTRAINTS" "$wheel_dir"/mmcv-*.whl

log "installing dynscale (editable) with the mm, dev and export extras"
"${PIP[@]}" install -c "$CONSTRAINTS" -e "$ROOT[mm,dev,export]"

"$PY" "$ROOT/tools/check_env.py"
echo "$fp" > "$stamp"
if [ "$use_template" != 0 ] && [ ! -f "$template/.complete" ]; then
  log "keeping this environment as the template for fresh clones ($template)"
  rm -rf "$template.tmp" "$CACHE"/venv-template-*-"$pyver"  # one template: the newest fingerprint
  mkdir -p "$CACHE"
  if { cp -al "$VENV" "$template.tmp" 2>/dev/null || cp -a "$VENV" "$template.tmp"; }; then
    grep -rlI --null -F "$VENV" "$template.tmp/bin" | xargs -0 -r sed -i "s#$VENV#$template#g"
    rm -f "$template.tmp/.dynscale-stamp"
    touch "$template.tmp/.complete"
    mv "$template.tmp" "$template"
  fi
fi
log "done"
