#!/bin/sh
# Installs what some tests and benchmarks need besides the Python packages of pyproject.toml:
# Debian's abcmidi, for abc2midi (ABC parse checks of conversion outputs; tests that need it
# skip when it is missing). Run as root (or with sudo) on Debian or Ubuntu:
#     sh scripts/setup-test-deps.sh
set -eu
if command -v abc2midi >/dev/null 2>&1; then
    echo "abc2midi is installed: $(command -v abc2midi)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "no apt-get here: install abcmidi (abc2midi) with your package manager" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update
$SUDO apt-get install -y abcmidi
command -v abc2midi
