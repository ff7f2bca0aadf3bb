#!/usr/bin/env bash
# Janus from Debian's package, as a plain process on 127.0.0.1 for tests and local runs.
#
#   scripts/servers/janus.sh install | start | stop | status
#
# JANUS_PORT   WebSocket port (default 8188): ws://127.0.0.1:$JANUS_PORT, subprotocol janus-protocol
# JANUS_RUN    where the rendered configs, the log and the pid go (default /tmp/loadgen-janus-$JANUS_PORT)
# JANUS_IP     address the WebSocket listens on (default 127.0.0.1)
# JANUS_ICE_INTERFACE  the only interface ICE gathers candidates on (default lo, where libnice gathers
#              nothing: signalling only); real media needs one peers can reach (docs/webrtc.md)
# JANUS_NETNS  network namespace (ip netns) to start Janus in; stop and status need only the pid
#
# Configs live beside this script (scripts/servers/janus/); start renders them into JANUS_RUN, so
# several servers on different ports can run at once. No systemd: the process is ours, stopped by
# its pid. install needs root only when the package is missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/apt.sh"
port="${JANUS_PORT:-8188}"
run="${JANUS_RUN:-/tmp/loadgen-janus-$port}"
pidfile="$run/janus.pid"
ip="${JANUS_IP:-127.0.0.1}"
ice_interface="${JANUS_ICE_INTERFACE:-lo}"

install() { install_for janus janus; }

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

listening() { (exec 3<>"/dev/tcp/$ip/$port") 2>/dev/null; }

start() {
	install
	if [ -n "${JANUS_NETNS:-}" ]; then
		# the port check and Janus itself run inside the namespace
		local netns="$JANUS_NETNS"
		JANUS_NETNS="" exec ip netns exec "$netns" "$here/janus.sh" start
	fi
	if running; then
		echo "janus already running on ws://$ip:$port (pid $(cat "$pidfile"))"
		return 0
	fi
	if listening; then
		echo "port $port on $ip is taken by another process" >&2
		exit 1
	fi
	local lib
	lib="/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)/janus"
	rm -rf "$run/conf"
	mkdir -p "$run/conf"
	for file in "$here"/janus/*.jcfg; do
		sed -e "s|@JANUS_LIB@|$lib|g" -e "s|@CONF_DIR@|$run/conf|g" -e "s|@PORT@|$port|g" \
			-e "s|@IP@|$ip|g" -e "s|@ICE_INTERFACE@|$ice_interface|g" \
			"$file" >"$run/conf/$(basename "$file")"
	done
	# -N: no log on stdout; -o: no colours in the log file
	nohup janus -F "$run/conf" -C "$run/conf/janus.jcfg" -N -o -L "$run/janus.log" >"$run/stdout.log" 2>&1 &
	echo $! >"$pidfile"
	local deadline=$((SECONDS + 30))
	until listening; do
		if ! running || [ "$SECONDS" -ge "$deadline" ]; then
			echo "janus did not come up on port $port:" >&2
			tail -n 5 "$run/janus.log" "$run/stdout.log" >&2 || true
			stop >/dev/null
			exit 1
		fi
		sleep 0.1
	done
	echo "janus running on ws://$ip:$port (pid $(cat "$pidfile"), log $run/janus.log)"
}

stop() {
	if running; then
		local pid
		pid="$(cat "$pidfile")"
		# SIGINT is Janus' clean shutdown; it may take a few seconds to tear sessions down
		kill -INT "$pid"
		for _ in $(seq 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			kill -KILL "$pid"
		fi
		echo "janus on port $port stopped"
	else
		echo "janus on port $port not running"
	fi
	rm -f "$pidfile"
}

status() {
	if running; then
		echo "running on ws://$ip:$port (pid $(cat "$pidfile"))"
	else
		echo "stopped"
		return 3
	fi
}

case "${1:-}" in
install) install ;;
start) start ;;
stop) stop ;;
status) status ;;
*)
	echo "usage: $0 install|start|stop|status" >&2
	exit 2
	;;
esac
