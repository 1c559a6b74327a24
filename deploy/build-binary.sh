#!/usr/bin/env bash
# Build the standalone relay binary: one file, dist/relay, that runs `relay serve` (web chat
# included) and `relay chat` on a Linux machine without Python. Run from anywhere, in the venv
# the relay is installed in with the `binary` extra:
#
#     pip install -e '.[binary]' && bash deploy/build-binary.sh
#
# The binary carries the compiled fast path (relay._fastpath): the build refuses to go on
# without it (RELAY_REQUIRE_EXT=1), so a binary never silently runs the pure-Python twin. It
# needs the glibc of the build machine or newer (PyInstaller bundles libpython and the
# extension modules, not the C library): build on the oldest system you deploy to.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python}
if ! "$python" -m PyInstaller --version >/dev/null 2>&1; then
  echo "build-binary: PyInstaller is missing: pip install -e '.[binary]'" >&2
  exit 2
fi
# The compiled fast path must be importable from this checkout (pip install -e . builds it).
RELAY_REQUIRE_EXT=1 "$python" -c 'import relay.fastpath' || {
  echo "build-binary: relay._fastpath is not built: pip install -e '.[binary]' (needs a C compiler)" >&2
  exit 2
}

work=build/pyinstaller
# --collect-submodules relay: relay.fastpath imports relay._fastpath / _fastpath_py by name
#   (importlib), which PyInstaller's import scan cannot see.
# --add-data relay/web: the web chat's files, read with importlib.resources.
# --copy-metadata trio-relay: `relay --version` reads the distribution's version.
# --strip: symbol tables out of the bundled libraries (libpython's alone is most of them): the
#   binary went from 31.8 to 20.3 MB and its start-up (unpacking included) from 1.2 to 0.75 s.
# --exclude-module: test and bench tools the venv may hold; the relay imports none of them.
"$python" -m PyInstaller --onefile --name relay --noconfirm --clean --log-level WARN --strip \
  --distpath dist --workpath "$work" --specpath "$work" \
  --collect-submodules relay \
  --add-data "$PWD/relay/web:relay/web" \
  --copy-metadata trio-relay \
  --exclude-module coredis --exclude-module pytest --exclude-module hypothesis \
  --exclude-module matplotlib --exclude-module Cython --exclude-module mypy \
  --exclude-module tkinter \
  deploy/relay_main.py

ls -l dist/relay
