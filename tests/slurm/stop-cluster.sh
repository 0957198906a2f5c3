#!/usr/bin/env bash
# Stop the SLURM cluster tests/slurm/start-cluster.sh started from DIR: cancel its jobs first
# (stopping slurmd does not end running jobs), then stop the daemons listed in DIR/started.
#
#   bash tests/slurm/stop-cluster.sh [DIR]       (default: $SPRAY_SLURM_DIR or /tmp/spray-slurm)
set -uo pipefail

DIR=$(realpath -m "${1:-${SPRAY_SLURM_DIR:-/tmp/spray-slurm}}")
export SLURM_CONF=$DIR/slurm.conf
say() { echo "slurm cluster: $*" >&2; }

if [ ! -f "$DIR/started" ]; then
    say "nothing started from $DIR"; exit 0
fi

alive() { kill -0 "$1" 2>/dev/null; }

if [ -f "$SLURM_CONF" ] && command -v scancel >/dev/null; then
    scancel --full --signal=KILL --quiet --partition=debug 2>/dev/null
    scancel --quiet --partition=debug 2>/dev/null
    for _ in $(seq 100); do
        [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
        sleep 0.1
    done
fi

# stop in the reverse order of starting; a pid is only signalled while its process still has
# the name it was started under
tac "$DIR/started" | while read -r name pid; do
    if alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
        kill -TERM "$pid"
        for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
        if alive "$pid"; then kill -KILL "$pid"; fi
        say "stopped $name ($pid)"
    fi
done
rm -f "$DIR/started"
