#!/bin/sh
# Build and push the platform runtime image (images/runtime/Dockerfile) with podman, docker or buildah.
#   scripts/build-image.sh            build and push $REGISTRY/aiinfn-platform:<project version>
#   PUSH=no scripts/build-image.sh    build only
# REGISTRY defaults to ghcr.io/ai-infn (log in first: podman login ghcr.io); the tag is the version in
# pyproject.toml, which is also the program's default aiinfn:monitoring.runtimeImage. A pushed tag is never
# rebuilt: bump the version for a new image.
set -eu
cd "$(dirname "$0")/.."
version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
image="${REGISTRY:-ghcr.io/ai-infn}/aiinfn-platform:$version"
tool=${CONTAINER_TOOL:-}
if [ -z "$tool" ]; then
    for t in podman docker buildah; do
        if command -v "$t" >/dev/null; then tool=$t; break; fi
    done
fi
[ -n "$tool" ] || { echo "build-image: no podman, docker or buildah found (set CONTAINER_TOOL)" >&2; exit 1; }
if [ "${PUSH:-yes}" = yes ] && "$tool" manifest inspect "$image" >/dev/null 2>&1; then
    echo "build-image: $image already exists in the registry; bump the version in pyproject.toml" >&2; exit 1
fi
case "$tool" in
    buildah) buildah bud --file images/runtime/Dockerfile --tag "$image" . ;;
    *) "$tool" build --file images/runtime/Dockerfile --tag "$image" . ;;
esac
if [ "${PUSH:-yes}" = yes ]; then
    "$tool" push "$image"
    echo "build-image: pushed $image"
else
    echo "build-image: built $image (not pushed)"
fi
