"""The compose review stack, checked without Docker: the compose-spec schema, promtool, and the repository it mounts.

No container engine runs in CI, so nothing here starts the stack. Each check stands for a way
`docker compose up` would go wrong: a file Compose rejects, a mount of a path that is not there,
a flag Locust refuses, a scrape target nobody serves, rules that drifted from the SLO file, a
Grafana data source the dashboards cannot find.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import yaml
from locust.argument_parser import get_empty_argument_parser, setup_parser_arguments

from loadgen.cli import build_parser
from loadgen.run import add_arguments
from tests.support import ROOT, SCALE

COMPOSE = ROOT / "deploy" / "compose"
BASE = COMPOSE / "compose.yaml"
HEADLESS = COMPOSE / "compose.headless.yaml"
PROMETHEUS_CONFIG = COMPOSE / "prometheus" / "prometheus.yml"
RULES = COMPOSE / "prometheus" / "rules" / "loadgen-slo.yaml"
#: compose-spec/compose-spec's schema/compose-spec.json; where it came from: tests/deploy/compose/README.md
SCHEMA = ROOT / "tests" / "deploy" / "compose" / "compose-spec.json"
DOC = ROOT / "docs" / "compose.md"
DASHBOARDS = ROOT / "dashboards"
TOOLKIT_SERVICES = ("backend", "master", "worker")

# Compose's interpolation: $$ is a dollar sign; ${NAME:-default}, ${NAME-default}, ${NAME} and $NAME read the shell
VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}|(?P<bare>[A-Za-z_]\w*))")


def interpolate(node, names: set[str] | None = None):
    """``node`` with every variable at its default, as a plain `docker compose up` sees it; ``names`` collects them."""
    if isinstance(node, dict):
        return {key: interpolate(value, names) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, names) for value in node]
    if not isinstance(node, str):
        return node

    def default(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        if names is not None:
            names.add(name)
        if match.group("default") is None:
            raise ValueError(f"${name} has no default: `docker compose up` would need it set in the shell")
        return match.group("default")

    return VARIABLE.sub(default, node)


def merge(base, override):
    """Compose's merge of an override file, for the keys ours use: mappings merge, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    return override


def stack(*files: Path) -> dict:
    """The project Compose builds from ``files``, variables at their defaults."""
    model: dict = {}
    for path in files:
        model = merge(model, interpolate(yaml.safe_load(path.read_text())))
    return model


@pytest.fixture(scope="module")
def base() -> dict:
    return stack(BASE)


@pytest.fixture(scope="module")
def headless() -> dict:
    return stack(BASE, HEADLESS)


def binds(service: dict) -> list[tuple[Path, PurePosixPath, bool]]:
    """(host path, container path, read-only) of each bind mount of ``service``; named volumes are left out."""
    found = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            if entry["type"] != "bind":
                continue
            source, target, read_only = entry["source"], entry["target"], bool(entry.get("read_only"))
        else:
            source, target, *mode = entry.split(":")
            if not source.startswith((".", "/", "~")):
                continue
            read_only = bool(mode) and "ro" in mode[0].split(",")
        found.append(((COMPOSE / source).resolve(), PurePosixPath(target), read_only))
    return found


def mounted(service: dict, path: str, writable: bool = False) -> Path | None:
    """The host path behind ``path`` in the container (relative to its working_dir), or None when no mount holds it."""
    container = PurePosixPath(service.get("working_dir", "/")) / path
    holders = [
        (host, target)
        for host, target, read_only in binds(service)
        if (container == target or target in container.parents) and not (writable and read_only)
    ]
    if not holders:
        return None
    # the deepest mount hides the ones above it
    host, target = max(holders, key=lambda holder: len(holder[1].parts))
    return host.joinpath(*container.relative_to(target).parts)


def parse(parser, arguments: list[str], capsys, environment: dict | None = None):
    try:
        if environment is None:
            return parser.parse_args(arguments)
        return parser.parse_args(arguments, env_vars=environment)
    except SystemExit:
        pytest.fail(f"{' '.join(arguments)} is refused: {capsys.readouterr().err}")


def locust_parser():
    """Locust's parser with the toolkit's options, as a locustfile calling ``loadgen.run.install`` gets it.

    No config files: a locust.conf or pyproject.toml around the tests is not in the container.
    """
    parser = get_empty_argument_parser(add_help=False, default_config_files=[])
    setup_parser_arguments(parser)
    add_arguments(parser)
    return parser


def locust_options(service: dict, capsys):
    """The options the service's `locust` runs with: its command and its LOCUST_… environment."""
    parser = locust_parser()
    command = service["command"]
    unknown = [
        word for word in command if word.startswith("-") and word.split("=")[0] not in parser._option_string_actions
    ]
    # argparse would take an abbreviation of a longer flag silently
    assert not unknown, f"flags neither Locust nor loadgen defines: {unknown}"
    environment = service.get("environment") or {}
    known = {action.env_var for action in parser._actions if getattr(action, "env_var", None)}
    ignored = sorted(name for name in environment if name.startswith("LOCUST_") and name not in known)
    # configargparse ignores an environment variable it does not know, misspelt or not
    assert not ignored, f"LOCUST_ variables no option reads: {ignored}"
    values = {
        name: str(value) for name, value in environment.items() if name.startswith("LOCUST_") and value is not None
    }
    return parse(parser, command, capsys, values)


def test_the_vendored_schema_is_the_draft_7_compose_spec():
    """The vendored schema is the compose-spec's, a valid JSON Schema of the draft it declares (7)."""
    schema = json.loads(SCHEMA.read_text())
    assert schema["title"] == "Compose Specification"
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)


@pytest.mark.parametrize("path", [BASE, HEADLESS], ids=lambda path: path.name)
def test_compose_files_follow_the_compose_spec(path):
    """Each compose file, variables at their defaults, is valid under the compose-spec schema."""
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = sorted(validator.iter_errors(interpolate(yaml.safe_load(path.read_text()))), key=lambda e: e.json_path)
    assert not errors, "\n".join(f"{error.json_path}: {error.message}" for error in errors)


def test_the_schema_refuses_a_misspelt_service_key(base):
    """The schema check has teeth: a service key Compose does not know is an error."""
    broken = copy.deepcopy(base)
    broken["services"]["worker"]["replica"] = 2
    errors = list(jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).iter_errors(broken))
    assert errors and "replica" in errors[0].message


def test_every_variable_has_a_default_and_is_documented():
    """A plain `docker compose up` needs no variable set, and docs/compose.md names every one a user can set."""
    names: set[str] = set()
    for path in (BASE, HEADLESS):
        interpolate(yaml.safe_load(path.read_text()), names)
    assert names, "no variable: the documented knobs are gone"
    doc = DOC.read_text()
    undocumented = sorted(name for name in names if f"`{name}`" not in doc)
    assert not undocumented, f"not in docs/compose.md: {undocumented}"


def test_bind_mounts_are_paths_of_the_repository(base):
    """Every bind mount is a relative path to something the repository holds; named volumes are declared."""
    for name, service in base["services"].items():
        for entry in service.get("volumes", []):
            source = entry["source"] if isinstance(entry, dict) else entry.split(":")[0]
            if source.startswith((".", "/", "~")):
                assert source.startswith("."), f"{name}: {source} would only exist on one machine"
            else:
                assert source in base.get("volumes", {}), f"{name}: named volume {source} is not declared"
        for host, target, _ in binds(service):
            assert host.exists(), f"{name}: {target} mounts {host}, which does not exist"
            assert host.is_relative_to(ROOT), f"{name}: {host} is outside the repository"


def test_dependencies_are_services_and_health_waits_have_a_check(base):
    """Each depends_on names a service of the stack, and one waited on until healthy has a health check."""
    for name, service in base["services"].items():
        needs = service.get("depends_on", {})
        conditions = (
            dict.fromkeys(needs, "service_started")
            if isinstance(needs, list)
            else {other: need["condition"] for other, need in needs.items()}
        )
        for other, condition in conditions.items():
            assert other in base["services"], f"{name} depends on {other}, which is not a service"
            if condition == "service_healthy":
                assert "healthcheck" in base["services"][other], (
                    f"{name} waits for {other} to be healthy; it has no health check"
                )


def test_toolkit_services_build_the_repository_image(base):
    """The backend, master and workers run one image, built from the Dockerfile at the repository root."""
    images = set()
    for name in TOOLKIT_SERVICES:
        service = base["services"][name]
        build = service["build"]
        context = (COMPOSE / build["context"]).resolve()
        assert context == ROOT, f"{name} builds from {context}"
        assert (context / build["dockerfile"]).is_file(), f"{name}: no {build['dockerfile']} at the repository root"
        images.add(service["image"])
    assert len(images) == 1, images


def test_other_images_are_pinned(base):
    """Prometheus and Grafana come at a fixed version, never a moving tag."""
    for name, service in base["services"].items():
        if name in TOOLKIT_SERVICES:
            continue
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", image), f"{name}: {image} is not pinned to a version"


@pytest.mark.parametrize(("model", "name"), [("base", "master"), ("base", "worker"), ("headless", "master")])
def test_locust_commands_parse_with_known_options(model, name, request, capsys):
    """Each locust command and its LOCUST_ variables parse with Locust's and the toolkit's options, nothing unknown."""
    service = request.getfixturevalue(model)["services"][name]
    options = locust_options(service, capsys)
    assert options.metrics_host == "0.0.0.0", "metrics on loopback cannot be scraped from the Prometheus container"
    assert options.metrics_linger > 0


def test_the_backend_command_parses_and_its_health_check_probes_its_port(base, capsys):
    """`loadgen serve` accepts the backend's command; the health check and the published port are its WebSocket port."""
    service = base["services"]["backend"]
    assert service["entrypoint"] == ["loadgen"]
    args = parse(build_parser(), service["command"], capsys)
    assert args.command == "serve"
    assert args.host == "0.0.0.0" and args.metrics_host == "0.0.0.0"
    assert f"'127.0.0.1', {args.port})" in " ".join(service["healthcheck"]["test"])
    assert [port.rsplit(":", 1)[1] for port in service["ports"]] == [str(args.port)]


def test_master_and_workers_run_one_scenario_from_the_repository(base, capsys):
    """Master and workers load the same locustfile and profile, and with the SLO file they are repository files."""
    master = base["services"]["master"]
    worker = base["services"]["worker"]
    on_master, on_worker = locust_options(master, capsys), locust_options(worker, capsys)
    assert on_master.master and on_worker.worker
    assert on_worker.master_host in base["services"] and on_worker.master_host == "master"
    assert on_master.master_bind_port == on_worker.master_port
    backend = parse(build_parser(), base["services"]["backend"]["command"], capsys)
    assert on_master.host == f"ws://backend:{backend.port}"
    # a worker reads the profile itself when it starts, before the master has sent anything
    assert (on_worker.locustfile, on_worker.profile) == (on_master.locustfile, on_master.profile)
    for service, path in ((master, on_master.locustfile), (master, on_master.profile), (master, on_master.slo),
                          (worker, on_worker.locustfile), (worker, on_worker.profile)):  # fmt: skip
        host = mounted(service, path)
        assert host is not None, f"{path} is in no mount"
        assert host.is_file(), f"{path} is {host} on the host, which does not exist"


def test_summaries_land_in_a_host_folder(headless, capsys):
    """The master's results folder and --summary are in a writable mount of deploy/compose/runs, so they outlive it."""
    master = headless["services"]["master"]
    options = locust_options(master, capsys)
    results = mounted(master, "results/20260101T000000Z-voiceroom/summary.json", writable=True)
    summary = mounted(master, options.summary, writable=True)
    assert options.results is None, "the default results/<UTC time>-<scenario>/ keeps one folder per run"
    for host in (results, summary):
        assert host is not None and host.is_relative_to(COMPOSE / "runs"), host
    assert (COMPOSE / "runs").is_dir()


def test_the_headless_run_waits_for_every_worker(headless, capsys):
    """The headless master runs users for a time, and starts only once all the workers Compose starts are in."""
    options = locust_options(headless["services"]["master"], capsys)
    assert options.headless
    assert options.num_users > 0 and options.spawn_rate > 0 and options.run_time > 0
    assert options.expect_workers == int(headless["services"]["worker"]["deploy"]["replicas"])


def test_prometheus_config_passes_promtool(base):
    """promtool accepts the Prometheus config and the rule files it names, and the container reads that config."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: apt-get install -y prometheus"
    done = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True, timeout=60 * SCALE
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout, done.stdout
    service = base["services"]["prometheus"]
    config = next(flag.split("=", 1)[1] for flag in service["command"] if flag.startswith("--config.file="))
    assert mounted(service, config) == PROMETHEUS_CONFIG


def test_prometheus_scrapes_the_master_every_worker_and_the_backend(base, capsys):
    """Each scrape target is a service of the stack at the port it serves metrics on."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    services = base["services"]
    master, worker = locust_options(services["master"], capsys), locust_options(services["worker"], capsys)
    backend = parse(build_parser(), services["backend"]["command"], capsys)
    static = {
        target
        for job in config["scrape_configs"]
        for group in job.get("static_configs", [])
        for target in group["targets"]
    }
    assert static == {f"master:{master.metrics_port}", f"backend:{backend.metrics_port}"}
    [discovery] = [sd for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", [])]
    # every replica answers to the service name, each on the one port --metrics-worker-port fixes
    assert discovery["names"] == ["worker"] and discovery["type"] == "A"
    assert discovery["port"] == worker.metrics_worker_port
    assert worker.metrics_worker_port is not None


def test_rules_are_the_output_of_loadgen_rules_for_the_masters_slo_file(base, capsys):
    """The committed rules equal a fresh `loadgen rules` of the SLO file the master judges its runs by."""
    slo = locust_options(base["services"]["master"], capsys).slo
    command = [sys.executable, "-m", "loadgen.cli", "rules", slo]
    fresh = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True, timeout=60 * SCALE).stdout
    refresh = f"loadgen rules {slo} -o {RULES.relative_to(ROOT)}"
    assert RULES.read_text() == fresh, f"{RULES.relative_to(ROOT)} is stale: run `{refresh}` from the repository root"


def test_grafana_reads_the_stacks_prometheus_and_the_dashboards(base):
    """Grafana's data source is the repository's with the stack's Prometheus URL, and the dashboards are where
    their provider looks."""
    service = base["services"]["grafana"]
    [stack_source] = yaml.safe_load(
        (mounted(service, "/etc/grafana/provisioning/datasources") / "prometheus.yaml").read_text()
    )["datasources"]
    [repo_source] = yaml.safe_load((DASHBOARDS / "provisioning" / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert {**stack_source, "url": None} == {**repo_source, "url": None}
    assert stack_source["url"] == "http://prometheus:9090" and "prometheus" in base["services"]
    scrape_interval = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["global"]["scrape_interval"]
    assert stack_source["jsonData"]["timeInterval"] == scrape_interval
    [provider] = yaml.safe_load(
        (mounted(service, "/etc/grafana/provisioning/dashboards") / "loadgen.yaml").read_text()
    )["providers"]
    folder = mounted(service, provider["options"]["path"])
    dashboards = sorted(DASHBOARDS.glob("*.json"))
    assert dashboards and sorted(folder.glob("*.json")) == dashboards
    assert mounted(service, service["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]).is_file()
    for path in dashboards:
        variables = {v["name"]: v for v in json.loads(path.read_text())["templating"]["list"]}
        # the dashboards pick any data source of this type; the provisioned one is the default
        assert variables["datasource"]["query"] == stack_source["type"], path.name
    assert stack_source["isDefault"]


def test_published_ports_are_the_documented_ones(base):
    """Each service publishes, on loopback only, exactly the host ports the table in docs/compose.md gives it."""
    published = {}
    for name, service in base["services"].items():
        for port in service.get("ports", []):
            host_ip, host_port, _ = port.split(":")
            assert host_ip == "127.0.0.1", f"{name}: {port} is reachable from other machines"
            published.setdefault(name, set()).add(int(host_port))
    documented = {}
    for line in DOC.read_text().splitlines():
        row = re.match(r"\| `(\w+)` \|(.*)", line)
        if row and row.group(1) in base["services"]:
            ports = {int(port) for port in re.findall(r"localhost:(\d+)", row.group(2))}
            if ports:
                documented[row.group(1)] = ports
    assert published == documented
