-- Prosody 0.12 (Debian) as a throwaway XMPP server for load tests, on loopback only.
-- scripts/servers/prosody.sh sets the environment this file reads (Prosody maps ENV_X to $X):
--   PROSODY_RUN_DIR    data, pid and logs
--   PROSODY_HTTP_PORT  the WebSocket endpoint's port (default 5280)
-- Hosts: "localhost" (password accounts, in-band registration open), "anon.localhost"
-- (SASL ANONYMOUS), "conference.localhost" (multi-user chat, every room archived).

local run_dir = ENV_PROSODY_RUN_DIR or "/tmp/loadgen-prosody"

data_path = run_dir .. "/data"
pidfile = run_dir .. "/prosody.pid"
-- no TLS here; an existing directory keeps the certificate check quiet
certificates = run_dir .. "/certs"
log = { info = run_dir .. "/prosody.log"; error = run_dir .. "/prosody.err" }
-- started as root (as CI does) it stays root, instead of switching to the "prosody" user, who
-- could not write the run dir
run_as_root = true

-- The WebSocket endpoint is the only listener: no c2s or s2s port to collide with other servers.
interfaces = { "127.0.0.1" }
local_interfaces = { "127.0.0.1" }
c2s_ports = { }
s2s_ports = { }
http_ports = { tonumber(ENV_PROSODY_HTTP_PORT) or 5280 }
http_interfaces = { "127.0.0.1" }
https_ports = { }
https_interfaces = { }

-- Plain ws:// on loopback: SASL PLAIN must be allowed without TLS.
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
consider_websocket_secure = true

modules_enabled = {
	"roster"; "saslauth"; "disco"; "ping"; "time";
	"register";   -- XEP-0077: every virtual user makes its own account
	"mam";        -- XEP-0313: the personal archive that direct messages are recovered from
	"websocket";  -- RFC 7395
	"http";
}
modules_disabled = { "s2s"; "tls"; "limits" }

-- Hundreds of accounts in seconds: registrations from 127.0.0.1 are never throttled (the
-- default allowlist of mod_register_limits).
allow_registration = true
-- Passwords stored as given: hashed storage derives a key (thousands of hash rounds) at every
-- registration and PLAIN login, once per real user but once per virtual user and reconnect here.
authentication = "internal_plain"
-- accounts, rooms and archives all in files under the run dir: they outlive restarts
storage = "internal"

default_archive_policy = true
archive_expires_after = "1d"
-- A history query after a reconnect asks for the latest 500 messages.
max_archive_query_results = 500
-- Many connections of one account are fine (a reconnect overlapping its old connection).
max_resources = 1000

VirtualHost "localhost"

VirtualHost "anon.localhost"
	authentication = "anonymous"
	allow_registration = false

Component "conference.localhost" "muc"
	modules_enabled = { "muc_mam" }
	restrict_room_creation = false
	-- usable at once by every joiner, without the creator submitting a configuration
	muc_room_locking = false
	muc_room_default_public = true
	-- a room that empties is kept, and its archive with it: two members reconnecting at once
	-- must still find what was said while they were away
	muc_room_default_persistent = true
	muc_log_all_rooms = true
	muc_log_by_default = true
	muc_log_expires_after = "1d"
