#!/bin/sh
# The runner image's entry point: secrets from files, then the command (`linerules run ...`).
#
# For each secret the runner (or libpq) reads from the environment, NAME_FILE may name a file
# that holds it instead (a Docker/Compose secret under /run/secrets/): the file's content, without
# its trailing newline, becomes NAME. Setting both NAME and NAME_FILE is refused, as the official
# PostgreSQL image does, so a stale value never wins silently.
set -eu

for name in LINE_CHANNEL_SECRET LINE_CHANNEL_ACCESS_TOKEN LINERULES_API_TOKEN SHOPIFY_WEBHOOK_SECRET \
    LINE_LOGIN_CHANNEL_SECRET PGPASSWORD; do
    eval "file=\${${name}_FILE:-}"
    [ -n "$file" ] || continue
    eval "value=\${${name}:-}"
    if [ -n "$value" ]; then
        echo "linerules: both $name and ${name}_FILE are set: set only one" >&2
        exit 1
    fi
    if [ ! -r "$file" ]; then
        echo "linerules: ${name}_FILE=$file cannot be read (missing, or not readable by uid $(id -u))" >&2
        exit 1
    fi
    value=$(cat "$file")  # $(...) drops the trailing newline(s)
    export "$name=$value"
    unset "${name}_FILE"
done

exec "$@"
