#!/bin/sh
# Container entrypoint of the simapp image: fills in WEB_HOST, then runs the command
# (by default `faust -A simapp worker -l info`) as PID 1 so it receives SIGTERM itself.
#
# Faust advertises WEB_HOST:METRICS_PORT to the other workers of the group. The settings
# default (127.0.0.1) is right on one machine but wrong in a container, so unless WEB_HOST is
# set we use this container's host name, which Docker's DNS resolves on the compose network.
set -eu
if [ -z "${WEB_HOST:-}" ]; then
    WEB_HOST="$(hostname)"
    export WEB_HOST
fi
exec "$@"
