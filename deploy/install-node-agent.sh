#!/bin/sh
# Install the metasched node agent as the fixed, root-owned helper that the service runs with
# `sudo -n /usr/local/libexec/metasched-node-agent` (see deploy/sudoers/metasched).
#
# Run as root ON EACH NODE, from a copy of the metasched sources (or give the agent file):
#     sh deploy/install-node-agent.sh [AGENT_FILE]
# From the frontend, for every node:
#     scp metasched/node_agent.py root@NODE:/tmp/metasched-node-agent.py
#     ssh root@NODE 'sh -s /tmp/metasched-node-agent.py' < deploy/install-node-agent.sh
#
# The helper runs as root with a request written by the service user, so it must not be writable by
# anyone but root, nor sit in a directory others can write: it is installed with install(1) as
# root:root 0755 into a root-owned directory, replacing any previous copy atomically.
# METASCHED_AGENT_DEST overrides the destination (tests only: the sudoers rule names the default).
set -eu

DEST=${METASCHED_AGENT_DEST:-/usr/local/libexec/metasched-node-agent}
HERE=$(cd "$(dirname "$0")" 2>/dev/null && pwd || echo .)
SRC=${1:-$HERE/../metasched/node_agent.py}

die() { echo "install-node-agent: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (the helper must be owned by root)"
[ -f "$SRC" ] || die "agent file $SRC not found (give it as the first argument)"
[ -s "$SRC" ] || die "agent file $SRC is empty"
command -v python3 >/dev/null 2>&1 || die "python3 is missing on this node (the agent is a Python script)"

dir=$(dirname "$DEST")
install -d -o root -g root -m 0755 "$dir"
# every directory above the helper must be root-owned and not writable by others
d=$dir
while [ "$d" != "/" ]; do
    owner=$(stat -c %u "$d")
    mode=$(stat -c %a "$d")
    [ "$owner" -eq 0 ] || die "$d is not owned by root: the helper would not be safe there"
    case $mode in
        *[2367]?|*[2367]) die "$d is writable by group or others (mode $mode): the helper would not be safe there";;
    esac
    d=$(dirname "$d")
done

tmp="$DEST.new.$$"
install -o root -g root -m 0755 "$SRC" "$tmp"
mv -f "$tmp" "$DEST"
echo "installed $DEST ($(wc -c < "$DEST") bytes, sha256 $(sha256sum "$DEST" | cut -d' ' -f1))"
