#!/bin/sh
# Install the platform runtime into the current Python environment: the pinned requirements, then this
# repository's package without its deployment dependencies (Pulumi, providers: the exporters and the
# aggregator never import them). The image's Dockerfile runs exactly this, and so does
# tests/test_runtime_image.py in a fresh virtual environment.
#   install.sh SRC    SRC: the tree the Dockerfile's COPY lines build (pyproject.toml, README.md, aiinfn/ with
#                     services/exporters and services/accounting inside it, images/runtime/)
set -eu
src=${1:?usage: install.sh SRC}
python -m pip install --no-cache-dir --disable-pip-version-check -r "$src/images/runtime/requirements.txt"
python -m pip install --no-cache-dir --disable-pip-version-check --no-deps "$src"
