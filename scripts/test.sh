#!/usr/bin/env bash
# Set up a fresh Linux machine and run napari-maskalign's whole test suite.
#
#   bash scripts/test.sh [extra pytest arguments]
#
# 1. the Debian packages a headless napari needs (Xvfb, OpenGL, xcb): installed
#    when missing and we are root, otherwise listed and we stop;
# 2. a virtual environment in .venv (override with MASKALIGN_VENV) holding the
#    package with its `test` extra;
# 3. ruff, the docs build (warnings are errors), then pytest under a virtual X
#    server so real napari.Viewer tests run. "No tests ran" is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${MASKALIGN_VENV:-.venv}
DEB_PACKAGES="xvfb xauth libgl1 libglx-mesa0 libegl1 libopengl0 libdbus-1-3 libxkbcommon-x11-0
libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0
libxcb-shape0 libxcb-xfixes0 libxcb-xinerama0 libxcb-xinput0 libfontconfig1"

step() { printf '\n== %s\n' "$*"; }

step "system packages for headless napari"
if command -v dpkg-query >/dev/null 2>&1; then
  missing=()
  for p in $DEB_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      echo "installing: ${missing[*]}"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
      echo "These Debian packages are missing and I am not root, so I cannot install them:" >&2
      echo "  sudo apt-get install ${missing[*]}" >&2
      exit 1
    fi
  else
    echo "all present"
  fi
elif ! command -v xvfb-run >/dev/null 2>&1; then
  echo "Not a Debian system and xvfb-run is missing: install Xvfb and an OpenGL library, then re-run." >&2
  exit 1
fi

step "virtual environment $VENV"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[test]"

step "ruff"
"$VENV/bin/ruff" check src tests benchmarks scripts

if [ -f mkdocs.yml ]; then
  step "docs build (warnings are errors)"
  NO_MKDOCS_2_WARNING=1 "$VENV/bin/mkdocs" build --strict --site-dir "$(mktemp -d)"
fi

step "pytest under Xvfb"
set +e
xvfb-run -a -s "-screen 0 1600x1200x24" "$VENV/bin/python" -m pytest "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
  echo "pytest collected no tests: that is a failure, not a pass" >&2
  exit 1
fi
exit $rc
