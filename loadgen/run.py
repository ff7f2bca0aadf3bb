"""The toolkit inside Locust: options, the run's shared state, the drain and the summary.

A locustfile calls :func:`install` once with Locust's ``events``; that registers the
toolkit's command-line options and, when Locust builds its environment, creates one
:class:`RunContext` on it. Everything a run shares (accounting, the profile, the embedded
backend, live sessions) lives on that context, never in module globals, so several
environments can exist in one process (tests do this).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import configargparse
import gevent
from locust import log as locust_log
from locust.env import Environment
from locust.runners import STATE_MISSING, MasterRunner, WorkerRunner
from locust.stats import bucket_response_time

from loadgen import drivers, grafana, media, merge, metrics, planning, reconnects, record
from loadgen import guard as guard_module
from loadgen import slo as slo_module
from loadgen import soak as soak_module
from loadgen import summary as summary_module
from loadgen.accounting import Accounting, record_seconds
from loadgen.clock import Estimate, ProcessClock
from loadgen.drivers.base import Driver
from loadgen.drivers.reference import ReferenceDriver
from loadgen.embedded import BackendStartError, EmbeddedBackend
from loadgen.errors import ConfigError
from loadgen.population import make_user_id, worker_tag
from loadgen.profile import RECONNECT_POLICIES, ProfileError, load_profile
from loadgen.redact import url_for_display
from loadgen.session import OperationFailed, Refused, Session
from loadgen.shapes import install_shape
from loadgen.transport import ConnectError, TransportError, WebSocketClient

log = logging.getLogger("loadgen")

#: Locust's "Type" column for client operations and for end-to-end delivery outcomes
OPERATION = "WS"
#: after the last user started, how long its on_start has to choose rooms before the load is judged
PLANNING_DELAY_S = 2.0
DELIVERY = "E2E"
INVARIANT = "INV"

EXIT_UNREACHABLE = 3
#: a kind of protocol error is logged at most this often; the lines between are counted
PROTOCOL_ERROR_LOG_INTERVAL_S = 1.0
EXIT_USAGE = 2
# an interrupted run exits as a shell reports the signal that stopped it: 128 + its number
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM


#: (flag, argparse keywords) of every option the toolkit adds to locust
OPTIONS: tuple[tuple[str, dict], ...] = (
    ("--summary", {"metavar": "PATH", "default": None,
                   "help": "also write the run's summary JSON to PATH (it is always written to the results folder)"}),
    ("--results", {"metavar": "DIR", "default": None,
                   "help": "results folder of the run (default: results/<UTC time>-<scenario>/)"}),
    ("--series-interval", {"metavar": "SECONDS", "type": float, "default": 2.0,
                           "help": "add a line to the results folder's timeseries.jsonl this often (default 2)"}),
    ("--delivery-timeout", {"metavar": "SECONDS", "type": float, "default": 5.0,
                            "help": "a message missing this long while its receiver stayed in the room "
                                    "counts as lost (default 5)"}),
    ("--drain", {"metavar": "SECONDS", "type": float, "default": None,
                 "help": "at the end, how long to let in-flight messages land (default: the delivery timeout)"}),
    ("--metrics-port", {"metavar": "PORT", "type": int, "default": None,
                        "help": "serve Prometheus metrics on PORT, workers on PORT + index + 1 (default 9646; "
                                "0 turns it off; docs/metrics.md)"}),
    ("--metrics-worker-port", {"metavar": "PORT", "type": int, "default": None,
                               "help": "a worker serves metrics on exactly PORT, for one worker per pod or host "
                                       "(Kubernetes, compose); default: --metrics-port + index + 1"}),
    ("--metrics-linger", {"metavar": "SECONDS", "type": float, "default": 0.0,
                          "help": "after the run, keep serving /metrics this long so Prometheus scrapes the final "
                                  "figures; set it to the scrape interval (default 0)"}),
    ("--metrics-host", {"metavar": "ADDRESS", "default": "127.0.0.1",
                        "help": "address the metrics endpoint listens on (default 127.0.0.1)"}),
    ("--slo", {"metavar": "PATH", "default": None,
               "help": "SLO file: the run passes (exit 0) or fails (exit 1) by it, and can stop early (docs/slo.md)"}),
    ("--grafana-url", {"metavar": "URL", "default": None,
                       "help": "mark the run's start, stages, SLO breaches and end as Grafana annotations"}),
    ("--grafana-token-env", {"metavar": "VAR", "default": "GRAFANA_TOKEN",
                             "help": "environment variable holding the Grafana API token (default GRAFANA_TOKEN)"}),
    ("--clock-sync-interval", {"metavar": "SECONDS", "type": float, "default": 30.0,
                               "help": "re-measure this process's clock offset to the backend this often "
                                       "(default 30; 0: once, at the start; docs/distributed.md)"}),
    ("--clock-uncertainty-limit", {"metavar": "MS", "type": float, "default": 10.0,
                                   "help": "a latency across two processes whose clocks are not known this well "
                                           "is counted apart as uncertain (default 10 ms)"}),
    ("--driver", {"metavar": "NAME", "default": None,
                  "help": "the backend's protocol: reference, xmpp or janus (default: from the --host scheme, "
                          "ws:// the locustfile's own; docs/drivers.md)"}),
    ("--request-timeout", {"metavar": "SECONDS", "type": float, "default": 10.0,
                           "help": "how long an operation may wait for the backend's reply (default 10)"}),
    ("--reconnect-storm", {"metavar": "AT:SHARE[:CAUSE]", "action": "append", "default": None,
                           "help": "at AT seconds, cut SHARE (0..1 or %%) of the connections at once, or restart the "
                                   "embedded backend (CAUSE restart or hard_restart); repeatable; adds to the "
                                   "profile's reconnect.storms (docs/reconnects.md)"}),
    ("--reconnect-policy", {"metavar": "POLICY", "default": None, "choices": RECONNECT_POLICIES,
                            "help": "how users come back after losing their connection: immediate or backoff "
                                    "(default: the profile's reconnect.policy, else backoff)"}),
    # the generator's validity guard and the soak verdict (docs/validity.md)
    *guard_module.OPTIONS,
    *soak_module.OPTIONS,
)  # fmt: skip


def add_arguments(parser) -> None:
    """Add the toolkit's options; on Locust's parser each also reads ``LOCUST_<NAME>`` from the environment."""
    group = parser.add_argument_group("loadgen", "Options of the IM/RTC load toolkit")
    takes_env = isinstance(parser, configargparse.ArgumentParser)
    for flag, keywords in OPTIONS:
        if takes_env:
            keywords = {**keywords, "env_var": "LOCUST_" + flag[2:].replace("-", "_").upper()}
        group.add_argument(flag, **keywords)


def install(events, scenario: str) -> None:
    """Wire the toolkit into Locust for a locustfile of ``scenario``."""

    def on_init(environment: Environment, **_kwargs) -> None:
        context = RunContext(environment, scenario)
        context.start()
        # the profile is known only now, so its shape (if any) is set on the environment here,
        # leaving -u/-r/-t in charge of runs whose profile has none
        install_shape(environment, context.profile)

    events.init_command_line_parser.add_listener(add_arguments)
    events.init.add_listener(on_init)


def _log_batch(entry, latencies: Counter, now: float) -> None:
    """Add many samples to a Locust stats entry at once, as ``StatsEntry.log`` would one by one.

    One request event per delivered message costs a quarter of the generator's throughput;
    the exact latencies are in the HDR histogram anyway, this only feeds Locust's table.
    """
    second = int(now)
    if entry.use_response_times_cache and entry.last_request_timestamp and second > int(entry.last_request_timestamp):
        entry._cache_response_times(second - 1)
    total = sum(latencies.values())
    entry.num_requests += total
    entry.num_reqs_per_sec[second] += total
    entry.last_request_timestamp = now
    for ms, count in latencies.items():
        entry.total_response_time += ms * count
        entry.min_response_time = ms if entry.min_response_time is None else min(entry.min_response_time, ms)
        entry.max_response_time = max(entry.max_response_time, ms)
        entry.response_times[bucket_response_time(ms)] += count


def profile_path(value: str | None) -> str | None:
    """Locust's own ``--profile`` labels a run; a value naming a YAML file is also our load profile.

    Locust already owns the flag (to group runs in its UI and reports), so the toolkit reads
    it rather than shadowing it: ``--profile profiles/review.yaml`` both labels the run and
    loads the profile, while a plain label such as ``nightly`` stays a label.
    """
    if value and (value.endswith((".yaml", ".yml")) or os.path.isfile(value)):
        return value
    return None


class RunContext:
    """What one Locust run shares between its users."""

    def __init__(self, environment: Environment, scenario: str) -> None:
        self.environment = environment
        self.scenario = scenario
        options = environment.parsed_options
        self.options = options
        self.is_worker = isinstance(environment.runner, WorkerRunner)
        self.is_master = isinstance(environment.runner, MasterRunner)
        tag = worker_tag(make_user_id(self.worker_index, 0)) if self.is_worker else None
        # the clock outlives a test: the web UI may start several in one process
        self.clock = ProcessClock(tag)
        try:
            self._read_run_options()
            slo_path = getattr(options, "slo", None)
            self.slo = None if slo_path is None else slo_module.load_slo(slo_path)
        except (ConfigError, slo_module.SloError) as exc:
            log.error("%s", exc)
            sys.exit(EXIT_USAGE)
        self.backend: EmbeddedBackend | None = None
        self.sessions: set = set()
        self.annotator: grafana.Annotator | None = None
        self.metrics_server = None
        self._lingered = False
        self.driver_class: type[Driver] = ReferenceDriver
        self.driver_factory = ReferenceDriver
        self.transport_url = environment.host or ""
        self._skipped: set[str] = set()
        self._begin_test()
        environment.loadgen = self

    def _read_run_options(self) -> None:
        """The options that shape a test, from the command line, or on a worker from the master.

        Locust hands the master's own options to every worker when a test starts, so a worker
        started with nothing but ``--worker`` runs the master's profile, timeouts and clock
        settings. What each process serves (metrics port, host) stays its own.
        """
        options = self.options
        delivery_timeout = getattr(options, "delivery_timeout", 5.0)
        if delivery_timeout <= 0:
            raise ProfileError("--delivery-timeout", None, "", "must be a positive number of seconds")
        self.profile = load_profile(profile_path(getattr(options, "profile", None)))
        drain = getattr(options, "drain", None)
        self.drain_seconds = delivery_timeout if drain is None else drain
        self.request_timeout = getattr(options, "request_timeout", 10.0)
        self.delivery_timeout = delivery_timeout
        self.clock_sync_interval = getattr(options, "clock_sync_interval", 30.0)
        self.clock.limit = getattr(options, "clock_uncertainty_limit", 10.0) / 1000
        self.guard_thresholds = guard_module.thresholds_from(options)
        self.soak_settings = soak_module.settings_from(options)
        policy = self.profile.reconnect
        chosen = getattr(options, "reconnect_policy", None)
        self.reconnect_policy = policy if chosen is None else dataclasses.replace(policy, policy=chosen)
        given = [reconnects.parse_storm_option(v) for v in getattr(options, "reconnect_storm", None) or ()]
        self.reconnect_storms = (*policy.storms, *given)

    def _begin_test(self) -> None:
        """Fresh figures for a test: the web UI can stop a test and start another in one process."""
        self.accounting = Accounting(self.delivery_timeout, clock=self.clock)
        # users are numbered per test: the population model gives user n the same room and
        # role in every test, and the first users host the rooms
        self.user_ids: list[str] = []
        self._shared: dict[str, object] = {}
        self.draining = False
        self.drained = False
        self.finished = False
        self.interrupted = False
        self.terminated = False
        self.started_wall: float | None = None
        self.started_mono: float | None = None
        self.stopped_mono: float | None = None
        self.users_peak = 0
        self.cpu_max_percent = 0.0
        self.rss_max_bytes = 0
        # a distributed run has one id: the master's, which reaches the workers with its options
        # when Locust hands them over at the start of each test
        inherited = getattr(self.options, "loadgen_run_id", None) if self.is_worker else None
        self.run_id = inherited or uuid.uuid4().hex[:12]
        if self.is_master and self.options is not None:
            self.options.loadgen_run_id = self.run_id
        self.users: set = set()
        #: users between opening a connection and having caught up on what they missed
        self.opening = 0
        self.close_codes: Counter[int] = Counter()
        self.loop_lag_seconds = 0.0
        self.connections: Counter[str] = Counter()
        self.connect_errors: Counter[str] = Counter()
        self.receipts = 0
        #: frames from the backend that broke its protocol: in all, and by kind (PROTOCOL_ERROR_KINDS)
        self.malformed = 0
        self.protocol_errors: Counter[str] = Counter()
        #: kind -> [when it was last logged, how many of it since]
        self._protocol_errors_logged: dict[str, list] = {}
        #: result files a write failed for, already said
        self._unwritable: set[Path] = set()
        self.reconnects = reconnects.Reconnects(self.reconnect_policy, self.reconnect_storms)
        # a master has no users, so no posts of its own to time
        self.guard = guard_module.ProcessGuard(self.guard_thresholds, watches_posts=not self.is_master,
                                               process=self.clock.tag or guard_module.LOCAL)  # fmt: skip
        # one process scrapes the backend: the master, or a standalone one
        self.soak = soak_module.Watch(self.soak_settings, scrapes_backend=not self.is_worker)
        self.clock_synced_mono: float | None = None
        #: worker tag -> its clock as last reported (master only)
        self.worker_clocks: dict[str, dict] = {}
        self._greenlets: list[gevent.Greenlet] = []
        self._reported = {"duplicated": 0, "out_of_order": 0}
        self.slo_results: list = []
        self._stage_target: int | None = None
        self.recorder: record.Recorder | None = None
        self.worker_reports: dict[str, dict] = {}
        self._report_arrived: dict[str, float] = {}
        self._relayed_clocks: dict[str, float] = {}
        self.workers_reported = 0
        self.partial_workers: list[str] = []
        #: node id -> what the master knew of a worker that vanished mid-run without final figures
        self.lost_workers: dict[str, dict] = {}
        self.aborted: str | None = None
        self.final_exit_code: int | None = None
        self.violations: Counter[str] = Counter()
        self._violations_seen: set[tuple] = set()
        self._calls: dict[str, dict] = {}

    @classmethod
    def of(cls, environment: Environment) -> RunContext:
        context = getattr(environment, "loadgen", None)
        if context is None:
            raise RuntimeError("loadgen.run.install(events, scenario) was not called by the locustfile")
        return context

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        events = self.environment.events
        runner = self.environment.runner
        if self.is_worker:
            runner.register_message(merge.DRAIN, self._on_drain_request, concurrent=True)
            runner.register_message(merge.CLOCKS, self._on_clocks)
        elif self.is_master:
            runner.register_message(merge.REPORT, self._on_report)
        if not self.is_worker:
            self._target_backend()
            self._connect_grafana()
        self._serve_metrics()
        # beside Locust's own handler, which quits the same way as on Ctrl-C: only the exit code differs
        gevent.signal_handler(signal.SIGTERM, self._on_sigterm)
        events.test_start.add_listener(self._on_test_start)
        events.spawning_complete.add_listener(self._on_spawning_complete)
        events.test_stopping.add_listener(self._on_test_stopping)
        events.test_stop.add_listener(self._on_test_stop)
        events.quitting.add_listener(self._on_quitting)
        events.quit.add_listener(self._on_quit)

    def _on_spawning_complete(self, **_kwargs) -> None:
        if not self.is_master:
            # users pick their rooms as they start: judge the load once they have
            self._greenlets.append(gevent.spawn_later(PLANNING_DELAY_S, planning.warn_if_overloaded,
                                                      list(self.users), self.driver_can))  # fmt: skip

    def _on_sigterm(self) -> None:
        self.terminated = True

    def _connect_grafana(self) -> None:
        url = getattr(self.options, "grafana_url", None)
        if not url:
            return
        try:
            token = grafana.token_from_env(self.options.grafana_token_env)
        except grafana.MissingToken as exc:
            log.error("--grafana-url: %s", exc)
            sys.exit(EXIT_USAGE)
        self.annotator = grafana.Annotator(url, token, [f"scenario:{self.scenario}"])

    def annotate(self, kind: str, text: str, wait: bool = False) -> None:
        """A Grafana annotation of this test, posted from its own greenlet (Grafana may be slow)
        unless ``wait``: the last one must be out before the process exits."""
        if self.annotator is not None:
            posting = gevent.spawn(self.annotator.mark, text, [kind, f"run:{self.run_id}"])
            if wait:
                posting.join(timeout=5)

    def _serve_metrics(self) -> None:
        """Every process serves /metrics; a worker on base + index + 1 so local workers never collide."""
        chosen = getattr(self.options, "metrics_port", None)
        if chosen == 0 or self.options is None:
            return
        base = metrics.DEFAULT_PORT if chosen is None else chosen
        runner = self.environment.runner
        fixed = getattr(self.options, "metrics_worker_port", None)
        flag = "--metrics-port"
        if self.is_worker and fixed is not None:
            port, flag = fixed, "--metrics-worker-port"
        else:
            port = metrics.metrics_port(base, runner.worker_index if self.is_worker else None)
        host = self.options.metrics_host
        try:
            self.metrics_server = metrics.serve(self, port, host)
        except OSError as exc:
            if chosen is None:
                # the default port being busy must not stop a run that never asked for metrics
                log.warning("Metrics off: the default port %d on %s is busy (%s)", port, host, exc.strerror)
                return
            log.error("%s: cannot listen on %s:%d: %s", flag, host, port, exc.strerror)
            sys.exit(EXIT_USAGE)

    def _target_backend(self) -> None:
        if not self.environment.host:
            media = self.profile.media
            # the profile's forwarding choice is the embedded backend's; a backend of your own has its own
            self.backend = EmbeddedBackend(["--media-top-k", str(media.top_k)] if media and media.top_k else None)
            try:
                url = self.backend.start()
            except BackendStartError as exc:
                log.error("%s", exc)
                sys.exit(EXIT_USAGE)
            self.environment.host = url
            log.info("No --host given: started the reference backend at %s", url)
        try:
            self.resolve_driver()
        except ConfigError as exc:  # an unknown driver, or a bad option in the URL
            log.error("%s", exc)
            sys.exit(EXIT_USAGE)
        self._check_core()
        if self.backend is None and any(storm.cause != "drop" for storm in self.reconnect_storms):
            log.error("A reconnect storm that restarts the backend needs the embedded reference backend "
                      "(run without --host); a backend of your own is restarted by your own tooling")  # fmt: skip
            sys.exit(EXIT_USAGE)
        options = self.options
        if self.backend is None and options is not None and (options.headless or options.autostart):
            problem = self.probe(self.transport_url, self.driver_class.subprotocols)
            if problem is not None:
                log.error("Could not reach the backend at %s: %s", url_for_display(self.environment.host), problem)
                self._write_results(EXIT_UNREACHABLE, unreachable=problem)
                sys.exit(EXIT_UNREACHABLE)

    def resolve_driver(self) -> None:
        """The driver the host's URL (or --driver) asks for, and the WebSocket URL it connects to."""
        host = self.environment.host or ""
        user_classes = self.environment.user_classes or []
        default = next((c.driver for c in user_classes if hasattr(c, "driver")), ReferenceDriver)
        self.driver_class = drivers.choose(host, default, getattr(self.options, "driver", None))
        self.driver_factory, self.transport_url = self.driver_class.configure(host)

    def _check_core(self) -> None:
        """A scenario whose every core behaviour the driver lacks cannot be run on it: say so, exit 2."""
        supports = self.driver_class.supports
        for user_class in self.environment.user_classes or []:
            core = getattr(user_class, "core", ())
            if supports is not None and core and not any(op in supports for op in core):
                log.error("The %s driver can do none of what %s is about (%s): this scenario cannot run on it",
                          self.driver_class.__name__, user_class.__name__, ", ".join(core))  # fmt: skip
                sys.exit(EXIT_USAGE)

    def driver_does(self, op: str) -> bool:
        return self.driver_class.does(op)

    def driver_can(self, activity) -> bool:
        """Whether the driver can do what ``activity`` does; a behaviour it cannot is skipped, said once."""
        if all(self.driver_does(op) for op in activity.needs):
            return True
        name = type(activity).__name__
        if name not in self._skipped:
            self._skipped.add(name)
            missing = ", ".join(op for op in activity.needs if not self.driver_does(op))
            log.warning("The %s driver cannot do %s: every %s behaviour is skipped",
                        self.driver_class.__name__, missing, name)  # fmt: skip
        return False

    @staticmethod
    def probe(url: str, subprotocols=None, timeout: float = 5.0) -> str | None:
        """One WebSocket handshake to ``url``; the reason it failed, or None."""
        try:
            ws = WebSocketClient.connect(url, on_message=lambda data, binary: None, timeout=timeout,
                                         subprotocols=subprotocols, ping_interval=None)  # fmt: skip
        except ConnectError as exc:
            return exc.reason
        except TransportError as exc:
            return str(exc)
        ws.close(timeout=1.0)
        return None

    def _on_test_start(self, **_kwargs) -> None:
        if self.is_worker:
            try:
                self._read_run_options()
                # the master's --host and --driver arrive with the test
                self.resolve_driver()
            except ConfigError as exc:
                log.error("The master's options do not work on this worker: %s", exc)
                gevent.spawn(self.environment.runner.quit)
                return
            self._begin_test()
        elif self.started_mono is not None:
            self._begin_test()
        self.started_wall = time.time()
        self.started_mono = time.monotonic()
        if not self.is_master:
            self.sync_clock()
        if not self.is_worker:
            self.annotate("run", f"{self.scenario} run {self.run_id} started")
            self.recorder = record.Recorder(self.results_dir(), getattr(self.options, "series_interval", 2.0))
            self.recorder.start(self)
        self._greenlets = [gevent.spawn(self._housekeeping)]
        # a master has no users to cut: it runs the storms that restart its embedded backend
        storms = [s for s in self.reconnects.storms if not self.is_master or s.cause != "drop"]
        self._greenlets += [gevent.spawn(reconnects.run_storm, self, storm) for storm in storms]
        if self.soak.backend is not None:
            self._greenlets.append(gevent.spawn(self.soak.scrape_forever, self))

    def sync_clock(self) -> None:
        """Measure the backend's clock against ours, NTP-style, on a connection of its own.

        The first measurement comes before any user starts; later ones follow drift (see
        loadgen.clock). A worker reports each one at once, so the master can tell the others
        how far this worker's stamps can be trusted.
        """
        supports = self.driver_class.supports
        if not self.environment.host or (supports is not None and "clock.sync" not in supports):
            return
        self.clock_synced_mono = time.monotonic()
        probe = Session(
            self.transport_url,
            self.driver_factory(),
            Accounting().receiver(),
            reporter=self._report_clock_sync,
            request_timeout=self.request_timeout,
            ping_interval=None,
            # what the backend breaks on this connection counts as on any other
            on_malformed=lambda event: self.protocol_error(event.kind, event.reason),
        )
        try:
            probe.connect()
            offset, uncertainty = probe.sync_clock()
        except (TransportError, OperationFailed) as exc:
            known = "keeping the last offset" if self.clock.estimate else "assuming the clocks agree"
            log.warning("Clock sync with %s failed (%s); %s", url_for_display(self.environment.host), exc, known)
            return
        finally:
            probe.close()
        first = self.clock.estimate is None
        self.clock.adopt(Estimate(offset, uncertainty))
        (log.info if first else log.debug)(
            "Backend clock offset %+.3f ms (± %.3f ms)", offset * 1000, uncertainty * 1000
        )
        if self.is_worker and not self.drained:
            self._report(final=False)

    def _report_clock_sync(self, name: str, seconds: float, error: BaseException | None) -> None:
        """The clock probe is not a user: only its sync round trips are worth a line of the table."""
        if name == "clock.sync":
            self.report(name, seconds, error)

    def _housekeeping(self) -> None:
        """Once a second: expire holes, feed Locust's table, watch the generator itself."""
        runner = self.environment.runner
        while True:
            asked = time.monotonic()
            gevent.sleep(1.0)
            # how late the hub woke us: a generator starved for CPU shows here first
            self.loop_lag_seconds = max(time.monotonic() - asked - 1.0, 0.0)
            elapsed = time.monotonic() - (self.started_mono or time.monotonic())
            self.guard.tick(self, elapsed)
            self.soak.tick(elapsed)
            self.accounting.expire()
            self.flush_to_locust()
            interval = self.clock_sync_interval
            synced = self.clock_synced_mono
            if interval > 0 and synced is not None and time.monotonic() - synced >= interval and not self.draining:
                self._greenlets.append(gevent.spawn(self.sync_clock))
            if self.is_worker and not self.drained:
                self._report(final=False)
            elif self.is_master and self.worker_reports:
                self._watch_workers()
                merge.merge_into(self, self.worker_reports)
            stale = time.monotonic() - 120
            for call in [c for c, entry in self._calls.items() if entry["opened"] < stale]:
                del self._calls[call]
            self._judge_live()
            if runner is not None and not self.is_worker:
                target = getattr(runner, "target_user_count", None)
                if target is not None and target != self._stage_target:
                    self._stage_target = target
                    self.annotate("stage", f"target {target} users")
                    if self.recorder is not None:
                        self.recorder.stage(f"target {target} users")
            if runner is not None:
                self.users_peak = max(self.users_peak, runner.user_count)
                self.cpu_max_percent = max(self.cpu_max_percent, runner.current_cpu_usage)
                self.rss_max_bytes = max(self.rss_max_bytes, runner.current_memory_usage)
            if self.recorder is not None:
                self.recorder.tick(self)

    def _judge_live(self) -> None:
        """Evaluate the SLO on the figures so far; a failed abort_on_fail check past its grace stops the run."""
        if self.slo is None or self.is_worker or self.aborted is not None:
            return
        failing_before = {result.name for result in self.slo_results if not result.passed}
        self.slo_results = slo_module.evaluate(self.slo, summary_module.build(self, 0))
        for result in self.slo_results:
            if not result.passed and result.name not in failing_before:
                self.annotate("slo-breach", f"SLO check failing: {result.name} (value {result.value})")
        elapsed = time.monotonic() - (self.started_mono or time.monotonic())
        breached = slo_module.aborting(self.slo_results, elapsed)
        if breached:
            self.aborted = ", ".join(result.name for result in breached)
            log.error("SLO breached, stopping the run: %s", self.aborted)
            # from its own greenlet: quitting ends this housekeeping greenlet
            gevent.spawn(self.environment.runner.quit)

    def flush_to_locust(self) -> None:
        stats = self.environment.stats
        now = time.time()
        accounting = self.accounting
        # a master's figures are its workers' merged, whose Locust tables reach it on their own
        gains = {} if self.is_master else accounting.take_unreported()
        for name, latencies in gains.items():
            delivered = name == "msg.deliver" or name in accounting.fanout_names
            _log_batch(stats.get(name, DELIVERY if delivered else OPERATION), latencies, now)
            _log_batch(stats.total, latencies, now)
        counts = self.accounting.counts
        for kind, name in (("duplicated", "msg.duplicated"), ("out_of_order", "msg.out_of_order")):
            new = getattr(counts, kind) - self._reported[kind]
            self._reported[kind] += new
            for _ in range(new):
                self.fire(DELIVERY, name, None, AnomalyError(kind))

    def fire(self, request_type: str, name: str, seconds: float | None, error: BaseException | None) -> None:
        self.environment.events.request.fire(
            request_type=request_type,
            name=name,
            response_time=None if seconds is None else seconds * 1000,
            response_length=0,
            exception=error,
            context={},
        )

    def report(self, name: str, seconds: float, error: BaseException | None) -> None:
        """The sessions' reporter: Locust's table and the run's own histograms."""
        stats = self.accounting.operations.get(name) if error is None else None
        if stats is not None:
            # the common case first, in as few steps as it takes: thousands of times a second.
            # Locust's table gets successes from the histograms once a second (flush_to_locust):
            # an event per operation cost a tenth of the generator (bench/)
            stats.count += 1
            record_seconds(stats.histogram, seconds)
            if name == "ws.connect":
                self.connections["opened"] += 1
            return
        if isinstance(error, Refused):
            # an outcome of a busy system, timed like a success and counted by reason
            self.accounting.record_refusal(name, error.code)
            self.fire(OPERATION, f"{name} refused: {error.code}", seconds, None)
            return
        self.accounting.record_operation(name, seconds, failed=error is not None)
        if name == "ws.connect":
            if error is None:
                self.connections["opened"] += 1
            else:
                self.connect_errors[str(error)] += 1
        if error is not None:
            self.fire(OPERATION, name, seconds, error)

    def protocol_error(self, kind: str, reason: str) -> None:
        """The backend broke its protocol (a frame skipped, or a connection it made fail): counted by kind,
        a failure in Locust's table, and a warning at most once a second per kind, not once per frame."""
        self.malformed += 1
        self.protocol_errors[kind] += 1
        self.fire(OPERATION, "frame.malformed", None, ProtocolErrorSeen(kind))
        now = time.monotonic()
        logged = self._protocol_errors_logged.get(kind)
        if logged is None:
            self._protocol_errors_logged[kind] = [now, 0]
        elif now - logged[0] < PROTOCOL_ERROR_LOG_INTERVAL_S:
            logged[1] += 1
            return
        else:
            since, logged[:] = logged[1], [now, 0]
            if since:
                reason = f"{reason} (and {since} more of this kind since the last line)"
        log.warning("Protocol error from the backend: %s: %s", kind, reason)

    def violation(self, kind: str, key: tuple, evidence: str) -> None:
        """A broken backend invariant seen by a client; counted and logged once per occurrence.

        Several clients usually see the same breach (every member sees a bad snapshot);
        ``key`` names the occurrence so it counts once.
        """
        if key in self._violations_seen:
            return
        self._violations_seen.add(key)
        self.violations[kind] += 1
        log.warning("Invariant broken: %s: %s", kind, evidence)
        self.fire(INVARIANT, f"invariant.{kind}", None, InvariantViolation(evidence))

    @property
    def worker_index(self) -> int | None:
        """This worker's index in a distributed run, None in a standalone or master process."""
        return self.environment.runner.worker_index if self.is_worker else None

    def seats_held(self) -> int:
        return sum(1 for user in self.users for view in getattr(user, "views", {}).values() if view.my_seat is not None)

    def calls_in_progress(self) -> int:
        return len({call for user in self.users if (call := getattr(user, "current_call", None))})

    def shared(self, key: str, factory):
        """One object per run for ``key`` (a population table, a list of callees), made on first use."""
        value = self._shared.get(key)
        if value is None:
            value = self._shared[key] = factory()
        return value

    def members(self, room: str) -> set[str]:
        """This process's users now in ``room``."""
        return self.shared(f"members/{room}", set)

    @property
    def storms(self) -> tuple:
        section = getattr(self.profile, self.scenario, None)
        return getattr(section, "storms", ())

    def storms_active(self) -> tuple[int, ...]:
        """Which of the profile's storms are raging now (by position in the profile)."""
        if self.started_mono is None or not self.storms:
            return ()
        elapsed = time.monotonic() - self.started_mono
        return tuple(n for n, storm in enumerate(self.storms) if storm.at <= elapsed < storm.at + storm.duration)

    def storm_multiplier(self, kind: str) -> float:
        storms = self.storms
        return max((storms[n].multiplier for n in self.storms_active() if storms[n].kind == kind), default=1.0)

    def call_observed(self, update, side: str) -> None:
        """Both parties' view of a call; connected on one side only is a broken invariant.

        A verdict needs both parties in this process and both to see the call end: a party
        that lost its connection never sees the end and so never accuses the backend.
        """
        entry = self._calls.setdefault(update.call, {"opened": time.monotonic()})
        if update.state == "connected":
            entry[f"{side}_connected"] = True
        elif update.state in ("rejected", "timeout", "ended"):
            entry[f"{side}_done"] = True
        if entry.get("caller_done") and entry.get("callee_done"):
            del self._calls[update.call]
            caller, callee = entry.get("caller_connected", False), entry.get("callee_connected", False)
            if caller != callee:
                only = "caller" if caller else "callee"
                self.violation(
                    "call_one_sided",
                    ("call_one_sided", update.call),
                    f"call {update.call} ({update.caller} → {update.callee}) was connected for the {only} only",
                )

    def new_user_id(self) -> str:
        user_id = make_user_id(self.worker_index, len(self.user_ids))
        self.user_ids.append(user_id)
        return user_id

    # -- the end ----------------------------------------------------------------------

    def _on_test_stopping(self, **_kwargs) -> None:
        if self.is_master:
            self._drain_workers()
        self.drain(self.drain_seconds)

    # -- distributed runs -------------------------------------------------------------

    def _report(self, final: bool) -> None:
        self.environment.runner.send_message(merge.REPORT, merge.snapshot(self, final))

    def _on_report(self, environment: Environment, msg, **_kwargs) -> None:
        known = self.worker_reports.get(msg.node_id)
        if known is not None and known["final"] and not msg.data["final"]:
            return  # a periodic report overtaken by the final one
        self.worker_reports[msg.node_id] = msg.data
        self._report_arrived[msg.node_id] = time.monotonic()
        self._relay_clocks()

    def _relay_clocks(self) -> None:
        """Tell every worker how well each worker knows its clock, whenever that changes."""
        table = {
            tag: clock["uncertainty"]
            for tag, clock in merge.clocks(self.worker_reports).items()
            if clock["uncertainty"] is not None
        }
        if table != self._relayed_clocks:
            self._relayed_clocks = table
            self.environment.runner.send_message(merge.CLOCKS, table)

    def _on_clocks(self, environment: Environment, msg, **_kwargs) -> None:
        self.clock.peers = dict(msg.data)

    def _watch_workers(self) -> None:
        """A worker gone without final figures (killed, its machine lost) makes the results partial.

        Its last periodic report stays in the merge: the counts it had up to then are kept.
        """
        runner = self.environment.runner
        alive = {client.id for client in runner.clients.all if client.state != STATE_MISSING}
        started = self.started_mono or time.monotonic()
        for node, report in self.worker_reports.items():
            if node in alive or report["final"] or node in self.lost_workers:
                continue
            counts = report["counts"]
            lost = {
                "worker": node,
                "index": report["worker_index"],
                "lost_after_s": round(time.monotonic() - started, 1),
                "last_report_after_s": round(self._report_arrived[node] - started, 1),
                "last_counts": {k: counts[k] for k in ("sent", "delivered", "lost", "duplicated", "out_of_order")},
            }
            self.lost_workers[node] = lost
            log.error(
                "Worker %s (index %s) is gone %.1f s into the run; keeping its figures up to %.1f s: "
                "the results will be partial",
                node,
                lost["index"],
                lost["lost_after_s"],
                lost["last_report_after_s"],
            )

    def _on_drain_request(self, environment: Environment, msg, **_kwargs) -> None:
        """The master is ending the test: drain here, then send the final figures."""
        self.drain(self.drain_seconds)
        self._report(final=True)

    def _drain_workers(self) -> None:
        """Ask every worker to drain and wait (bounded) for their final reports before the verdict."""
        runner = self.environment.runner
        self._watch_workers()
        expected = {client.id for client in runner.clients.all if client.state != STATE_MISSING}
        expected -= set(self.lost_workers)
        if not expected:
            merge.merge_into(self, self.worker_reports)
            return
        runner.send_message(merge.DRAIN)
        deadline = time.monotonic() + self.drain_seconds + self.request_timeout + 10
        while time.monotonic() < deadline:
            finals = {node for node, report in self.worker_reports.items() if report["final"]}
            if expected <= finals:
                break
            gevent.sleep(0.1)
        else:
            missing = sorted(expected - {n for n, r in self.worker_reports.items() if r["final"]})
            log.error("No final figures from %d worker(s) %s: the summary is partial", len(missing), missing)
            self.partial_workers = missing
        merge.merge_into(self, self.worker_reports)

    def drain(self, seconds: float) -> None:
        """Stop sending, close every window at the backend's head, let in-flight messages land.

        Logging out is what makes a dropped *last* message of a room visible: the head in
        the logout reply says what we should have seen, even when nothing came after it.
        """
        if self.draining:
            return
        self.draining = True
        started = time.monotonic()
        log.info("Draining: no new messages; letting in-flight ones land for up to %g s", seconds)
        # A user half-way through (re)connecting would see its login or catch-up cut by the
        # logout below: a failure of our own making, and what it missed while away never fetched.
        # New ones do not start while draining; the ones under way get to finish.
        waited_until = time.monotonic() + self.request_timeout
        while self.opening and time.monotonic() < waited_until:
            gevent.sleep(0.05)
        sessions = [s for s in self.sessions if s.alive and not s.logged_out]
        jobs = [gevent.spawn(_quiet_logout, s) for s in sessions]
        gevent.joinall(jobs, timeout=self.request_timeout)
        audio = media.for_run(self)
        if audio is not None:
            # logged out, nobody is sent audio any more: what each listener heard is settled
            audio.close_all(self.accounting.now())
        accounting = self.accounting
        while time.monotonic() - started < seconds and accounting.open_holes():
            accounting.expire()
            gevent.sleep(0.05)
        accounting.finalize()
        self.flush_to_locust()
        for _ in range(accounting.counts.lost):
            self.fire(DELIVERY, "msg.lost", None, AnomalyError("lost"))
        self.drained = True
        log.info("Drain done in %.1f s", time.monotonic() - started)

    def _on_test_stop(self, **_kwargs) -> None:
        self.finish()

    def finish(self) -> None:
        """The test is over: final counts, verdict, results folder. Once per test."""
        if self.finished or self.started_mono is None:
            return
        self.finished = True
        self.stopped_mono = time.monotonic()
        for greenlet in self._greenlets:
            greenlet.kill(block=False)
        if self.is_worker:
            self._report(final=True)
            return
        if self.is_master and self.worker_reports:
            merge.merge_into(self, self.worker_reports)
        if self.recorder is not None:
            self.recorder.close(self)
        self._write_results(self._exit_code())

    def _on_quitting(self, environment: Environment, **_kwargs) -> None:
        if not self.is_worker:
            self._conclude(environment)
        self._linger()

    def _conclude(self, environment: Environment) -> None:
        if self.started_mono is not None and not self.finished:
            # Ctrl-C or SIGTERM mid-run: results are still written, from a short drain
            self.interrupted = True
            self.drain(min(self.drain_seconds, 2.0))
            self.finish()
        decided_here = (EXIT_UNREACHABLE, EXIT_INTERRUPTED, EXIT_TERMINATED)
        if self.final_exit_code is not None and (self.slo is not None or self.final_exit_code in decided_here):
            environment.process_exit_code = self.final_exit_code

    def _linger(self) -> None:
        """Serve the final figures a while longer: a process that exits at once leaves Prometheus
        with its last scrape, up to a scrape interval old."""
        seconds = getattr(self.options, "metrics_linger", 0.0) or 0.0
        if self.metrics_server is None or seconds <= 0 or self._lingered:
            return
        self._lingered = True
        log.info("Serving the final metrics for %g s more (--metrics-linger)", seconds)
        gevent.sleep(seconds)

    def _on_quit(self, **_kwargs) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def _exit_code(self) -> int | None:
        """Our verdict where Locust's own convention does not decide."""
        if self.connections["opened"] == 0 and self.connect_errors:
            return EXIT_UNREACHABLE
        if self.interrupted:
            return EXIT_TERMINATED if self.terminated else EXIT_INTERRUPTED
        return None

    def _locust_exit_code(self) -> int:
        """The code Locust's shutdown will choose, for the summary."""
        runner = self.environment.runner
        if runner is not None and (runner.errors or runner.exceptions):
            return self.options.exit_code_on_error if self.options is not None else 1
        if locust_log.unhandled_greenlet_exception:
            return 2
        return 0

    def results_dir(self) -> Path:
        chosen = getattr(self.options, "results", None)
        if chosen:
            return Path(chosen)
        stamp = datetime.fromtimestamp(self.started_wall or time.time(), timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return Path("results") / f"{stamp}-{self.scenario}"

    def _write_results(self, exit_code: int | None, unreachable: str | None = None) -> None:
        """Final summary and verdict: unreachable (3), else the SLO when given, else Locust's convention."""
        data = summary_module.build(self, 0, unreachable=unreachable)
        if unreachable is not None:
            exit_code = EXIT_UNREACHABLE
        elif exit_code != EXIT_UNREACHABLE and self.slo is not None:
            # an interrupted run still gets its checks judged, on what it got to; the exit code says interrupted
            self.slo_results = slo_module.evaluate(self.slo, data)
            data["slo"] = slo_module.slo_block(self.slo, self.slo_results)
            data["slo"]["partial"] = "partial" in data
            data["slo"]["suspect"] = bool(data["generator"]["suspect"])
            if exit_code is None:
                exit_code = slo_module.exit_code(self.slo_results)
        if exit_code is None:
            exit_code = self._locust_exit_code()
        data["exit_code"] = self.final_exit_code = exit_code
        self.annotate("run", f"{self.scenario} run {self.run_id} ended, exit code {exit_code}", wait=True)
        if self.aborted is not None:
            data["aborted"] = f"SLO breached: {self.aborted}"
        targets = [self.results_dir() / "summary.json"]
        extra = getattr(self.options, "summary", None)
        if extra:
            targets.append(Path(extra))
        written = []
        for target in targets:
            try:
                summary_module.write(data, target)
            except OSError as exc:
                log.error("Could not write the summary to %s: %s", target, exc.strerror)
            else:
                written.append(target)
        self.write_histograms()
        if unreachable is None and exit_code == EXIT_UNREACHABLE:
            reason = self.connect_errors.most_common(1)[0][0]
            log.error("Could not reach the backend at %s: %s", url_for_display(self.environment.host), reason)
        elif unreachable is None:
            for line in summary_module.format_table(data).splitlines():
                log.info("%s", line)
            if self.slo is not None:
                for line in slo_module.format_table(self.slo_results).splitlines():
                    log.info("%s", line)
            if "partial" in data:
                # a verdict on part of the load: say so beside it, not only in the JSON
                log.error("The verdict covers PARTIAL results: a worker's figures are missing (summary: partial)")
            if data["generator"]["suspect"]:
                log.error("The run is SUSPECT: the generator could not keep up, its latencies include its own "
                          "delay (summary: generator.suspect; docs/validity.md)")  # fmt: skip
        if written:
            log.info("Summary written to %s", ", ".join(os.fspath(t) for t in written))

    def write_histograms(self) -> None:
        target = self.results_dir() / "histograms.json"
        try:
            summary_module.write(summary_module.histograms(self), target)
        except OSError as exc:
            # rewritten every 30 s: a disk that stays full is said once
            said = target in self._unwritable
            self._unwritable.add(target)
            (log.debug if said else log.error)("Could not write the histograms to %s: %s", target, exc.strerror)

    def load_now(self) -> dict:
        """Users and the generator's health at this moment; on a master, the busiest worker's."""
        runner = self.environment.runner
        cpu, rss, lag = runner.current_cpu_usage, runner.current_memory_usage, self.loop_lag_seconds
        workers = 1
        if self.is_master:
            clients = list(runner.clients.all)
            workers = len(clients)
            cpu = max([cpu, *(client.cpu_usage for client in clients)])
            rss = max([rss, *(client.memory_usage for client in clients)])
            lag = max([lag, *(report["loop_lag"] for report in self.worker_reports.values())])
        return {
            "users": runner.user_count,
            "target_users": getattr(runner, "target_user_count", None),
            "workers": workers,
            "cpu_percent": round(cpu, 1),
            "rss_mb": round(rss / 2**20, 1),
            "loop_lag_ms": round(lag * 1000, 1),
        }

    def option_values(self) -> dict:
        """Locust's load flags and every option the toolkit adds, as this run has them."""
        names = ["num_users", "spawn_rate", "run_time", "headless", "expect_workers", "processes"]
        names += [flag[2:].replace("-", "_") for flag, _ in OPTIONS]
        values = {name: getattr(self.options, name, None) for name in names}
        return {name: url_for_display(v) if isinstance(v, str) and "://" in v else v for name, v in values.items()}


class InvariantViolation(Exception):
    """A backend invariant broken, with the evidence clients saw."""


class AnomalyError(Exception):
    """A delivery outcome that is a failure in Locust's table: lost, duplicated, out of order."""


class ProtocolErrorSeen(Exception):
    """A frame that broke the backend's protocol, named by its kind in Locust's table."""


def _quiet_logout(session) -> None:
    try:
        session.logout()
    except (OperationFailed, TransportError) as exc:
        # a session that cannot log out keeps the windows it saw
        log.debug("logout during drain failed: %s", exc)


__all__ = ["RunContext", "install", "add_arguments", "profile_path"]
