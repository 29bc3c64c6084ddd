# shellcheck shell=bash
# as_root "$0" "$@": run the calling script as root. As root: return (no sudo needed, so a fresh
# Debian machine without sudo works). Otherwise re-run it under sudo, or, without sudo, stop with
# one line saying what to do (exit 2).
as_root() {
    local script=$1
    shift
    [[ $(id -u) -eq 0 ]] && return 0
    if command -v sudo >/dev/null 2>&1; then
        echo "$(basename "${script}"): needs root (apt-get, dockerd): re-running with sudo" >&2
        exec sudo bash "${script}" "$@"
    fi
    echo "$(basename "${script}"): needs root (apt-get, dockerd) and sudo is not installed: run it as root (su -)" >&2
    exit 2
}
