# Sourced by scripts that install Debian packages for the tests.
#
# install_for COMMAND PKG...: the packages, unless COMMAND is there already; without root, say what
# to run instead and fail.
install_for() {
	local command="$1"
	shift
	command -v "$command" >/dev/null 2>&1 && return 0
	if [ "$(id -u)" != 0 ]; then
		echo "$command is missing; run as root or: sudo apt-get install --no-install-recommends $*" >&2
		exit 1
	fi
	apt_install "$@"
}

# apt_install PKG...: install the packages without letting their own services start: a packaged
# Prosody, Janus or Prometheus would listen on every interface, and the tests start their own
# on loopback. A policy-rc.d that refuses every start is in place only while apt-get runs,
# unless the machine already has one. The package lists are refreshed only when an install
# from the present ones fails (a fresh image has none; a stale one may name versions gone).
apt_install() {
	local guard=""
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		guard=/usr/sbin/policy-rc.d
	fi
	local status=0
	DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@" \
		>/dev/null 2>&1 || {
		apt-get -o DPkg::Lock::Timeout=600 update -qq
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
			"$@" >/dev/null
	} || status=$?
	[ -z "$guard" ] || rm -f "$guard"
	return "$status"
}
