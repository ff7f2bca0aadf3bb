"""deploy/k8s and the Dockerfile: every kustomization renders, validates offline against Kubernetes 1.30, and runs
what the toolkit accepts. No cluster is started: kustomize renders, kubernetes-validate and the vendored
prometheus-operator CRD schemas check, and Locust's own option parser reads the pods' command lines."""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.specifiers import SpecifierSet

from loadgen.profile import load_profile
from loadgen.run import profile_path
from loadgen.slo import load_slo, loads_slo, rules
from tests.support import ROOT, SCALE, free_port

K8S = ROOT / "deploy" / "k8s"
CRDS = ROOT / "tests" / "deploy" / "k8s"
KUBERNETES = "1.30.0"
PYPROJECT = (ROOT / "pyproject.toml").read_text()
VERSION = re.search(r'^version = "([^"]+)"', PYPROJECT, re.M).group(1)
IMAGE = f"loadgen:{VERSION}"
METRICS_PORT = 9646
#: a user's own overlay built from the shipped pieces: every component is rendered in at least one
COMPOSITIONS = {
    "large-job-refserver-operator": {
        "overlay": "overlays/large",
        "components": ["job", "refserver", "prometheus-operator"],
    },
    "selftest-job": {"overlay": "overlays/selftest", "components": ["job"]},
    "small-operator": {"overlay": "overlays/small", "components": ["prometheus-operator"]},
    "own-namespace-and-registry": {
        "overlay": "overlays/selftest",
        "components": ["job", "prometheus-operator"],
        "namespace": "perf",
        "images": [{"name": "loadgen", "newName": "registry.example.com/team/loadgen"}],
    },
}
#: sysctls a pod may set under the baseline and restricted Pod Security Standards (Kubernetes 1.30)
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip


# --- rendering ----------------------------------------------------------------------------------------------------


def kustomize_command() -> list[str]:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    pytest.fail("neither kustomize nor kubectl is on PATH: run scripts/test-deps, which installs kustomize")


def build(folder: Path) -> list[dict]:
    done = subprocess.run([*kustomize_command(), str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kustomize build {folder}:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def kustomizations(kind: str) -> list[str]:
    """Folders under deploy/k8s holding a kustomization of ``kind`` (Kustomization or Component)."""
    found = []
    for path in sorted(K8S.rglob("kustomization.yaml")):
        if yaml.safe_load(path.read_text()).get("kind", "Kustomization") == kind:
            found.append(path.parent.relative_to(K8S).as_posix())
    return found


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """Every kustomization of deploy/k8s and every composition, built once: name -> objects."""
    out = {name: build(K8S / name) for name in kustomizations("Kustomization")}
    for name, composition in COMPOSITIONS.items():
        folder = tmp_path_factory.mktemp(name)
        # kustomize takes relative paths only
        up = Path(os.path.relpath(K8S, folder))
        kustomization = {k: v for k, v in composition.items() if k not in ("overlay", "components")}
        kustomization["resources"] = [(up / composition["overlay"]).as_posix()]
        kustomization["components"] = [(up / "components" / c).as_posix() for c in composition["components"]]
        (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        out[name] = build(folder)
    return out


ALL = kustomizations("Kustomization") + list(COMPOSITIONS)
#: everything that deploys a run; base/scenario is the ConfigMap alone
RUNS = [name for name in ALL if name != "base/scenario"]
JOBS = ["overlays/job", "large-job-refserver-operator", "selftest-job", "own-namespace-and-registry"]


def find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def configmap(docs: list[dict], name: str) -> dict:
    """A generated ConfigMap by the name the manifests use (kustomize appends a content hash)."""
    named = re.compile(rf"{name}(-[a-z0-9]+)?")
    matches = [d for d in docs if d["kind"] == "ConfigMap" and named.fullmatch(d["metadata"]["name"])]
    assert len(matches) == 1, f"expected one ConfigMap {name}, found {len(matches)}"
    return matches[0]


@dataclass
class Pod:
    """A pod as its workload (Deployment, Job) or itself (Pod) declares it."""

    kind: str
    name: str
    labels: dict
    annotations: dict
    spec: dict
    replicas: int | None

    def container(self) -> dict:
        (container,) = self.spec["containers"]
        return container

    @property
    def component(self) -> str | None:
        return self.labels.get("app.kubernetes.io/component")


def pods(docs: list[dict]) -> list[Pod]:
    found = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            template = doc["spec"]["template"]
            meta = template.get("metadata", {})
            replicas = doc["spec"].get("replicas", 1) if doc["kind"] == "Deployment" else 1
            labels, annotations = meta.get("labels", {}), meta.get("annotations", {})
            found.append(Pod(doc["kind"], doc["metadata"]["name"], labels, annotations, template["spec"], replicas))
        elif doc["kind"] == "Pod":
            labels, annotations = doc["metadata"].get("labels", {}), doc["metadata"].get("annotations", {})
            found.append(Pod("Pod", doc["metadata"]["name"], labels, annotations, doc["spec"], None))
    return found


def pod_of(docs: list[dict], component: str) -> Pod:
    (pod,) = [p for p in pods(docs) if p.component == component]
    return pod


def selects(selector: dict, labels: dict) -> bool:
    """Kubernetes label selector semantics: matchLabels and matchExpressions, ANDed."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, op, values = expression["key"], expression["operator"], expression.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def environment(docs: list[dict], container: dict) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom ConfigMaps, then env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in container.get("env", []):
        env[entry["name"]] = entry["value"]
    return env


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """``$(VAR)`` references in args, expanded as the kubelet does; ``$$`` escapes a dollar."""

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return [re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, arg) for arg in args]


@functools.cache
def locust_parser():
    """Locust's own option parser with the toolkit's options, as a locustfile's install() adds them."""
    from locust.argument_parser import get_parser

    from loadgen.run import add_arguments

    parser = get_parser(default_config_files=[])
    add_arguments(parser)
    return parser


def locust_options(docs: list[dict], pod: Pod):
    """What `locust` makes of a pod's command line and environment; unknown options fail the test."""
    container = pod.container()
    env = environment(docs, container)
    args = expand(container["args"], env)
    assert args[0] == "locust", f"{pod.name}: {args}"
    assert not [a for a in args if "$(" in a], f"{pod.name}: unresolved variable in {args}"
    options, unknown = locust_parser().parse_known_args(args[1:], env_vars=env)
    assert not unknown, f"{pod.name}: options neither Locust nor loadgen knows: {unknown}"
    return options


def mounted_files(docs: list[dict], pod: Pod) -> dict[str, str]:
    """Path -> content of every ConfigMap file mounted into the pod's container."""
    volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
    files = {}
    for mount in pod.container().get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            data = find(docs, "ConfigMap", volume["configMap"]["name"])["data"]
            files.update({f"{mount['mountPath']}/{key}": text for key, text in data.items()})
    return files


def arg_value(args: list[str], flag: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]
    return value


def quantity(text: str | int) -> float:
    text = str(text)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


# --- validation against the API schemas ---------------------------------------------------------------------------


def crd_schema(path: Path, version: str) -> dict:
    """The CRD's openAPIV3Schema made strict, as the API server's field validation is: unknown fields fail."""
    crd = yaml.safe_load(path.read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = copy.deepcopy(served["schema"]["openAPIV3Schema"])

    def strict(node):
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            if "pattern" in node:
                # Go's RE2 takes inline flags anywhere, Python's only at the start
                node["pattern"] = re.sub(r"^\^\(\?([a-z]+)\)", r"(?\1)^", node["pattern"])
            for value in node.values():
                strict(value)
        elif isinstance(node, list):
            for value in node:
                strict(value)

    strict(schema)
    return schema


CUSTOM_RESOURCES = {
    ("monitoring.coreos.com/v1", "PodMonitor"): CRDS / "monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): CRDS / "monitoring.coreos.com_prometheusrules.yaml",
}


def validate(doc: dict) -> None:
    """Check one object as a Kubernetes 1.30 API server would, unknown fields included."""
    key = (doc["apiVersion"], doc["kind"])
    if key in CUSTOM_RESOURCES:
        schema = crd_schema(CUSTOM_RESOURCES[key], doc["apiVersion"].split("/")[1])
        jsonschema.validate(doc, schema)
        # a custom resource's metadata is an ObjectMeta like any other object's
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]},
                                     KUBERNETES, strict=True)  # fmt: skip
    else:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def raw_manifests() -> list[tuple[str, dict]]:
    """Every Kubernetes object written in a YAML file under deploy/k8s, before kustomize."""
    found = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                if not doc["apiVersion"].startswith("kustomize.config.k8s.io/"):
                    found.append((f"{path.relative_to(K8S)}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return found


RAW = raw_manifests()


@pytest.mark.parametrize("name", ALL)
def test_every_rendered_object_validates_against_kubernetes_1_30(rendered, name):
    """Each object kustomize renders passes strict schema validation for Kubernetes 1.30 or its CRD."""
    assert rendered[name], f"{name} renders nothing"
    for doc in rendered[name]:
        try:
            validate(doc)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {exc}")


@pytest.mark.parametrize("label,doc", RAW, ids=[label for label, _ in RAW])
def test_every_raw_manifest_validates_against_kubernetes_1_30(label, doc):
    """Each object written in deploy/k8s, before kustomize touches it, is valid on its own."""
    validate(doc)


def test_the_crd_schemas_refuse_a_misspelt_field_and_a_bad_value():
    """The vendored PodMonitor and PrometheusRule schemas catch what a cluster would refuse."""
    (podmonitor,) = [doc for label, doc in RAW if doc["kind"] == "PodMonitor"]
    misspelt = copy.deepcopy(podmonitor)
    misspelt["spec"]["podMetricEndpoints"] = misspelt["spec"].pop("podMetricsEndpoints")
    bad_interval = copy.deepcopy(podmonitor)
    bad_interval["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"
    (rule,) = [doc for label, doc in RAW if doc["kind"] == "PrometheusRule"]
    nameless = copy.deepcopy(rule)
    del nameless["spec"]["groups"][0]["name"]
    for broken in (misspelt, bad_interval, nameless):
        with pytest.raises(jsonschema.ValidationError):
            validate(broken)


def test_every_component_is_rendered_and_every_kustomization_is_known():
    """Each component is built into at least one composition; the overlays are the ones the docs name."""
    used = {c for composition in COMPOSITIONS.values() for c in composition["components"]}
    assert sorted(f"components/{c}" for c in used) == kustomizations("Component")
    assert set(kustomizations("Kustomization")) == {
        ".", "base", "base/scenario", "overlays/small", "overlays/large", "overlays/selftest", "overlays/job",
    }  # fmt: skip


def test_kubectl_apply_k_deploy_k8s_deploys_the_self_test(rendered):
    """The top-level kustomization is the self-test: a small run against the in-cluster reference backend."""
    assert rendered["."] == rendered["overlays/selftest"]
    run = configmap(rendered["."], "loadgen-options")["data"]
    service = find(rendered["."], "Service", "loadgen-refserver")
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "ws")
    assert run["LOCUST_HOST"] == f"ws://loadgen-refserver:{port}"


@pytest.mark.parametrize("name", RUNS)
def test_every_object_lands_in_the_runs_namespace(rendered, name):
    """Every namespaced object, those the components add included, is in the one Namespace the render creates."""
    docs = rendered[name]
    (namespace,) = [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"]
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, f"{doc['kind']}/{doc['metadata']['name']}"


# --- what the pods run --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RUNS)
def test_every_locust_command_line_parses_and_names_mounted_files(rendered, name, tmp_path):
    """Master, worker and Job args parse with Locust's parser plus loadgen's options, and name mounted files."""
    docs = rendered[name]
    for pod in pods(docs):
        if pod.container()["args"][0] != "locust":
            continue
        options = locust_options(docs, pod)
        files = mounted_files(docs, pod)
        assert options.locustfile in files, f"{pod.name}: {options.locustfile} is not mounted"
        compile(files[options.locustfile], options.locustfile, "exec")
        # Locust's --profile is our load profile only when it names a YAML file
        assert profile_path(options.profile) == options.profile and options.profile in files
        for path, text in files.items():
            local = tmp_path / Path(path).name
            local.write_text(text)
            if path == options.profile:
                load_profile(local)
        if pod.component == "master":
            assert options.master and not options.worker
            # without a host the master would start a reference backend on its own loopback
            assert options.host and options.host.startswith(("ws://", "wss://"))
            assert options.slo in files
            load_slo(tmp_path / Path(options.slo).name)
        else:
            assert options.worker and not options.master


@pytest.mark.parametrize("name", RUNS)
def test_the_options_configmap_holds_only_variables_someone_reads(rendered, name):
    """Every key of loadgen-options is an option's LOCUST_ variable or a $(VAR) the args use: no silent typo."""
    docs = rendered[name]
    known = {action.env_var for action in locust_parser()._actions if getattr(action, "env_var", None)}
    referenced = {
        ref for pod in pods(docs) for arg in pod.container().get("args", []) for ref in re.findall(r"\$\((\w+)\)", arg)
    }
    for key in configmap(docs, "loadgen-options")["data"]:
        assert key in known or key in referenced, f"{name}: {key} is read by nobody"


@pytest.mark.parametrize("name", RUNS)
def test_workers_find_the_master_through_its_service(rendered, name):
    """--master-host and --master-port of the workers are the master Service and its port for 5557."""
    docs = rendered[name]
    service = find(docs, "Service", "loadgen-master")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    options = locust_options(docs, pod_of(docs, "worker"))
    assert options.master_host == service["metadata"]["name"]
    assert options.master_port == ports["master"]["port"] == 5557
    master = [p for p in pods(docs) if selects({"matchLabels": service["spec"]["selector"]}, p.labels)]
    assert [p.component for p in master] == ["master"], "the Service must select the master and nothing else"
    assert options.master_port == locust_options(docs, master[0]).master_bind_port


@pytest.mark.parametrize("name", RUNS)
def test_the_master_service_exposes_workers_web_ui_and_metrics(rendered, name):
    """The master Service has 5557, 8089 and the metrics port, each reaching a named port of the master pod."""
    docs = rendered[name]
    service = find(docs, "Service", "loadgen-master")
    assert {p["port"] for p in service["spec"]["ports"]} == {5557, 8089, METRICS_PORT}
    master = pod_of(docs, "master")
    container_ports = {p["name"]: p["containerPort"] for p in master.container()["ports"]}
    for port in service["spec"]["ports"]:
        assert container_ports[port["targetPort"]] == port["port"]
    options = locust_options(docs, master)
    assert options.web_port == container_ports["web"] and options.metrics_port == container_ports["metrics"]


@pytest.mark.parametrize("name", RUNS)
def test_scrape_annotations_point_at_the_port_each_process_serves_metrics_on(rendered, name):
    """prometheus.io/scrape, port and path on every pod match --metrics-port, --metrics-worker-port, serve's port."""
    from loadgen.cli import build_parser

    docs = rendered[name]
    for pod in pods(docs):
        assert pod.annotations["prometheus.io/scrape"] == "true", pod.name
        assert pod.annotations["prometheus.io/path"] == "/metrics", pod.name
        port = int(pod.annotations["prometheus.io/port"])
        named = {p["name"]: p["containerPort"] for p in pod.container()["ports"]}
        assert named["metrics"] == port, pod.name
        args = pod.container()["args"]
        if args[0] == "locust":
            options = locust_options(docs, pod)
            served = options.metrics_worker_port if options.worker else options.metrics_port
            # other hosts reach it only on a wildcard address
            assert options.metrics_host == "0.0.0.0"
            # the scrape interval: final figures stay up for one more scrape
            assert options.metrics_linger >= 15
        else:
            options = build_parser().parse_args(args[1:])
            assert options.metrics_host == "0.0.0.0" and options.host == "0.0.0.0"
            assert named["ws"] == options.port
            served = options.metrics_port
        assert served == port, f"{pod.name} serves metrics on {served}, annotated {port}"


def test_workers_serve_metrics_on_a_fixed_port(rendered):
    """Workers pass --metrics-worker-port equal to --metrics-port, so no worker index shifts the port."""
    docs = rendered["base"]
    options = locust_options(docs, pod_of(docs, "worker"))
    assert options.metrics_worker_port == options.metrics_port == METRICS_PORT


@pytest.mark.parametrize("name", [n for n in RUNS if "operator" in n])
def test_the_podmonitor_scrapes_master_workers_and_backend_by_their_metrics_port(rendered, name):
    """The PodMonitor selects the master, worker and reference backend pods and names a port each one has."""
    docs = rendered[name]
    monitor = find(docs, "PodMonitor", "loadgen")
    selected = [p for p in pods(docs) if selects(monitor["spec"]["selector"], p.labels)]
    components = {p.component for p in selected}
    assert {"master", "worker"} <= components
    assert ("refserver" in components) == ("refserver" in {p.component for p in pods(docs)})
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    for pod in selected:
        ports = {p["name"]: p["containerPort"] for p in pod.container()["ports"]}
        assert ports[endpoint["port"]] == int(pod.annotations["prometheus.io/port"]), pod.name
    assert endpoint["path"] == "/metrics"


def test_the_prometheus_rule_is_what_loadgen_rules_writes_for_the_shipped_slo_file(rendered):
    """The PrometheusRule's spec equals `loadgen rules locustfiles/slo/review.yaml`, and the pods judge by that file."""
    docs = rendered["large-job-refserver-operator"]
    rule = find(docs, "PrometheusRule", "loadgen-slo")
    slo_path = "locustfiles/slo/review.yaml"
    assert rule["spec"] == yaml.safe_load(rules(loads_slo((ROOT / slo_path).read_text(), slo_path)))
    master = pod_of(docs, "master")
    files = mounted_files(docs, master)
    assert files[locust_options(docs, master).slo].endswith((ROOT / slo_path).read_text())


def test_the_job_and_worker_command_lines_run_a_headless_run_to_its_verdict(rendered, backend, tmp_path):
    """The Job's and a worker's args and environment, moved to loopback, run one and write the summary and verdict.

    Only what a cluster provides is replaced: mounted paths, the Service name, ports (5557 and 9646 may be
    taken here), the backend address, and a short run.
    """
    docs = rendered["overlays/job"]
    server = backend()
    work = tmp_path / "work"
    work.mkdir()
    master_port, master_metrics, worker_metrics = free_port(), free_port(), free_port()
    replace = {
        "/etc/loadgen/": f"{tmp_path}/etc/",
        "/var/lib/loadgen/results": f"{work}/results",
        "--metrics-port=9646": f"--metrics-port={master_metrics}",
        "--metrics-worker-port=9646": f"--metrics-worker-port={worker_metrics}",
        "--master-host=loadgen-master": "--master-host=127.0.0.1",
        "--master-port=5557": f"--master-port={master_port}",
        "--metrics-host=0.0.0.0": "--metrics-host=127.0.0.1",
        "--metrics-linger=15": "--metrics-linger=0",
    }
    overrides = {"LOCUST_HOST": server.url, "LOCUST_USERS": "20", "LOCUST_SPAWN_RATE": "20",
                 "LOCUST_RUN_TIME": "6s", "LOCUST_EXPECT_WORKERS": "1"}  # fmt: skip

    def command(pod: Pod) -> tuple[list[str], dict[str, str]]:
        for path, text in mounted_files(docs, pod).items():
            local = Path(path.replace("/etc/loadgen/", f"{tmp_path}/etc/"))
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(text)
        env = {**environment(docs, pod.container()), **overrides}
        env = {key: value.replace("/etc/loadgen/", f"{tmp_path}/etc/") for key, value in env.items()}
        args = expand(pod.container()["args"], env)
        for old, new in replace.items():
            args = [arg.replace(old, new) for arg in args]
        assert not [a for a in args if "9646" in a or "5557" in a or "/etc/loadgen" in a], args
        return [sys.executable, "-m", *args], {**os.environ, **env}

    master, master_env = command(pod_of(docs, "master"))
    worker, worker_env = command(pod_of(docs, "worker"))
    master.append(f"--master-bind-port={master_port}")
    with open(tmp_path / "worker.log", "wb") as log:
        worker_process = subprocess.Popen(worker, env=worker_env, cwd=work, stdout=log, stderr=subprocess.STDOUT)
    try:
        done = subprocess.run(master, env=master_env, cwd=work, capture_output=True, text=True, timeout=120 * SCALE)
    finally:
        if worker_process.poll() is None:
            worker_process.kill()
        worker_process.wait()
    output = done.stdout + done.stderr
    summary_path = Path(arg_value(master, "--summary"))
    assert summary_path.parent == work / "results" and summary_path.exists(), output[-3000:]
    summary = json.loads(summary_path.read_text())
    (run_folder,) = [p for p in (work / "results").iterdir() if p.is_dir()]
    assert json.loads((run_folder / "summary.json").read_text()) == summary
    assert summary["generator"]["workers"] == 1 and summary["operations"]["room.join"]["count"] >= 20
    assert summary["slo"]["file"].endswith("/etc/slo.yaml")
    assert summary["slo"]["passed"] is True, summary["slo"]
    assert done.returncode == summary["exit_code"] == 0, output[-3000:]


# --- sizes, the Job, the pods' settings ---------------------------------------------------------------------------


def worker_resources(docs: list[dict]) -> dict:
    return pod_of(docs, "worker").container()["resources"]


def test_overlays_size_workers_users_and_resources(rendered):
    """small: 2 workers of half a core; large: 20 workers of a core with more memory, and a bigger master."""
    small, large = rendered["overlays/small"], rendered["overlays/large"]
    assert pod_of(small, "worker").replicas == 2
    assert worker_resources(small)["requests"] == {"cpu": "500m", "memory": "512Mi"}
    assert pod_of(large, "worker").replicas == 20
    assert worker_resources(large)["requests"] == {"cpu": "1", "memory": "2Gi"}
    cpu = [quantity(pod_of(docs, "master").container()["resources"]["requests"]["cpu"]) for docs in (small, large)]
    assert cpu[1] > cpu[0], "the large master merges ten times the reports"
    users = [int(configmap(docs, "loadgen-options")["data"]["LOCUST_USERS"]) for docs in (small, large)]
    assert users[1] > 10 * users[0]


@pytest.mark.parametrize("name", RUNS)
def test_a_headless_master_waits_for_exactly_the_workers_deployed(rendered, name):
    """LOCUST_EXPECT_WORKERS equals the worker replicas, so a Job starts with every worker and none idle."""
    docs = rendered[name]
    expect = int(configmap(docs, "loadgen-options")["data"]["LOCUST_EXPECT_WORKERS"])
    assert expect == pod_of(docs, "worker").replicas


@pytest.mark.parametrize("name", JOBS)
def test_the_job_runs_headless_once_and_keeps_its_summary(rendered, name):
    """The Job variant: --headless, --slo and --summary on a volume that outlives the pod; no retry, no restart."""
    docs = rendered[name]
    assert not [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "loadgen-master"]
    job = find(docs, "Job", "loadgen-run")
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    master = pod_of(docs, "master")
    assert master.kind == "Job"
    args = master.container()["args"]
    assert "--headless" in args and arg_value(args, "--slo") and arg_value(args, "--summary")
    options = locust_options(docs, master)
    assert options.headless and options.slo and options.expect_workers == pod_of(docs, "worker").replicas
    volumes = {v["name"]: v for v in master.spec["volumes"]}
    (results,) = [m for m in master.container()["volumeMounts"] if options.summary.startswith(m["mountPath"] + "/")]
    claim = volumes[results["name"]]["persistentVolumeClaim"]["claimName"]
    find(docs, "PersistentVolumeClaim", claim)
    reader = next(doc for label, doc in RAW if doc["kind"] == "Pod")
    (read,) = [v for v in reader["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert read["persistentVolumeClaim"]["claimName"] == claim
    if name == "overlays/job":
        assert reader["metadata"]["namespace"] == job["metadata"]["namespace"]


@pytest.mark.parametrize("name", RUNS)
def test_every_container_runs_the_image_of_this_version_through_its_entrypoint(rendered, name):
    """Every container uses loadgen:<pyproject version>, or the registry an overlay names, and sets no command."""
    image = IMAGE
    for entry in COMPOSITIONS.get(name, {}).get("images", []):
        image = f"{entry['newName']}:{VERSION}"
    for pod in pods(rendered[name]):
        for container in pod.spec["containers"]:
            assert container["image"] == image, pod.name
            assert "command" not in container, f"{pod.name}: a command skips the entrypoint's open-file limit"


def test_every_manifest_names_the_image_of_the_package_version():
    """The image tag in every manifest is the version of pyproject.toml, the tag docs/kubernetes.md builds."""
    images = {c["image"] for _, doc in RAW for pod in pods([doc]) for c in pod.spec["containers"]}
    assert images == {IMAGE}
    assert f"docker build -t {IMAGE} ." in (ROOT / "docs" / "kubernetes.md").read_text()


@pytest.mark.parametrize("name", RUNS)
def test_every_container_has_requests_and_limits(rendered, name):
    """CPU and memory requests and limits on every container, each request at most its limit."""
    for pod in pods(rendered[name]):
        for container in pod.spec["containers"]:
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                request, limit = resources["requests"][resource], resources["limits"][resource]
                assert quantity(request) <= quantity(limit), f"{pod.name} {resource}: {request} > {limit}"


@pytest.mark.parametrize("name", RUNS)
def test_workers_spread_over_nodes_and_may_open_many_connections(rendered, name):
    """Workers prefer nodes without another worker, and widen the local port range for their connections."""
    worker = pod_of(rendered[name], "worker")
    (term,) = worker.spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["podAffinityTerm"]["labelSelector"], worker.labels)
    sysctls = {s["name"]: s["value"] for s in worker.spec["securityContext"]["sysctls"]}
    low, high = map(int, sysctls["net.ipv4.ip_local_port_range"].split())
    assert high - low > 60000


@pytest.mark.parametrize("name", RUNS)
def test_every_pod_meets_the_restricted_pod_security_standard(rendered, name):
    """The namespace enforces "restricted": every pod runs as non-root, with no capabilities and safe sysctls."""
    docs = rendered[name]
    namespace = next(d for d in docs if d["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for pod in pods(docs) + [p for p in pods([doc for _, doc in RAW]) if p.kind == "Pod"]:
        context = pod.spec["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] != 0, pod.name
        assert context["seccompProfile"]["type"] == "RuntimeDefault", pod.name
        assert {s["name"] for s in context.get("sysctls", [])} <= SAFE_SYSCTLS, pod.name
        for volume in pod.spec.get("volumes", []):
            assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, f"{pod.name}: {volume}"
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.spec.get(key), pod.name
        for container in pod.spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, pod.name
            assert security["capabilities"]["drop"] == ["ALL"] and not security["capabilities"].get("add"), pod.name
            assert not any("hostPort" in p for p in container.get("ports", [])), pod.name


# --- the generated files ------------------------------------------------------------------------------------------


def load_build():
    spec = importlib.util.spec_from_file_location("deploy_k8s_build", K8S / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_files_are_exactly_what_build_py_writes():
    """The scenario ConfigMap's files and the PrometheusRule equal build.py's output: `python deploy/k8s/build.py`."""
    expected = load_build().outputs()
    for path, text in expected.items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} drifted: run python deploy/k8s/build.py"
    scenario = K8S / "base" / "scenario"
    assert {p for p in scenario.iterdir()} == {p for p in expected if p.parent == scenario}


def test_the_scenario_configmap_carries_every_locustfile_profile_and_the_slo_file(rendered):
    """Each locustfile and profile of locustfiles/ is a key of loadgen-scenario, the SLO file is slo.yaml."""
    data = configmap(rendered["base"], "loadgen-scenario")["data"]
    sources = [*(ROOT / "locustfiles").glob("*.py"), *(ROOT / "locustfiles" / "profiles").glob("*.yaml")]
    for source in sources:
        assert data[source.name].endswith(source.read_text()), source.name
    assert data["slo.yaml"].endswith((ROOT / "locustfiles" / "slo" / "review.yaml").read_text())


def test_build_py_runs_as_a_script_and_rewrites_identical_files():
    """`python deploy/k8s/build.py` exits 0 and leaves the committed files as they were."""
    expected = load_build().outputs()
    before = {path: path.read_text() for path in expected}
    done = subprocess.run([sys.executable, str(K8S / "build.py")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert {path: path.read_text() for path in expected} == before


# --- the Dockerfile -----------------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            word, _, rest = pending.partition(" ")
            instructions.append((word.upper(), rest.strip()))
            pending = ""
    return instructions


def instruction(name: str) -> list[str]:
    return [rest for word, rest in dockerfile() if word == name]


def entrypoint_script(tmp_path: Path) -> Path:
    """The entrypoint script the Dockerfile writes with printf, written out here."""
    (entrypoint,) = instruction("ENTRYPOINT")
    (target,) = yaml.safe_load(entrypoint)
    for run in instruction("RUN"):
        words = shlex.split(run)
        if words[:2] == ["printf", "%s\\n"] and target in words:
            end = words.index(">")
            assert words[end + 1] == target
            script = tmp_path / "entrypoint"
            script.write_text("\n".join(words[2:end]) + "\n")
            script.chmod(script.stat().st_mode | stat.S_IXUSR)
            return script
    pytest.fail(f"no RUN writes the entrypoint {target}")


def test_the_image_is_built_on_a_python_that_pyproject_accepts():
    """Every stage uses one pinned python:X.Y image; X.Y satisfies requires-python."""
    images = {rest.split()[0] for rest in instruction("FROM")}
    assert len(images) == 1, f"the venv is copied between stages, so they share one interpreter: {images}"
    (image,) = images
    match = re.fullmatch(r"python:(\d+\.\d+)(?:\.\d+)?-slim-\w+", image)
    assert match, f"{image}: pin the Python version and the Debian release"
    requires = re.search(r'^requires-python = "([^"]+)"', PYPROJECT, re.M).group(1)
    assert SpecifierSet(requires).contains(match.group(1))


def test_the_image_installs_the_package_runs_as_the_pods_user_and_exposes_their_ports(rendered):
    """pip installs the package with its server extra; USER, WORKDIR and EXPOSE agree with the manifests."""
    assert any("pip install" in run and "'.[server]'" in run for run in instruction("RUN"))
    (user,) = instruction("USER")
    uid, gid = map(int, user.split(":"))
    assert uid != 0
    docs = rendered["large-job-refserver-operator"]
    for pod in pods(docs):
        assert (pod.spec["securityContext"]["runAsUser"], pod.spec["securityContext"]["runAsGroup"]) == (uid, gid)
    (exposed,) = instruction("EXPOSE")
    master = pod_of(rendered["base"], "master")
    assert {int(p) for p in exposed.split()} == {p["containerPort"] for p in master.container()["ports"]}
    (workdir,) = instruction("WORKDIR")[-1:]
    results = next(m for m in master.container()["volumeMounts"] if m["name"] == "results")
    assert results["mountPath"] == f"{workdir}/results", "the default results folder is relative to WORKDIR"
    assert yaml.safe_load(instruction("CMD")[0]) == ["locust"]


def test_the_entrypoint_lifts_the_open_file_limit_and_hands_options_to_locust(tmp_path):
    """The entrypoint sets the soft open-file limit to the hard one, runs a command, or locust for bare options."""
    script = entrypoint_script(tmp_path)
    limits = subprocess.run(
        ["sh", "-c", 'ulimit -Sn 256 && exec sh "$0" sh -c "ulimit -Sn; ulimit -Hn"', str(script)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    soft, hard = limits.stdout.split()
    assert soft == hard
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    version = subprocess.run(["sh", str(script), "--version"], capture_output=True, text=True, env=env, timeout=60)
    assert version.returncode == 0 and "locust" in (version.stdout + version.stderr).lower()


def docker_context() -> list[Path]:
    """Files `docker build .` sends, by .dockerignore's rules: last matching pattern wins, a parent's match counts."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            pattern = line.lstrip("!").strip("/")
            regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
            rules.append((re.compile(regex), negated))

    def excluded(relative: str) -> bool:
        parts = relative.split("/")
        result = False
        for regex, negated in rules:
            if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
                result = not negated
        return result

    return [
        path
        for path in ROOT.rglob("*")
        if path.is_file() and ".git" not in path.parts and not excluded(path.relative_to(ROOT).as_posix())
    ]


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_else():
    """.dockerignore keeps the package, its metadata and the locustfiles; tests, results and git stay out."""
    context = {p.relative_to(ROOT).as_posix() for p in docker_context()}
    for copy_ in instruction("COPY"):
        if "--from" in copy_:
            continue
        for source in copy_.split()[:-1]:
            assert any(f == source or f.startswith(source.rstrip("/") + "/") for f in context), source
    assert not [f for f in context if f.startswith(("tests/", "results/", "deploy/", ".git")) or "__pycache__" in f]
    assert {p.relative_to(ROOT).as_posix() for p in (ROOT / "loadgen").rglob("*.py")} <= context


def test_the_package_builds_from_the_build_context_alone(tmp_path):
    """A wheel built from only the files .dockerignore lets through holds every module and the loadgen command."""
    context = tmp_path / "context"
    for path in docker_context():
        target = context / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-q",
         "-w", str(tmp_path / "wheels"), str(context)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "wheels").glob("loadgen-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {p.relative_to(ROOT).as_posix() for p in (ROOT / "loadgen").rglob("*.py")} <= names
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    assert "loadgen = loadgen.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
