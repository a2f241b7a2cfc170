#!/bin/sh
# Provision this machine for metasched's integration lab (run as root, Debian 12).
#
# Installs Grid Engine, Slurm, munge, sshd, sudo, nginx, Chromium and its driver (the dashboard's tests in
# tests/ui) and Java (for Spark; pyspark itself is in the package's test extra), creates the service user,
# the spark user and the test job owners, and writes the sudoers rule. It never starts a daemon: the pytest
# fixtures start them and record their pids, so nothing runs that the tests do not own. Idempotent; when
# everything is already in place it changes nothing and returns in well under a second.
set -eu

PACKAGES="gridengine-master gridengine-exec gridengine-client gridengine-common slurm-wlm munge
openssh-server sudo nginx iproute2 procps util-linux debconf-utils python3-venv gcc libc6-dev
openjdk-17-jre-headless chromium chromium-driver"
SERVICE_USER=metascheduler
# Runs the lab's Spark Master and Worker: executors run as the Worker's user, so never root.
SPARK_USER=spark
JOB_OWNERS="alice bob"
ADMIN_GROUP=metasched-admins
SUDOERS_FILE=/etc/sudoers.d/metasched-lab
# Separate file: the node agent is the one command the service user may run as root.
AGENT_SUDOERS_FILE=/etc/sudoers.d/metasched-lab-agent
NODE_AGENT=/usr/local/libexec/metasched-node-agent
POLICY_RC=/usr/sbin/policy-rc.d

die() { echo "setup-machine.sh: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (try: sudo sh tests/lab/setup-machine.sh)"
[ -r /etc/os-release ] && . /etc/os-release
[ "${ID:-}" = debian ] || die "this lab supports Debian only (found ${ID:-unknown} ${VERSION_ID:-})"

missing_packages() {
    for p in $PACKAGES; do
        # Status "install ok installed" is the only fully configured state.
        s=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        [ "$s" = "install ok installed" ] || printf '%s ' "$p"
    done
}

remove_policy_rc() { [ -n "${OWN_POLICY_RC:-}" ] && rm -f "$POLICY_RC"; return 0; }

install_packages() {
    host=$(hostname)
    # Grid Engine's three debconf questions: configure the "default" cell with this host as master.
    for owner in gridengine-common gridengine-master; do
        printf '%s shared/gridengineconfig boolean true\n%s shared/gridenginecell string default\n%s shared/gridenginemaster string %s\n' \
            "$owner" "$owner" "$owner" "$host"
    done | debconf-set-selections
    # exit 101 = "action forbidden": package scripts must not start daemons we have not recorded.
    if [ ! -e "$POLICY_RC" ]; then
        OWN_POLICY_RC=1
        trap remove_policy_rc EXIT INT TERM
        printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC"
        chmod 755 "$POLICY_RC"
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold $PACKAGES >/dev/null
    remove_policy_rc
    trap - EXIT INT TERM
}

ensure_user() {  # name, then useradd options
    name=$1; shift
    id -u "$name" >/dev/null 2>&1 || useradd "$@" "$name"
    # useradd leaves the account locked ("!"), which sshd refuses with UsePAM no.
    case "$(getent shadow "$name" | cut -d: -f2)" in
        '*') ;;
        *) usermod -p '*' "$name" ;;
    esac
}

write_sudoers() {  # file, rule
    if [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; then
        return 0
    fi
    mkdir -p /etc/sudoers.d
    tmp=$(mktemp)
    printf '%s\n' "$2" >"$tmp"
    visudo -cqf "$tmp" || { rm -f "$tmp"; die "generated sudoers rule for $1 does not validate"; }
    chmod 0440 "$tmp"
    mv "$tmp" "$1"
}

ensure_sudoers() {
    write_sudoers "$SUDOERS_FILE" "# Written by metasched tests/lab/setup-machine.sh: the service user may act as any job owner, never as root.
$SERVICE_USER ALL=(ALL,!root) NOPASSWD: ALL"
    write_sudoers "$AGENT_SUDOERS_FILE" "# Written by metasched tests/lab/setup-machine.sh: the service user may run the installed node agent
# (deploy/install-node-agent.sh) as root, as deploy/sudoers/metasched allows; nothing else as root.
$SERVICE_USER ALL=(root) NOPASSWD: $NODE_AGENT"
}

todo=$(missing_packages)
if [ -n "$todo" ]; then
    echo "setup-machine.sh: installing $todo"
    install_packages
    todo=$(missing_packages)
    [ -z "$todo" ] || die "packages still missing after install: $todo"
fi

ensure_user "$SERVICE_USER" --system --create-home --home-dir "/home/$SERVICE_USER" --shell /bin/sh
ensure_user "$SPARK_USER" --system --create-home --home-dir "/var/lib/$SPARK_USER" --shell /usr/sbin/nologin
for u in $JOB_OWNERS; do
    ensure_user "$u" --create-home --shell /bin/bash --key UID_MIN=1000
done
[ "$(id -u alice)" -ge 1000 ] || die "alice must have uid >= 1000 (Grid Engine's min_uid)"
getent group "$ADMIN_GROUP" >/dev/null || groupadd --system "$ADMIN_GROUP"
ensure_sudoers
# Debian's sudo includes /etc/sudoers.d only through this line; refuse to continue without it.
grep -Eq '^[@#]includedir[[:space:]]+/etc/sudoers.d' /etc/sudoers || die "/etc/sudoers lacks @includedir /etc/sudoers.d"
visudo -cq >/dev/null || die "sudoers configuration does not validate"

echo "setup-machine.sh: machine ready for the metasched lab"
