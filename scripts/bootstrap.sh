#!/usr/bin/env bash
# Prepare a Debian machine to build and test pulsarfunc without a container registry:
# a Docker engine, local base images (mmdebstrap + docker import), a local Apache Pulsar broker
# image built from the official server distribution on Maven Central, and the dev venv.
#
# Idempotent: every step checks first and skips what is already there. Everything expensive is
# cached under $PULSARFUNC_CACHE (default ~/.cache/pulsarfunc), keyed by version, so a warm run
# takes seconds. Needs root (apt, dockerd). Usage: scripts/bootstrap.sh (re-runs itself with sudo
# when not root)
set -euo pipefail
# shellcheck source=lib/as-root.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/as-root.sh"
as_root "${BASH_SOURCE[0]}" "$@"

PULSAR_VERSION=4.0.8
SUITE=bookworm
IMAGE_PREFIX=${PULSARFUNC_IMAGE_PREFIX:-pulsarfunc-local} # another prefix tests a cold bootstrap
PY_IMAGE=${IMAGE_PREFIX}/python:3.11
JRE_IMAGE=${IMAGE_PREFIX}/jre:17
PULSAR_IMAGE=${IMAGE_PREFIX}/pulsar:${PULSAR_VERSION}
APT_PACKAGES=(docker.io docker-registry mmdebstrap maven python3-venv python3-pip curl)

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${PULSARFUNC_CACHE:-${HOME}/.cache/pulsarfunc}
PULSAR_DIR=${CACHE}/pulsar-${PULSAR_VERSION}            # the broker image's build context
PULSAR_TARBALL=${PULSAR_DIR}/pulsar-server-distribution-${PULSAR_VERSION}-bin.tar.gz
PULSAR_HOME=${PULSAR_DIR}/apache-pulsar-${PULSAR_VERSION}
ENV_FILE=${CACHE}/local-images.env
VENV=${REPO}/.venv
DOCKERD_LOG=/var/log/dockerd.log
export DOCKER_BUILDKIT=0 # the Debian engine has only the classic builder

# --- step runner: names each step, times it, says what it did; names the step that failed ----
CURRENT_STEP=""
STEP_RESULT=""
STEP_START=0
BOOT_START=${EPOCHREALTIME}
SUMMARY=()

elapsed() { awk -v a="$1" -v b="${EPOCHREALTIME}" 'BEGIN { printf "%.1f", b - a }'; }
log() { printf '    %s\n' "$*"; }
did() { STEP_RESULT="done: $*"; }
skipped() { STEP_RESULT="skipped: $*"; }

step() {
    CURRENT_STEP=$1
    STEP_RESULT=""
    STEP_START=${EPOCHREALTIME}
    printf '==> %s\n' "$1"
    "$2"
    local line
    line=$(printf '%-22s %-72s %6ss' "$1" "${STEP_RESULT}" "$(elapsed "${STEP_START}")")
    printf '    %s\n' "${line}"
    SUMMARY+=("${line}")
    CURRENT_STEP=""
}

on_exit() {
    local rc=$?
    if [[ ${rc} -ne 0 && -n ${CURRENT_STEP} ]]; then
        printf '\nbootstrap: FAILED in step "%s" after %ss (exit %d). See the output above.\n' \
            "${CURRENT_STEP}" "$(elapsed "${STEP_START}")" "${rc}" >&2
    fi
}
trap on_exit EXIT

die() {
    printf 'bootstrap: %s\n' "$*" >&2
    exit 1
}

# --- steps -------------------------------------------------------------------------------------
step_packages() {
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("${pkg}")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        skipped "all installed (${APT_PACKAGES[*]})"
        return
    fi
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    did "installed ${missing[*]}"
}

step_engine() {
    if docker info >/dev/null 2>&1; then
        skipped "engine answers ($(docker version -f '{{.Server.Version}}'))"
        return
    fi
    log "starting dockerd (log: ${DOCKERD_LOG})"
    setsid nohup dockerd >>"${DOCKERD_LOG}" 2>&1 </dev/null &
    local deadline=$((SECONDS + 60))
    until docker info >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            tail -n 20 "${DOCKERD_LOG}" >&2 || true
            die "dockerd did not answer within 60 s (last lines of ${DOCKERD_LOG} above)"
        fi
        sleep 0.5
    done
    did "started dockerd ($(docker version -f '{{.Server.Version}}'))"
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# import_rootfs TAG ROOTFS PACKAGES: docker import of an mmdebstrap minbase rootfs (tar or dir).
import_rootfs() {
    local tag=$1 rootfs=$2 packages=$3
    if image_exists "${tag}"; then
        skipped "${tag} exists"
        return
    fi
    if [[ ! -e ${rootfs} ]]; then
        log "mmdebstrap ${SUITE} minbase + ${packages} -> ${rootfs}"
        mkdir -p "$(dirname "${rootfs}")"
        rm -f "${rootfs}.partial"
        mmdebstrap --quiet --variant=minbase --format=tar --include="${packages}" \
            "${SUITE}" "${rootfs}.partial"
        mv "${rootfs}.partial" "${rootfs}"
    fi
    log "docker import ${rootfs} -> ${tag}"
    if [[ -d ${rootfs} ]]; then
        tar --numeric-owner -C "${rootfs}" -cf - . | docker import - "${tag}" >/dev/null
    else
        docker import "${rootfs}" "${tag}" >/dev/null
    fi
    did "imported ${tag} from ${rootfs}"
}

step_python_base() {
    import_rootfs "${PY_IMAGE}" "${CACHE}/rootfs/python3.11-${SUITE}.tar" python3,ca-certificates
}

step_jre_base() {
    import_rootfs "${JRE_IMAGE}" "${CACHE}/rootfs/jre17-${SUITE}.tar" \
        openjdk-17-jre-headless,ca-certificates,curl
}

step_pulsar_download() {
    if [[ -s ${PULSAR_TARBALL} ]]; then
        skipped "cached ${PULSAR_TARBALL}"
        return
    fi
    local tmp=${PULSAR_DIR}/.download
    rm -rf "${tmp}" && mkdir -p "${tmp}"
    # Maven's own repository lives in the cache too (HOME-independent), minus the 245 MB copy.
    if ! mvn -B -q -Dmaven.repo.local="${CACHE}/m2" dependency:copy \
        -Dartifact="org.apache.pulsar:pulsar-server-distribution:${PULSAR_VERSION}:tar.gz:bin" \
        -DoutputDirectory="${tmp}" >"${PULSAR_DIR}/mvn.log" 2>&1; then
        tail -n 40 "${PULSAR_DIR}/mvn.log" >&2
        die "mvn dependency:copy failed (full log: ${PULSAR_DIR}/mvn.log)"
    fi
    mv "${tmp}/$(basename "${PULSAR_TARBALL}")" "${PULSAR_TARBALL}"
    rm -rf "${tmp}" "${CACHE}/m2/org/apache/pulsar/pulsar-server-distribution"
    did "downloaded $(du -h "${PULSAR_TARBALL}" | cut -f1) from Maven Central"
}

step_pulsar_unpack() {
    if [[ -x ${PULSAR_HOME}/bin/pulsar ]]; then
        skipped "PULSAR_HOME=${PULSAR_HOME}"
        return
    fi
    local tmp=${PULSAR_DIR}/.unpack
    rm -rf "${tmp}" && mkdir -p "${tmp}"
    tar -xzf "${PULSAR_TARBALL}" -C "${tmp}"
    rm -rf "${PULSAR_HOME}"
    mv "${tmp}/apache-pulsar-${PULSAR_VERSION}" "${PULSAR_HOME}"
    rm -rf "${tmp}"
    did "unpacked to ${PULSAR_HOME}"
}

step_pulsar_image() {
    # The recipe hash covers the Dockerfile, .dockerignore and the JRE base: change any, rebuild.
    cp "${REPO}/scripts/pulsar-image/Dockerfile" "${REPO}/scripts/pulsar-image/.dockerignore" \
        "${PULSAR_DIR}/"
    local recipe have
    recipe=$({
        cat "${PULSAR_DIR}/Dockerfile" "${PULSAR_DIR}/.dockerignore"
        docker image inspect -f '{{.Id}}' "${JRE_IMAGE}"
        echo "${PULSAR_VERSION}"
    } | sha256sum | cut -c1-16)
    have=$(docker image inspect -f '{{index .Config.Labels "pulsarfunc.recipe"}}' \
        "${PULSAR_IMAGE}" 2>/dev/null || true)
    if [[ ${have} == "${recipe}" ]]; then
        skipped "${PULSAR_IMAGE} is current (recipe ${recipe})"
        return
    fi
    log "docker build ${PULSAR_IMAGE} (context ${PULSAR_DIR})"
    docker build --build-arg "PULSAR_VERSION=${PULSAR_VERSION}" \
        --build-arg "JRE_IMAGE=${JRE_IMAGE}" --label "pulsarfunc.recipe=${recipe}" \
        -t "${PULSAR_IMAGE}" "${PULSAR_DIR}"
    did "built ${PULSAR_IMAGE} (recipe ${recipe})"
}

step_venv() {
    local want have=""
    want=$(sha256sum "${REPO}/pyproject.toml" | cut -c1-16)
    if [[ ! -x ${VENV}/bin/python ]]; then
        log "python3 -m venv ${VENV}"
        python3 -m venv "${VENV}"
    fi
    [[ -f ${VENV}/.pulsarfunc-deps ]] && have=$(<"${VENV}/.pulsarfunc-deps")
    if [[ ${have} == "${want}" ]] && "${VENV}/bin/python" -c 'import pulsarfunc' 2>/dev/null; then
        skipped "${VENV} matches pyproject.toml"
        return
    fi
    log "pip install -e '.[dev]'"
    "${VENV}/bin/python" -m pip install -q -e "${REPO}[dev]"
    echo "${want}" >"${VENV}/.pulsarfunc-deps"
    did "installed .[dev] into ${VENV}"
}

step_env_file() {
    cat >"${ENV_FILE}.tmp" <<EOF
# Written by scripts/bootstrap.sh: local images that stand in for registry images.
export PULSAR_IMAGE=${PULSAR_IMAGE}
export PULSARFUNC_BASE_IMAGE=${PY_IMAGE}
export PULSAR_HOME=${PULSAR_HOME}
EOF
    mv "${ENV_FILE}.tmp" "${ENV_FILE}"
    did "wrote ${ENV_FILE}"
}

# --- main --------------------------------------------------------------------------------------
mkdir -p "${CACHE}" "${PULSAR_DIR}"

step "apt packages" step_packages
step "docker engine" step_engine
step "python base image" step_python_base
step "jre base image" step_jre_base
step "pulsar download" step_pulsar_download
step "pulsar unpack" step_pulsar_unpack
step "pulsar broker image" step_pulsar_image
step "dev venv" step_venv
step "env file" step_env_file

printf '\nbootstrap: ready in %ss (cache %s)\n' "$(elapsed "${BOOT_START}")" "${CACHE}"
printf '  %s\n' "${SUMMARY[@]}"
cat <<EOF

Local images stand in for registry ones; to use them in this shell:
  source ${ENV_FILE}
  (PULSAR_IMAGE=${PULSAR_IMAGE}, PULSARFUNC_BASE_IMAGE=${PY_IMAGE}, PULSAR_HOME=${PULSAR_HOME})
Then run the tests: scripts/test
EOF
