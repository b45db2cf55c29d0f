#!/usr/bin/env bash
# Installs the system packages attnlab needs (Debian/Ubuntu): Mesa's Vulkan drivers and the
# Vulkan loader for the wgpu path, plus any package names given as arguments (CI passes the
# shell linter). Called by `.ci/run` and `just setup`; safe to run again and again: the install
# step runs every time (cheap when the packages are present), `apt-get update` only when the
# package lists are missing or an install fails. Uses sudo when not root.
set -euo pipefail

packages=(mesa-vulkan-drivers libvulkan1 "$@")

sudo_cmd=()
if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "setup: not root and sudo is not installed: install ${packages[*]} as root" >&2
        exit 1
    fi
    sudo_cmd=(sudo)
fi

# `env` makes the assignment work whether or not sudo is in front of it.
apt_get() { "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@"; }

lists_present() { compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; }

missing() {
    local p
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
    done
}

if ! lists_present; then
    echo "setup: no apt package lists yet: apt-get update"
    apt_get update
fi
if ! apt_get install -y "${packages[@]}"; then
    echo "setup: install failed; refreshing the package lists and trying again"
    apt_get update
    apt_get install -y "${packages[@]}" || true
fi
not_installed=$(missing)
if [ -n "$not_installed" ]; then
    echo "setup: could not install: $(echo "$not_installed" | tr '\n' ' ')" >&2
    exit 1
fi
echo "setup: installed: ${packages[*]}"
