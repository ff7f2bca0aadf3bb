#!/usr/bin/env bash
# Prosody from Debian's package as a plain loopback process for load tests: no systemd, no
# daemon fork, the config kept beside this script (prosody.cfg.lua).
#
#   scripts/servers/prosody.sh install      apt-get install prosody, only when it is missing (root)
#   scripts/servers/prosody.sh start [N]    install if needed, start; N pre-made accounts (see below)
#   scripts/servers/prosody.sh stop         stop the process this script started
#   scripts/servers/prosody.sh status       running or stopped, and the endpoint
#
# Environment: PROSODY_RUN_DIR (default /tmp/loadgen-prosody) holds data, pid and logs;
# PROSODY_HTTP_PORT (default 5280) is the port of ws://127.0.0.1:PORT/xmpp-websocket.
# Starting again while it runs does nothing; accounts and archives persist in the run dir.
#
# The XMPP driver registers its users in-band by default. With N, the accounts of users
# u0 … u(N-1) are made before the start instead, as the driver names them (loadgen-u0@localhost …)
# with the driver's default password "loadgen", for runs with ?auth=plain.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/apt.sh"
export PROSODY_RUN_DIR="${PROSODY_RUN_DIR:-/tmp/loadgen-prosody}"
export PROSODY_HTTP_PORT="${PROSODY_HTTP_PORT:-5280}"
config="$here/prosody.cfg.lua"
pid_file="$PROSODY_RUN_DIR/launched.pid"
endpoint="http://127.0.0.1:$PROSODY_HTTP_PORT/xmpp-websocket"

install() { install_for prosody prosody lua-unbound; }

running() { [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; }

make_accounts() {
	# the file layout of storage "internal" with authentication "internal_plain"; names are
	# stored with every byte outside [A-Za-z0-9] as %xx
	local dir="$PROSODY_RUN_DIR/data/localhost/accounts" n
	mkdir -p "$dir"
	for ((n = 0; n < $1; n++)); do
		printf 'return {\n\t["password"] = "loadgen";\n};\n' >"$dir/loadgen%2du$n.dat"
	done
}

start() {
	install
	if running; then
		echo "prosody already running (pid $(cat "$pid_file")), ws://127.0.0.1:$PROSODY_HTTP_PORT/xmpp-websocket"
		return 0
	fi
	mkdir -p "$PROSODY_RUN_DIR/data" "$PROSODY_RUN_DIR/certs"
	if [ -n "${1:-}" ]; then make_accounts "$1"; fi
	# -F keeps it in the foreground, so the pid is ours to stop
	nohup prosody --config "$config" -F >"$PROSODY_RUN_DIR/stdout.log" 2>&1 &
	echo $! >"$pid_file"
	local waited=0
	until curl -fs -o /dev/null "$endpoint"; do
		if ! running; then
			echo "prosody exited at start:" >&2
			tail -n 20 "$PROSODY_RUN_DIR/stdout.log" "$PROSODY_RUN_DIR/prosody.err" >&2 2>/dev/null || true
			rm -f "$pid_file"
			exit 1
		fi
		if ((waited >= 300)); then
			echo "prosody did not answer on $endpoint within 30 s; see $PROSODY_RUN_DIR" >&2
			stop >/dev/null
			exit 1
		fi
		sleep 0.1
		waited=$((waited + 1))
	done
	echo "prosody running (pid $(cat "$pid_file")), ws://127.0.0.1:$PROSODY_HTTP_PORT/xmpp-websocket"
}

stop() {
	if ! running; then
		rm -f "$pid_file"
		echo "prosody not running"
		return 0
	fi
	local pid n
	pid="$(cat "$pid_file")"
	kill "$pid"
	for ((n = 0; n < 100; n++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
	rm -f "$pid_file"
	echo "prosody stopped"
}

status() {
	if running; then
		echo "running (pid $(cat "$pid_file")), ws://127.0.0.1:$PROSODY_HTTP_PORT/xmpp-websocket"
	else
		echo "stopped"
	fi
}

case "${1:-}" in
install) install ;;
start) start "${2:-}" ;;
stop) stop ;;
status) status ;;
*)
	echo "usage: $0 install|start [N]|stop|status" >&2
	exit 2
	;;
esac
