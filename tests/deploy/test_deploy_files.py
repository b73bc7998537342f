"""The deployment files in ``deploy/`` agree with the code they deploy: commands and options
the CLI accepts, settings that exist, metrics the API exports, probe paths it serves, ports
that line up, grace periods that let a worker stop cleanly, and a non-root image. Fast and
offline: files are parsed, nothing is built or started."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.routing import Match
from typer.main import get_command
from typer.testing import CliRunner

from agentmill.api.app import create_app
from agentmill.cli.app import app as cli_app
from agentmill.config import Settings
from agentmill.observability.metrics import render
from agentmill.queue import queue_backend
from agentmill.store.queries import QueueStats

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "kubernetes"
IMAGE = "agentmill"  # the image name our own containers use (anything else is third-party)

# ----------------------------------------------------------------------------- loading


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in dockerfile():
        if keyword == "FROM":
            found.append([])
        assert found, "the Dockerfile must start with FROM"
        found[-1].append((keyword, rest))
    return found


def final_stage(keyword: str) -> list[str]:
    return [rest for kw, rest in stages()[-1] if kw == keyword]


def exec_form(keyword: str) -> list[str]:
    """The JSON (exec) form of the final stage's last ENTRYPOINT or CMD."""
    values = final_stage(keyword)
    assert values, f"the final stage has no {keyword}"
    parsed = json.loads(values[-1])  # shell form would not parse: it breaks signal handling
    assert isinstance(parsed, list)
    return parsed


def healthcheck_command() -> list[str]:
    (value,) = final_stage("HEALTHCHECK")
    _, sep, command = value.partition("CMD ")
    assert sep, "HEALTHCHECK needs a CMD"
    parsed: list[str] = json.loads(command)
    return parsed


def dockerfile_uid() -> int:
    users = final_stage("USER")
    assert users, "the final stage sets no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit(), "a numeric USER lets Kubernetes' runAsNonRoot verify it"
    return int(user)


def dockerfile_owner() -> tuple[str, str]:
    """The final stage's USER as (user, group); the group is the user's when not given."""
    user, _, group = final_stage("USER")[-1].partition(":")
    return user, group or user


def shell_commands(script: str) -> list[list[str]]:
    """A RUN line's commands (split at ``&&`` and ``;``) as argument lists."""
    return [shlex.split(part) for part in re.split(r"&&|;", script) if part.strip()]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def is_ours(service: dict[str, Any]) -> bool:
    return "build" in service or str(service.get("image", "")).startswith(IMAGE)


def compose_mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    """A service's volumes in compose's long syntax (the short ``source:target[:mode]`` read
    into ``source``, ``target`` and ``read_only``)."""
    found: list[dict[str, Any]] = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found.append(volume)
            continue
        source, target, *mode = volume.split(":")
        found.append({"source": source, "target": target, "read_only": "ro" in mode})
    return found


def k8s_files() -> dict[str, list[dict[str, Any]]]:
    """Each manifest file's name and its documents."""
    return {
        file.name: [doc for doc in yaml.safe_load_all(file.read_text()) if doc is not None]
        for file in sorted(K8S.glob("*.yaml"))
    }


def k8s_docs() -> list[dict[str, Any]]:
    return [doc for docs in k8s_files().values() for doc in docs]


def manifests() -> list[dict[str, Any]]:
    return [doc for doc in k8s_docs() if doc["kind"] != "Kustomization"]


def one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return found


def our_containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(Deployment, container) for every container that runs our image."""
    return [
        (doc, container)
        for doc in manifests()
        if doc["kind"] == "Deployment"
        for container in containers(doc)
        if container["image"].split(":")[0] == IMAGE
    ]


def deployment_running(command: str) -> tuple[dict[str, Any], dict[str, Any]]:
    (found,) = [(d, c) for d, c in our_containers() if c["args"][0] == command]
    return found


def k8s_argv(container: dict[str, Any]) -> list[str]:
    # `command` would replace the image's ENTRYPOINT ["agentmill"]; the manifests pass args only.
    assert "command" not in container, "override args, not the agentmill entrypoint"
    argv: list[str] = container["args"]
    return argv


def compose_argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if command is None:
        return exec_form("CMD")
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def option(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


def seconds(duration: str | int | float) -> float:
    """A compose duration (``45s``, ``1m30s``) or a plain number of seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, f"unreadable duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def invocations() -> list[tuple[str, list[str]]]:
    """Every argv given to the ``agentmill`` entrypoint, with where it comes from."""
    assert exec_form("ENTRYPOINT") == ["agentmill"]
    found = [("Dockerfile CMD", exec_form("CMD"))]
    found += [
        (f"compose service {name}", compose_argv(service))
        for name, service in services().items()
        if is_ours(service)
    ]
    found += [(f"Deployment {d['metadata']['name']}", k8s_argv(c)) for d, c in our_containers()]
    return found


def in_help(flag: str, help_text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None


# ----------------------------------------------------------------------------- YAML


def test_every_yaml_file_parses_into_mappings() -> None:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert COMPOSE in files
    assert len(files) >= 8
    for file in files:
        docs = [d for d in yaml.safe_load_all(file.read_text()) if d is not None]
        assert docs, f"{file} is empty"
        assert all(isinstance(d, dict) for d in docs), file


def test_kubernetes_manifests_are_complete_and_namespace_less() -> None:
    kinds = Counter(doc["kind"] for doc in manifests())
    assert kinds == {
        "Secret": 1,
        "ConfigMap": 1,
        "Deployment": 2,
        "Service": 1,
        "ScaledObject": 1,
        "HorizontalPodAutoscaler": 1,
        "PersistentVolumeClaim": 1,
    }
    for doc in k8s_docs():
        assert doc.get("apiVersion"), doc
        assert "namespace" not in doc.get("metadata", {}), "apply into any namespace with -n"
    for doc in manifests():
        assert doc["metadata"]["name"]


def test_deployment_selectors_match_their_pods_and_the_service_selects_the_api() -> None:
    api, _ = deployment_running("api")
    worker, _ = deployment_running("worker")
    for deployment in (api, worker):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = one("Service", api["metadata"]["name"])
    selector = service["spec"]["selector"].items()
    assert selector <= api["spec"]["template"]["metadata"]["labels"].items()
    assert not selector <= worker["spec"]["template"]["metadata"]["labels"].items()


def test_secret_is_a_placeholder_example_and_every_env_source_exists() -> None:
    (secret,) = [d for d in manifests() if d["kind"] == "Secret"]
    assert "data" not in secret, "plain stringData placeholders, not base64"
    values = secret["stringData"]
    assert {"AGENTMILL_DATABASE_URL", "AGENTMILL_SECRET_KEY"} <= values.keys()
    assert values["AGENTMILL_DATABASE_URL"].startswith("postgresql://")
    assert all("CHANGE-ME" in value for value in values.values())
    (configmap,) = [d for d in manifests() if d["kind"] == "ConfigMap"]
    names = {("Secret", secret["metadata"]["name"]), ("ConfigMap", configmap["metadata"]["name"])}
    for _, container in our_containers():
        refs = {
            ("Secret" if "secretRef" in ref else "ConfigMap", next(iter(ref.values()))["name"])
            for ref in container["envFrom"]
        }
        assert refs == names, container["name"]


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    (kustomization,) = [d for d in k8s_docs() if d["kind"] == "Kustomization"]
    listed = set(kustomization["resources"])
    expected = {f.name for f in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    expected -= {f.name for f in K8S.glob("*.example.yaml")}  # copied and filled in, not applied
    assert listed == expected
    assert {image["name"] for image in kustomization["images"]} == {IMAGE}


# ----------------------------------------------------------------------------- Dockerfile


def test_dockerfile_is_multi_stage_on_python_slim_without_dev_extras() -> None:
    built = stages()
    assert len(built) >= 2
    for stage in built:
        assert stage[0][1].split()[0] == "python:3.12-slim"
    runs = [rest for stage in built for kw, rest in stage if kw == "RUN"]
    installs = [r for r in runs if re.search(r"\bpip install\b", r)]
    assert installs, "the project is installed with pip"
    assert all(re.search(r"\bpip install (\S+ )*\.(\s|$)", r) for r in installs)
    assert not any("[dev]" in r or " -e " in r for r in installs), "no dev extras, no editable"
    assert any(rest.startswith("--from=") for rest in final_stage("COPY"))
    assert not any("curl" in rest for _, rest in dockerfile()), "the slim image has no curl"


def test_dockerfile_entrypoint_cmd_and_healthcheck() -> None:
    assert exec_form("ENTRYPOINT") == ["agentmill"]
    assert exec_form("CMD") == ["api", "--host", "0.0.0.0", "--port", "8000"]
    check = healthcheck_command()
    assert check[:2] == ["python", "-c"], "the slim image has no curl"
    assert "urllib.request" in check[2]
    assert re.search(r"http://127\.0\.0\.1:\d+/health\b", check[2])


def test_dockerignore_keeps_local_state_out_but_not_what_the_image_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {".git", ".venv", ".agentmill", ".pytest_cache"} <= set(patterns)
    copied = [
        source
        for stage in stages()
        for kw, rest in stage
        if kw == "COPY" and not rest.startswith("--from=")
        for source in rest.split()[:-1]
    ]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not any(fnmatch.fnmatch(source, p) for p in patterns), source


# ----------------------------------------------------------------------------- compose


def test_compose_services_and_their_health() -> None:
    found = services()
    assert {"postgres", "redis", "api", "worker"} <= found.keys()
    postgres, redis = found["postgres"], found["redis"]
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert redis["image"] == "redis:7"
    assert "--appendonly yes" in " ".join(redis["command"])
    assert redis["healthcheck"]["test"]
    for name in ("api", "worker"):
        service = found[name]
        build = service["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        for dependency, condition in service["depends_on"].items():
            assert condition == {"condition": "service_healthy"}
            assert "test" in found[dependency]["healthcheck"], dependency
    assert found["worker"]["deploy"]["replicas"] == 2
    assert compose_argv(found["worker"])[0] == "worker"


def test_compose_environment_is_shared_and_the_secret_is_required() -> None:
    found = services()
    api, worker = found["api"]["environment"], found["worker"]["environment"]
    assert api == worker, "the API and the workers must agree on every setting"
    assert re.fullmatch(r"\$\{AGENTMILL_SECRET_KEY:\?[^}]+\}", api["AGENTMILL_SECRET_KEY"])
    assert re.match(r"postgresql://[^@]+@postgres:5432/", api["AGENTMILL_DATABASE_URL"])
    assert queue_backend(api["AGENTMILL_QUEUE_URL"]) == "redis"
    assert api["AGENTMILL_QUEUE_URL"].startswith("redis://redis:6379/")


def test_compose_workers_do_not_inherit_the_api_healthcheck() -> None:
    # The image's HEALTHCHECK calls the API's port, which a worker does not open.
    for name, service in services().items():
        if is_ours(service) and compose_argv(service)[0] != "api":
            assert service.get("healthcheck") == {"disable": True}, name


def test_compose_postgres_accepts_every_process_connections() -> None:
    found = services()
    command = " ".join(found["postgres"].get("command", []))
    match = re.search(r"max_connections=(\d+)", command)
    max_connections = int(match.group(1)) if match else 100  # PostgreSQL's default
    default_pool = Settings.model_fields["db_pool_size"].default
    needed = 0
    for service in found.values():
        if is_ours(service):
            replicas = service.get("deploy", {}).get("replicas", 1)
            pool = int(service["environment"].get("AGENTMILL_DB_POOL_SIZE", default_pool))
            # Each process: its pool, as many overflow connections at peaks, and one LISTEN.
            needed += replicas * (2 * pool + 1)
    assert max_connections >= needed


# ----------------------------------------------------------------------------- the CLI


def test_every_agentmill_command_and_option_used_exists() -> None:
    runner = CliRunner()
    root = get_command(cli_app)
    used = invocations()
    assert len(used) >= 5
    for where, argv in used:
        # Walk the command groups (Typer vendors click: groups are what has `commands`).
        path: list[str] = []
        command = root
        while hasattr(command, "commands") and argv[len(path) :]:
            name = argv[len(path)]
            assert name in command.commands, f"{where}: no command {name!r}"
            command = command.commands[name]
            path.append(name)
        assert path, f"{where}: no command in {argv}"
        result = runner.invoke(cli_app, [*path, "--help"])
        assert result.exit_code == 0, f"{where}: {result.output}"
        rest = argv[len(path) :]
        for flag in (a.split("=")[0] for a in rest if re.match(r"-{1,2}[A-Za-z]", a)):
            assert in_help(flag, result.output), f"{where}: `agentmill {path}` has no {flag}"
        # The values parse too (integers where integers go).
        command.make_context(" ".join(["agentmill", *path]), list(rest))


# ----------------------------------------------------------------------------- settings


def test_every_agentmill_variable_is_a_setting() -> None:
    fields = set(Settings.model_fields)
    pending: set[str] = set()  # settings named in deploy/ before they exist: none
    files = [f for f in DEPLOY.rglob("*") if f.is_file()] + [ROOT / ".dockerignore"]
    referenced = {
        name: file
        for file in files
        for name in re.findall(r"\bAGENTMILL_([A-Z][A-Z0-9_]*)", file.read_text())
    }
    assert {"DATABASE_URL", "SECRET_KEY", "DB_POOL_SIZE"} <= referenced.keys()
    for name, file in referenced.items():
        assert name.lower() in fields | pending, f"AGENTMILL_{name} ({file.name}) is no setting"


# ----------------------------------------------------------------------------- metrics


def test_keda_queries_use_metrics_the_api_exports() -> None:
    stats = QueueStats(ready=3, scheduled=2, running=1, oldest_ready_age_s=4.5)
    exported = set(re.findall(r"^# TYPE (\w+) ", render(stats, [], 30.0).decode(), re.M))
    (scaled,) = [d for d in manifests() if d["kind"] == "ScaledObject"]
    queried: set[str] = set()
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "prometheus"
        float(trigger["metadata"]["threshold"])
        names = set(re.findall(r"\bagentmill_\w+", trigger["metadata"]["query"]))
        assert names, trigger
        queried |= names
    assert queried <= exported, queried - exported
    assert queried & {"agentmill_queue_lag_seconds", "agentmill_queue_ready_steps"}


def test_autoscalers_target_the_right_deployments() -> None:
    api, api_container = deployment_running("api")
    worker, _ = deployment_running("worker")
    (scaled,) = [d for d in manifests() if d["kind"] == "ScaledObject"]
    (hpa,) = [d for d in manifests() if d["kind"] == "HorizontalPodAutoscaler"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": api["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] <= api["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    # A CPU utilization target is a share of the request: without one the HPA cannot work.
    assert api_container["resources"]["requests"]["cpu"]
    # KEDA owns the worker count: a fixed replicas field would fight it on every apply.
    assert "replicas" not in worker["spec"]


# ----------------------------------------------------------------------------- probes, ports


def test_health_paths_are_routes_of_the_api(tmp_path: Path) -> None:
    app = create_app(Settings(), database_url=f"sqlite:///{tmp_path / 'x.db'}", workers=False)

    def served(path: str) -> bool:
        # Matched against app.routes: included routers are routes without a `path` of their own.
        scope = {"type": "http", "method": "GET", "path": path, "root_path": ""}
        return any(route.matches(scope)[0] is Match.FULL for route in app.routes)

    assert not served("/no-such-probe")
    _, container = deployment_running("api")
    probes = [container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
    paths = {probe["httpGet"]["path"] for probe in probes}
    paths |= set(re.findall(r"http://[^/]+(/\w*)", healthcheck_command()[2]))
    api, _ = deployment_running("api")
    paths.add(api["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"])
    assert "/health" in paths
    for path in paths:
        assert served(path), path


def test_api_port_lines_up_everywhere() -> None:
    (exposed,) = final_stage("EXPOSE")
    port = int(exposed)
    assert int(option(exec_form("CMD"), "--port")) == port
    assert int(re.findall(r":(\d+)/", healthcheck_command()[2])[0]) == port
    api_service = services()["api"]
    assert int(option(compose_argv(api_service), "--port")) == port
    assert [int(p.split(":")[-1]) for p in api_service["ports"]] == [port]
    deployment, container = deployment_running("api")
    assert int(option(k8s_argv(container), "--port")) == port
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert list(named.values()) == [port]

    def resolve(ref: str | int) -> int:
        return named[ref] if isinstance(ref, str) else ref

    service = one("Service", deployment["metadata"]["name"])
    assert [resolve(p["targetPort"]) for p in service["spec"]["ports"]] == [port]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert resolve(container[probe]["httpGet"]["port"]) == port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port


# ----------------------------------------------------------------------------- workers


def test_grace_periods_outlast_the_worker_grace() -> None:
    worker = services()["worker"]
    grace = float(option(compose_argv(worker), "--grace"))
    assert seconds(worker["stop_grace_period"]) > grace
    deployment, container = deployment_running("worker")
    grace = float(option(k8s_argv(container), "--grace"))
    # Kubernetes' default is 30 s.
    assert deployment["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30) > grace


def test_worker_is_named_after_its_pod() -> None:
    _, container = deployment_running("worker")
    assert option(k8s_argv(container), "--name") == "$(POD_NAME)"
    env = {e["name"]: e for e in container.get("env", [])}
    # Kubernetes expands $(VAR) only for variables the container defines; others stay literal.
    for variable in re.findall(r"\$\((\w+)\)", " ".join(container["args"])):
        assert variable in env, variable
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "readinessProbe" not in container, "workers serve no HTTP"


@pytest.mark.parametrize("command", ["api", "worker"])
def test_pods_run_as_the_image_non_root_user(command: str) -> None:
    uid = dockerfile_uid()
    assert uid != 0
    deployment, container = deployment_running(command)
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod.get("runAsUser", uid) == uid != 0
    assert container.get("securityContext", {}).get("runAsUser", uid) != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_image_user_exists_and_compose_does_not_override_it() -> None:
    uid = dockerfile_uid()
    runs = " ".join(final_stage("RUN"))
    assert re.search(rf"useradd\b.*--uid {uid}\b", runs), "create the user the image runs as"
    for name, service in services().items():
        if is_ours(service):
            assert str(service.get("user", uid)).split(":")[0] not in {"0", "root"}, name


def test_agentmill_worker_takes_the_queues_to_serve() -> None:
    runner = CliRunner()
    shown = runner.invoke(cli_app, ["worker", "--help"])
    assert shown.exit_code == 0
    assert in_help("--queue", shown.output)
    refused = runner.invoke(cli_app, ["worker", "--queue", "GPU"])
    assert refused.exit_code == 2
    assert "lowercase letters" in refused.output


# ----------------------------------------------------------------------------- artifacts


def compose_artifacts_dir() -> str:
    path: str = services()["api"]["environment"]["AGENTMILL_ARTIFACTS_DIR"]
    assert path.startswith("/"), "an absolute path inside the container"
    return path


def configmap_artifacts_dir() -> str:
    (configmap,) = [d for d in manifests() if d["kind"] == "ConfigMap"]
    path: str = configmap["data"]["AGENTMILL_ARTIFACTS_DIR"]
    assert path.startswith("/"), "an absolute path inside the container"
    return path


def test_compose_api_and_workers_share_one_artifacts_volume_at_the_artifacts_dir() -> None:
    path = compose_artifacts_dir()
    named = compose().get("volumes") or {}
    sources = set()
    ours = [name for name, service in services().items() if is_ours(service)]
    assert {"api", "worker"} <= set(ours)
    for name in ours:
        mounted = [m for m in compose_mounts(services()[name]) if m["target"] == path]
        assert len(mounted) == 1, f"{name} mounts nothing at AGENTMILL_ARTIFACTS_DIR {path}"
        (mount,) = mounted
        assert mount.get("type", "volume") == "volume", name
        # A named volume, not an anonymous one per container: every replica sees the same files.
        assert mount["source"] in named, f"{name}: {mount['source']!r} is no named volume"
        assert not mount.get("read_only"), f"{name} must write artifacts"
        sources.add(mount["source"])
    assert len(sources) == 1, f"the API and the workers mount different volumes: {sources}"


def test_dockerfile_creates_the_artifacts_dir_owned_by_the_image_user() -> None:
    # Docker copies the image folder's owner into a fresh named volume; Kubernetes mounts over
    # it, and the same path keeps the two setups alike.
    paths = {compose_artifacts_dir(), configmap_artifacts_dir()}
    assert len(paths) == 1, f"compose and Kubernetes mount artifacts at different paths: {paths}"
    (path,) = paths
    user, group = dockerfile_owner()
    commands = [argv for run in final_stage("RUN") for argv in shell_commands(run)]
    # The owner may be given by number or by the name useradd gave it.
    names = {user} | {argv[-1] for argv in commands if argv[0] == "useradd"}
    assert any(argv[0] == "mkdir" and path in argv[1:] for argv in commands), f"mkdir {path}"
    owners = [
        [a for a in argv[1:] if not a.startswith("-")]
        for argv in commands
        if argv[0] == "chown" and path in argv[1:]
    ]
    assert owners, f"the final stage does not chown {path}"
    for owner, *_ in owners:
        owner_user, _, owner_group = owner.partition(":")
        assert owner_user in names, f"{path} is owned by {owner_user!r}, the image runs as {user}"
        assert owner_group in {"", group} | names, f"{path}: group {owner_group!r}"


def test_kubernetes_artifacts_claim_is_read_write_many_and_listed() -> None:
    files = k8s_files()
    found = [
        (file, doc)
        for file, docs in files.items()
        for doc in docs
        if doc["kind"] == "PersistentVolumeClaim"
    ]
    assert len(found) == 1
    ((file, claim),) = found
    # API and worker pods run on any node at once: ReadWriteOnce would pin them to one node.
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    assert "storageClassName" not in claim["spec"], "the cluster's RWX class is the user's choice"
    assert "storageClassName" in (K8S / file).read_text(), "a comment says which class to set"
    (kustomization,) = [d for d in k8s_docs() if d["kind"] == "Kustomization"]
    assert file in kustomization["resources"]


@pytest.mark.parametrize("command", ["api", "worker"])
def test_pods_mount_the_artifacts_claim_at_the_artifacts_dir(command: str) -> None:
    (claim,) = [d for d in manifests() if d["kind"] == "PersistentVolumeClaim"]
    deployment, container = deployment_running(command)
    pod = deployment["spec"]["template"]["spec"]
    volumes = {
        volume["name"]
        for volume in pod.get("volumes", [])
        if volume.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]
    }
    assert volumes, f"{command} pods do not use the claim {claim['metadata']['name']!r}"
    mounts = [m for m in container.get("volumeMounts", []) if m["name"] in volumes]
    assert [m["mountPath"] for m in mounts] == [configmap_artifacts_dir()]
    (mount,) = mounts
    assert not mount.get("readOnly"), f"{command} pods must write artifacts"
    assert "subPath" not in mount, "both Deployments see the whole volume"
    # fsGroup makes the volume writable by the image's group (a fresh volume belongs to root).
    _, group = dockerfile_owner()
    assert pod["securityContext"]["fsGroup"] == int(group)
