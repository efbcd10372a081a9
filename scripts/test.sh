#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite: `bash scripts/test.sh [pytest args]`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian's Chromium drives the mobile demo's browser tests (Playwright never downloads a browser here).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "could not install chromium; the browser tests will be skipped" >&2
fi

# Debian's compiler and libraries for the native core (edge/native; its tests skip without them), and
# a JDK for the Android shell's JNI layer (edge/native/android, tests/test_native_shells.py).
native_debs="g++ clang libsqlite3-dev libssl-dev libjpeg-dev libpng-dev nlohmann-json3-dev openjdk-17-jdk-headless"
if ! dpkg -s $native_debs >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $native_debs >/dev/null; } \
    || echo "could not install the native core's build dependencies; its tests will be skipped" >&2
fi

# The AArch64 cross compiler and qemu-user that run the phone CPU's NEON kernels (tests/test_native_cross.py),
# on their own: where they cannot be installed, only that test skips.
cross_debs="g++-aarch64-linux-gnu qemu-user"
if ! dpkg -s $cross_debs >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $cross_debs >/dev/null; } \
    || echo "could not install the AArch64 cross compiler and qemu; tests/test_native_cross.py will be skipped" >&2
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[test]'
python -m pytest -q "$@"
