# shellcheck shell=bash
# Sourced by every build step that runs pip: picks up the optional build
# secrets. The files are mounted for that step only and stay out of the layers.
if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi
if [ -s /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
