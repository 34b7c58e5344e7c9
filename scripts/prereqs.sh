#!/usr/bin/env bash
# prereqs.sh: installs what offload's demo and tests need on Debian 12, if missing:
# the Docker engine (docker.io), a static busybox for local images, rsync for benchmarks
# and the ssh tests, mmdebstrap for the Debian test image, OpenSSH's client for the ssh tests,
# Chromium and chromedriver for the dashboard's browser tests, dbus-daemon for the desktop
# notification tests, Podman with runc and catatonit for the Podman tests, python3 for
# the shaped link (bench/link.py).
set -euo pipefail

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker >/dev/null 2>&1 || need+=(docker.io)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
# The test swarm: network namespaces, veth pairs and a bridge (ip), dockerd entered into
# a namespace (nsenter).
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
# The dashboard's browser tests: headless Chromium and its WebDriver.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# The notification tests: a private D-Bus session bus.
command -v dbus-daemon >/dev/null 2>&1 || need+=(dbus-daemon)
# The Podman tests: Podman's Docker-compatible service with runc, and catatonit, the
# init Podman runs a container's processes under (left out without recommends).
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v catatonit >/dev/null 2>&1 || need+=(catatonit)
# The shaped-link tests: bench/link.py carries packets between two namespaces.
command -v python3 >/dev/null 2>&1 || need+=(python3)

if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing ${need[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
