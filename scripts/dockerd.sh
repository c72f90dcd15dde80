#!/usr/bin/env bash
# A Docker engine for the trainer image build and the docker tests.
#
#   scripts/dockerd.sh start  STATE_DIR   prints the DOCKER_HOST to use (one line on stdout)
#   scripts/dockerd.sh status STATE_DIR   exit 0 when the engine answers, 1 when not
#   scripts/dockerd.sh stop   STATE_DIR   stops the private engine by its PID, checks nothing is left
#
# `start` uses the machine's engine when one answers on /var/run/docker.sock (set
# RETRAIN_DOCKER_PRIVATE=1 to refuse it). Otherwise it installs docker.io when dockerd is missing
# (Debian's package; apt-get update only when the install needs it) and starts a PRIVATE dockerd whose
# socket, pidfile, exec-root and log live under STATE_DIR:
#   - unix socket only (no TCP), --bridge=none --iptables=false --ip6tables=false: no docker0, no
#     iptables rules, nothing to clean on the host; containers get a loopback-only network unless they
#     ask for --network host;
#   - storage driver overlay2 when the kernel and filesystem allow it, else vfs
#     (RETRAIN_DOCKER_STORAGE_DRIVER forces one);
#   - data-root STATE_DIR/data, or RETRAIN_DOCKER_DATA_ROOT to keep images (the build cache) between
#     runs in a directory that outlives STATE_DIR. One engine at a time owns such a data root: the
#     engine holds a lock on DATA_ROOT/.retrain-engine.lock for as long as it runs; a second engine
#     started meanwhile (another checkout's tests) takes STATE_DIR/data instead, from nothing, and says
#     so. A reused data root is tidied at start: containers a killed session left, dangling images and
#     unused volumes are removed (tagged images and the build cache stay).
# Any failure exits non-zero with the reason on stderr (the docker tests fail with it, never skip).
set -euo pipefail

SYSTEM_SOCK=/var/run/docker.sock
DOCKER_CLI=${DOCKER_CLI:-docker}

die() { echo "dockerd.sh: $*" >&2; exit 1; }
note() { echo "dockerd.sh: $*" >&2; }

usage() { echo "usage: $0 start|stop|status STATE_DIR" >&2; exit 2; }

[[ $# -eq 2 ]] || usage
CMD=$1
STATE_DIR=$2
mkdir -p "$STATE_DIR"
STATE_DIR=$(cd "$STATE_DIR" && pwd -P)
SOCK=$STATE_DIR/docker.sock
PIDFILE=$STATE_DIR/docker.pid
LOG=$STATE_DIR/dockerd.log
MODEFILE=$STATE_DIR/mode
DATA_ROOT=${RETRAIN_DOCKER_DATA_ROOT:-$STATE_DIR/data}
EXEC_ROOT=$STATE_DIR/x

answers() {  # answers SOCKET_PATH -> 0 when an engine responds there
  [[ -S $1 ]] || return 1
  timeout 10 "$DOCKER_CLI" -H "unix://$1" version --format '{{.Server.Version}}' >/dev/null 2>&1
}

pid_alive() {  # a zombie (exited, not yet reaped by its new parent) is not alive
  [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null || return 1
  [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

our_pid() { [[ -f $PIDFILE ]] && cat "$PIDFILE" || true; }

ensure_dockerd() {
  command -v dockerd >/dev/null 2>&1 && command -v "$DOCKER_CLI" >/dev/null 2>&1 && return 0
  [[ $(id -u) -eq 0 ]] || die "dockerd is not installed and installing it needs root (apt-get install docker.io)"
  command -v apt-get >/dev/null 2>&1 || die "dockerd is not installed and there is no apt-get to install docker.io"
  note "installing docker.io (Debian package)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io >"$STATE_DIR/apt.log" 2>&1; then
    note "apt-get install failed; running apt-get update first"
    DEBIAN_FRONTEND=noninteractive apt-get update >>"$STATE_DIR/apt.log" 2>&1 \
      || die "apt-get update failed (see $STATE_DIR/apt.log)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io >>"$STATE_DIR/apt.log" 2>&1 \
      || die "apt-get install docker.io failed (see $STATE_DIR/apt.log)"
  fi
  command -v dockerd >/dev/null 2>&1 || die "docker.io installed but dockerd is still not on PATH"
}

overlay_possible() {
  grep -qw overlay /proc/filesystems 2>/dev/null || modprobe overlay 2>/dev/null || return 1
  # overlay2 cannot sit on an overlay (or other unsupported) filesystem; dockerd says so at start.
  local fstype
  fstype=$(stat -f -c %T "$DATA_ROOT" 2>/dev/null || echo unknown)
  [[ $fstype != overlayfs && $fstype != overlay ]]
}

launch() {  # launch DRIVER -> 0 when the engine answers within 30 s
  local driver=$1 extra=()
  if dockerd --help 2>&1 | grep -q -- '--ip6tables'; then extra+=(--ip6tables=false); fi
  : >"$LOG"
  # fd 9 holds the data root's lock (cmd_start); dockerd inherits it and keeps it until it exits.
  # setsid: its own session, so it outlives this script and is not killed with the caller's group.
  setsid dockerd \
    -H "unix://$SOCK" \
    --data-root "$DATA_ROOT" \
    --exec-root "$EXEC_ROOT" \
    --pidfile "$PIDFILE" \
    --storage-driver "$driver" \
    --bridge=none --iptables=false --ip-masq=false "${extra[@]}" \
    >>"$LOG" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$PIDFILE.launch"
  for _ in $(seq 1 60); do
    if answers "$SOCK"; then
      echo "$driver" >"$STATE_DIR/storage-driver"
      return 0
    fi
    pid_alive "$pid" || break
    sleep 0.5
  done
  if pid_alive "$pid"; then kill -TERM "$pid" 2>/dev/null || true; sleep 2; kill -KILL "$pid" 2>/dev/null || true; fi
  return 1
}

cmd_start() {
  if [[ ${RETRAIN_DOCKER_PRIVATE:-0} != 1 ]] && answers "$SYSTEM_SOCK"; then
    echo system >"$MODEFILE"
    note "using the machine's Docker engine on $SYSTEM_SOCK"
    echo "unix://$SYSTEM_SOCK"
    return 0
  fi
  local pid
  pid=$(our_pid)
  if pid_alive "$pid" && answers "$SOCK"; then
    echo private >"$MODEFILE"
    echo "unix://$SOCK"
    return 0
  fi
  [[ $(id -u) -eq 0 ]] || die "no Docker engine answers on $SYSTEM_SOCK and a private dockerd needs root"
  # unix socket paths are limited to 108 bytes; containerd's socket is the longest one we create.
  local longest="$EXEC_ROOT/containerd/containerd.sock.ttrpc"
  (( ${#longest} < 100 )) || die "STATE_DIR path too long for unix sockets ($longest); use a shorter one"
  ensure_dockerd
  mkdir -p "$DATA_ROOT" "$EXEC_ROOT"
  lock_data_root
  rm -f "$SOCK" "$PIDFILE"
  host_network_state >"$STATE_DIR/host-network-before"

  local drivers
  if [[ -n ${RETRAIN_DOCKER_STORAGE_DRIVER:-} ]]; then
    drivers=("$RETRAIN_DOCKER_STORAGE_DRIVER")
  elif [[ -f $DATA_ROOT/.retrain-storage-driver ]]; then
    drivers=("$(cat "$DATA_ROOT/.retrain-storage-driver")")  # a data-root keeps the driver it was made with
  elif overlay_possible; then
    drivers=(overlay2 vfs)
  else
    drivers=(vfs)
  fi
  local d
  for d in "${drivers[@]}"; do
    if launch "$d"; then
      echo "$d" >"$DATA_ROOT/.retrain-storage-driver"
      echo private >"$MODEFILE"
      exec 9>&-  # the engine holds the lock now
      note "private dockerd pid $(cat "$PIDFILE") storage-driver $d data-root $DATA_ROOT"
      tidy_data_root
      echo "unix://$SOCK"
      return 0
    fi
    note "dockerd did not start with storage driver $d:"
    tail -n 5 "$LOG" >&2 || true
  done
  die "the Docker engine could not start (log: $LOG)"
}

lock_data_root() {  # the data root for this engine alone; another engine's -> a private one
  exec 9>>"$DATA_ROOT/.retrain-engine.lock"
  flock -n 9 && return 0
  exec 9>&-
  note "another engine uses $DATA_ROOT; this one keeps its images in $STATE_DIR/data (built from nothing)"
  DATA_ROOT=$STATE_DIR/data
  mkdir -p "$DATA_ROOT"
  exec 9>>"$DATA_ROOT/.retrain-engine.lock"
  flock -n 9 || die "cannot lock $DATA_ROOT"
}

remove_containers() {  # remove_containers WHY: every container on our engine, named in a note
  local left
  left=$("$DOCKER_CLI" -H "unix://$SOCK" ps -aq 2>/dev/null || true)
  [[ -n $left ]] || return 0
  note "removing containers $1: $(echo $left)"
  # shellcheck disable=SC2086
  "$DOCKER_CLI" -H "unix://$SOCK" rm -f $left >/dev/null 2>&1 || true
}

tidy_data_root() {  # what a killed session left in a reused data root (never images in use or tagged)
  local dk=("$DOCKER_CLI" -H "unix://$SOCK")
  remove_containers "an earlier session left"
  "${dk[@]}" image prune -f >/dev/null 2>&1 || note "docker image prune failed (ignored)"
  "${dk[@]}" volume prune -f >/dev/null 2>&1 || note "docker volume prune failed (ignored)"
}

cmd_status() {
  if [[ -f $MODEFILE && $(cat "$MODEFILE") == system ]]; then
    answers "$SYSTEM_SOCK" && { echo "running (machine engine) unix://$SYSTEM_SOCK"; return 0; }
    echo "not running (machine engine on $SYSTEM_SOCK does not answer)"; return 1
  fi
  local pid
  pid=$(our_pid)
  if pid_alive "$pid" && answers "$SOCK"; then
    echo "running pid $pid unix://$SOCK storage-driver $(cat "$STATE_DIR/storage-driver" 2>/dev/null || echo '?')"
    return 0
  fi
  echo "not running"
  return 1
}

host_network_state() {  # docker0 and docker iptables rules, whoever made them
  if [[ -e /sys/class/net/docker0 ]]; then echo "network link docker0"; fi
  if command -v iptables >/dev/null 2>&1; then
    iptables -S 2>/dev/null | grep -i docker | sed 's/^/iptables /' || true
    iptables -t nat -S 2>/dev/null | grep -i docker | sed 's/^/iptables nat /' || true
  fi
}

leftovers() {  # prints one line per thing the private engine left on the host
  local p
  for p in /proc/[0-9]*; do
    [[ -r $p/cmdline ]] || continue
    local cmdline
    cmdline=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null || true)
    [[ $cmdline == *dockerd.sh* ]] && continue  # this script, called with STATE_DIR
    if [[ $cmdline == *"$STATE_DIR/"* ]]; then echo "process ${p#/proc/}: ${cmdline:0:160}"; fi
  done
  awk -v a="$STATE_DIR/" -v b="$DATA_ROOT/" 'index($5, a) == 1 || index($5, b) == 1 {print "mount " $5}' \
    /proc/self/mountinfo
  # Network state that was not there before the engine started (another engine's is not ours).
  local before=$STATE_DIR/host-network-before
  [[ -f $before ]] || before=/dev/null
  host_network_state | grep -vxF -f "$before" || true
}

cmd_stop() {
  if [[ -f $MODEFILE && $(cat "$MODEFILE") == system ]]; then
    note "the machine's engine was used; nothing of ours to stop"
    rm -f "$MODEFILE"
    return 0
  fi
  local pid
  pid=$(our_pid)
  [[ -n $pid ]] || pid=$(cat "$PIDFILE.launch" 2>/dev/null || true)
  if pid_alive "$pid"; then
    if answers "$SOCK"; then remove_containers "still on the engine"; fi
    kill -TERM "$pid"
    for _ in $(seq 1 40); do pid_alive "$pid" || break; sleep 0.5; done
    if pid_alive "$pid"; then
      note "dockerd $pid ignored SIGTERM for 20 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
    fi
  fi
  # Mounts a killed engine may leave (overlay layers, shm) are ours to remove.
  awk -v a="$STATE_DIR/" -v b="$DATA_ROOT/" 'index($5, a) == 1 || index($5, b) == 1 {print $5}' \
    /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -f "$PIDFILE" "$PIDFILE.launch" "$SOCK" "$MODEFILE"
  local left
  left=$(leftovers)
  if [[ -n $left ]]; then
    echo "dockerd.sh: the engine left these behind:" >&2
    echo "$left" >&2
    return 1
  fi
  note "stopped; no process, mount, docker0 link or iptables rule left"
}

case $CMD in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) usage ;;
esac
