#!/bin/sh
# A run inside a memory limit: the README's "larger than RAM" table.
#   bench/memlimit.sh RUN LIMIT_BYTES|none MODEL ARGS...
# Drops MODEL from the page cache (so it is read from disk, not charged to
# this shell's cgroup already), then runs RUN MODEL ARGS in a fresh child of
# this process's cgroup-v1 memory controller limited to LIMIT_BYTES, and
# prints GNU time's wall time and peak RSS, the exit status and the limit's
# OOM kills. Needs root and a writable /sys/fs/cgroup/memory.
set -eu
RUN=$1 LIMIT=$2 MODEL=$3
shift 3
python3 -c "import os,sys; fd=os.open(sys.argv[1],os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)" "$MODEL"
TIMEFMT='time: %e s wall, peak RSS %M KiB'
if [ "$LIMIT" = none ]; then
    /usr/bin/time -f "$TIMEFMT" "$RUN" "$MODEL" "$@" || echo "exit status $?"
    exit 0
fi
CG=/sys/fs/cgroup/memory$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup)/run_memlimit.$$
[ -d "$(dirname $CG)" ] || { echo "error: no cgroup-v1 memory controller at $(dirname $CG)" >&2; exit 1; }
mkdir $CG
echo "$LIMIT" > $CG/memory.limit_in_bytes
status=0
sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh $CG /usr/bin/time -f "$TIMEFMT" "$RUN" "$MODEL" "$@" || status=$?
echo "exit status $status, OOM kills $(sed -n 's/^oom_kill //p' $CG/memory.oom_control)"
rmdir $CG
