"""Deployable cluster files, checked without a cluster or a network.

The Ray cluster launcher config passes Ray's own validator; the KubeRay and MLflow manifests hold
what a deployment needs (kinds, apiVersions, resources, /dev/shm, S3 credentials from a Secret,
in-tree autoscaling, token auth, basic-auth); one image name, the Dockerfile's, is used
everywhere; no file turns authentication off or carries a secret value.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LAUNCHER = CLUSTER / "ray-cluster.yaml"
IMAGE_IN_REPO = "/home/ray/unlearn"  # the Dockerfile's WORKDIR: the repository inside the image

# Images not built from the Dockerfile, each pinned to a major version.
THIRD_PARTY_IMAGES = {"postgres:16"}
API_VERSIONS = {
    "RayCluster": "ray.io/v1", "RayJob": "ray.io/v1", "Deployment": "apps/v1",
    "StatefulSet": "apps/v1", "Service": "v1", "Secret": "v1", "ConfigMap": "v1",
    "NetworkPolicy": "networking.k8s.io/v1",
}
S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|_KEY$", re.I)
DISABLED_AUTH = re.compile(r"RAY_AUTH_MODE\s*[=:]\s*[\"']?disabled", re.I)


# ---------------------------------------------------------------------------- helpers

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = DOCKERFILE.read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def image_name() -> str:
    """The image the Dockerfile builds, from its org.opencontainers.image.ref.name label."""
    labels = " ".join(args for word, args in dockerfile_instructions() if word == "LABEL")
    match = re.search(r'org\.opencontainers\.image\.ref\.name="([^"]+)"', labels)
    assert match, "Dockerfile: LABEL org.opencontainers.image.ref.name=\"IMAGE\" is missing"
    return match.group(1)


def copy_sources() -> list[str]:
    """What the Dockerfile's COPY instructions take from the build context."""
    sources = []
    for word, args in dockerfile_instructions():
        if word == "COPY":
            sources += [a.rstrip("/") for a in shlex.split(args) if not a.startswith("--")][:-1]
    return sources


def base_ray_version() -> str:
    word, args = dockerfile_instructions()[0]
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py311-gpu", args)
    assert word == "FROM" and match, "Dockerfile must start FROM rayproject/ray:X.Y.Z-py311-gpu"
    return match.group(1)


def yaml_files() -> list[Path]:
    return sorted(CLUSTER.rglob("*.yaml")) + sorted(CLUSTER.rglob("*.yml"))


def manifests(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kuberay_docs() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in sorted(KUBERAY.glob("*.yaml")) for doc in manifests(path)]


def one(kind: str, name: str | None = None) -> dict:
    found = [doc for _, doc in kuberay_docs() if doc.get("kind") == kind
             and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in cluster/kuberay: {len(found)}"
    return found[0]


def pod_specs(node) -> list[dict]:
    """Every pod spec (a mapping with a `containers` list) anywhere inside a manifest."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            found.append(node)
        for value in node.values():
            found += pod_specs(value)
    elif isinstance(node, list):
        for value in node:
            found += pod_specs(value)
    return found


def containers(pod: dict) -> list[dict]:
    return list(pod.get("initContainers") or []) + list(pod["containers"])


def env_of(container: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container.get("env") or []}


def ray_cluster_specs() -> list[tuple[str, dict]]:
    """(where, RayClusterSpec): the standalone RayCluster and every RayJob's own cluster."""
    specs = [("RayCluster unlearn", one("RayCluster", "unlearn")["spec"])]
    for _, doc in kuberay_docs():
        if doc["kind"] == "RayJob":
            specs.append((f"RayJob {doc['metadata']['name']}", doc["spec"]["rayClusterSpec"]))
    return specs


def ray_groups(spec: dict) -> list[tuple[str, dict]]:
    groups = [("head", spec["headGroupSpec"])]
    groups += [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
    return groups


def assert_requests_and_limits(resources: dict, where: str, keys=("cpu", "memory")) -> None:
    for part in ("requests", "limits"):
        for key in keys:
            assert key in (resources or {}).get(part, {}), f"{where}: resources.{part}.{key}"


def launcher_config() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


IMAGE = image_name()


# ---------------------------------------------------------------------------- Dockerfile

def test_dockerfile_official_ray_gpu_py311_base_and_installs_the_project():
    from packaging.requirements import Requirement

    version = base_ray_version()
    pyproject = (ROOT / "pyproject.toml").read_text()
    ray_req = Requirement(re.search(r'"(ray\[[^"]*)"', pyproject).group(1))
    assert ray_req.specifier.contains(version), f"base image Ray {version} vs {ray_req}"
    project_version = re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1)
    assert IMAGE.rsplit(":", 1)[1] == project_version, "image tag = the project's version"

    steps = dockerfile_instructions()
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1] == "ray", "runs as the base image's non-root ray user"
    assert ("WORKDIR", IMAGE_IN_REPO) in steps, "the manifests' config paths point there"
    defaults = dict(a.split("=", 1) for word, a in steps if word == "ARG" and "=" in a)
    runs = [re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), args)
            for word, args in steps if word == "RUN"]
    torch_step = next(i for i, run in enumerate(runs) if "download.pytorch.org/whl/cu121" in run)
    project_step = next(i for i, run in enumerate(runs)
                        if re.search(r"pip install [\"']?\.(\[[\w,]+\])?[\"']?(\s|$)", run))
    assert torch_step < project_step, "torch from the CUDA index first, then the project"
    assert "torch==" in runs[torch_step] and "torchvision==" in runs[torch_step]
    sources = copy_sources()
    assert {"pyproject.toml", "unlearn_core", "pipelines"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_image_has_the_mlflow_servers_extras_and_the_manifests_name_their_driver():
    # The `cluster` extra is MLflow's basic-auth app (mlflow[auth]: Flask-WTF) and psycopg2;
    # a URI of plain postgresql:// or +psycopg would make SQLAlchemy 2.1 load psycopg 3,
    # which the image lacks.
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["cluster"]
    assert {re.split(r"[<>=\[]", e)[0] for e in extras} >= {"mlflow", "psycopg2-binary"}
    assert any(e.startswith("mlflow[auth]") for e in extras)
    runs = [args for word, args in dockerfile_instructions() if word == "RUN"]
    assert any(re.search(r"pip install [\"']?\.\[([\w,]*,)?cluster[\],]", run) for run in runs), (
        "the image installs the project with its `cluster` extra")
    script = (KUBERAY / "mlflow.yaml").read_text() + LAUNCHER.read_text()
    uris = re.findall(r"postgresql(\+\w+)?://", script)
    assert uris and set(uris) == {"+psycopg2"}, f"database URIs name drivers {uris}"


def test_dockerignore_sends_only_what_the_dockerfile_copies():
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")]
    assert patterns[0] == "*", "everything is left out unless re-included"
    included = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert included == set(copy_sources()), "re-include exactly the COPY sources"
    for kept_out in (".git", ".venv", "results", "mlflow.db", "tests", "data"):
        assert kept_out not in included


# ---------------------------------------------------------------------------- manifests

def test_every_cluster_yaml_parses_and_kuberay_kinds_have_their_api_versions():
    for path in yaml_files():
        for doc in manifests(path):
            assert isinstance(doc, dict), f"{path.name}: a document is not a mapping"
    seen = set()
    for path, doc in kuberay_docs():
        kind = doc.get("kind")
        assert kind in API_VERSIONS, f"{path.name}: unexpected kind {kind}"
        assert doc.get("apiVersion") == API_VERSIONS[kind], f"{path.name}: {kind} apiVersion"
        assert doc.get("metadata", {}).get("name"), f"{path.name}: {kind} without a name"
        seen.add((path.name, kind, doc["metadata"]["name"]))
    for expected in [("raycluster.yaml", "RayCluster", "unlearn"),
                     ("rayjob.yaml", "RayJob", "unlearn-quickstart"),
                     ("mlflow.yaml", "Deployment", "mlflow"), ("mlflow.yaml", "Service", "mlflow"),
                     ("mlflow.yaml", "StatefulSet", "postgres"),
                     ("mlflow.yaml", "Service", "postgres"),
                     ("secrets.example.yaml", "Secret", "unlearn-s3"),
                     ("secrets.example.yaml", "Secret", "unlearn-postgres"),
                     ("secrets.example.yaml", "Secret", "unlearn-mlflow")]:
        assert expected in seen, f"missing {expected}"


def test_one_image_everywhere_the_dockerfiles():
    assert launcher_config()["docker"]["image"] == IMAGE
    ours = 0
    for path in yaml_files():
        for doc in manifests(path):
            for pod in pod_specs(doc):
                for container in containers(pod):
                    image = container.get("image")
                    assert image == IMAGE or image in THIRD_PARTY_IMAGES, (
                        f"{path.name}: container {container.get('name')} runs {image!r}, "
                        f"expected {IMAGE}")
                    ours += image == IMAGE
    assert ours >= 5, "ray-head and ray-worker in two cluster specs, and mlflow"


def test_ray_clusters_autoscale_in_tree_with_token_auth():
    version = base_ray_version()
    for where, spec in ray_cluster_specs():
        assert spec.get("enableInTreeAutoscaling") is True, where
        assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token auth on"
        assert spec.get("rayVersion") == version, f"{where}: rayVersion = the image's Ray"
        assert_requests_and_limits(spec["autoscalerOptions"]["resources"], f"{where} autoscaler")
        head = spec["headGroupSpec"]["rayStartParams"]
        assert head.get("num-cpus") == "0", f"{where}: the head runs no tasks"
        assert head.get("dashboard-host") in ("127.0.0.1", "0.0.0.0"), where
        gpu_groups = [g for g in spec["workerGroupSpecs"]
                      if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
                             for c in g["template"]["spec"]["containers"])]
        assert gpu_groups, f"{where}: a GPU worker group"
        for group in gpu_groups:
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], where
            assert group["maxReplicas"] >= 1, where
    standalone = one("RayCluster", "unlearn")["spec"]["headGroupSpec"]["rayStartParams"]
    assert standalone["dashboard-host"] == "127.0.0.1", "reached by kubectl port-forward only"


def test_ray_containers_resources_shm_and_s3_credentials_from_a_secret():
    for where, spec in ray_cluster_specs():
        for group_name, group in ray_groups(spec):
            pod = group["template"]["spec"]
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for container in pod["containers"]:
                at = f"{where} {group_name}/{container['name']}"
                resources = container.get("resources", {})
                assert_requests_and_limits(resources, at)
                gpus = {part: resources[part].get("nvidia.com/gpu")
                        for part in ("requests", "limits")}
                if group_name != "head":
                    assert gpus["requests"] and gpus["requests"] == gpus["limits"], at
                shm = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
                assert shm, f"{at}: /dev/shm mounted"
                assert volumes[shm[0]["name"]].get("emptyDir", {}).get("medium") == "Memory", at
                env = env_of(container)
                for name in S3_ENV:
                    ref = env.get(name, {}).get("valueFrom", {}).get("secretKeyRef", {})
                    assert ref.get("name") == "unlearn-s3" and ref.get("key") == name, (
                        f"{at}: {name} from the Secret unlearn-s3")
                endpoint = env["AWS_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"]
                assert endpoint.get("optional") is True, f"{at}: AWS_ENDPOINT_URL is optional"


def test_rayjob_runs_unlearn_run_with_s3_results_and_mlflow():
    from pipelines.cli import build_parser

    job = one("RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["unlearn", "run"], "the job runs `unlearn run`"
    args = build_parser().parse_args(argv[1:])  # every flag is one the CLI has
    assert args.config.startswith(IMAGE_IN_REPO + "/")
    assert (ROOT / args.config[len(IMAGE_IN_REPO) + 1:]).is_file(), args.config
    assert args.config.endswith("pipelines/configs/quickstart.yaml")
    assert args.results.startswith("s3://") and args.address == "auto"
    assert args.tracking_uri == "http://mlflow:5000"
    assert job["spec"].get("shutdownAfterJobFinishes") is True
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = env_of(head)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "unlearn-mlflow", name


def test_mlflow_on_postgres_behind_basic_auth():
    deployment = one("Deployment", "mlflow")
    service = one("Service", "mlflow")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert any(p["port"] == 5000 for p in service["spec"]["ports"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == IMAGE
    assert_requests_and_limits(container.get("resources"), "mlflow")
    script = " ".join(container.get("command", []) + container.get("args", []))
    assert "mlflow server" in script and "--app-name basic-auth" in script
    assert "--artifacts-destination s3://" in script
    assert re.search(r"MLFLOW_BACKEND_STORE_URI=\"postgresql(\+\w+)?://", script)
    assert not re.search(r"postgresql[^\s\"']*://[^@\s\"'/]*:[^@\s\"']*@", script), (
        "no password inside a database URI")
    assert "$(" not in " ".join(container.get("args", [])).replace("$(printf", ""), (
        "Kubernetes would expand $(VAR) into the argv that ps shows")
    assert "--disable-security-middleware" not in script
    env = env_of(container)
    for name in ("PGPASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert "secretKeyRef" in env[name].get("valueFrom", {}), name

    postgres = one("StatefulSet", "postgres")
    pg = postgres["spec"]["template"]["spec"]["containers"][0]
    assert pg["image"] in THIRD_PARTY_IMAGES
    assert_requests_and_limits(pg.get("resources"), "postgres")
    pg_secret = env_of(pg)["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert pg_secret == env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]
    assert postgres["spec"].get("volumeClaimTemplates"), "PostgreSQL keeps its data"
    pg_service = one("Service", "postgres")
    assert pg_service["spec"]["selector"].items() <= (
        postgres["spec"]["template"]["metadata"]["labels"].items())


def test_mlflow_listens_beyond_loopback_only_behind_basic_auth():
    # Ray's dashboard beyond loopback only with token auth is checked above.
    commands = [" ".join(c.get("command", []) + c.get("args", []))
                for _, doc in kuberay_docs() for pod in pod_specs(doc) for c in containers(pod)]
    commands += launcher_config()["head_start_ray_commands"]
    servers = [c for c in commands if "mlflow server" in c]
    assert len(servers) == 2, "MLflow in mlflow.yaml and on the launcher's head"
    for command in servers:
        host = re.search(r"--host[ =](\S+)", command)
        if host and host.group(1) not in ("127.0.0.1", "localhost"):
            assert "--app-name basic-auth" in command, f"MLflow on {host.group(1)} without auth"


# ---------------------------------------------------------------------------- secrets and auth

def test_no_secret_values_outside_the_placeholder_example():
    example = KUBERAY / "secrets.example.yaml"
    provided: dict[str, set[str]] = {}
    for doc in manifests(example):
        assert doc["kind"] == "Secret"
        values = {**doc.get("stringData", {}), **doc.get("data", {})}
        assert values and set(values.values()) == {"PLACEHOLDER"}, doc["metadata"]["name"]
        provided[doc["metadata"]["name"]] = set(values)
    for path in yaml_files():
        text = path.read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}", text), f"{path.name}: an AWS access key"
        for doc in manifests(path):
            if path != example:
                assert doc.get("kind") != "Secret", f"{path.name}: Secrets live in kubectl only"
            for pod in pod_specs(doc):
                for container in containers(pod):
                    for name, entry in env_of(container).items():
                        if SECRET_NAME.search(name):
                            assert "value" not in entry, f"{path.name}: {name} has a literal value"
                        ref = entry.get("valueFrom", {}).get("secretKeyRef")
                        if ref:
                            assert ref["key"] in provided.get(ref["name"], ()), (
                                f"{path.name}: {ref} is not in secrets.example.yaml")
    launcher = LAUNCHER.read_text()
    assert "AWS_SECRET_ACCESS_KEY" not in launcher and "AWS_ACCESS_KEY_ID" not in launcher


def test_ray_auth_is_never_disabled():
    files = [p for p in CLUSTER.rglob("*") if p.is_file()] + [DOCKERFILE]
    for path in files:
        assert not DISABLED_AUTH.search(path.read_text()), f"{path}: RAY_AUTH_MODE=disabled"
    for path in yaml_files():
        for doc in manifests(path):
            for pod in pod_specs(doc):
                for container in containers(pod):
                    mode = env_of(container).get("RAY_AUTH_MODE", {}).get("value", "token")
                    assert mode == "token", f"{path.name}: RAY_AUTH_MODE={mode}"
    for where, spec in ray_cluster_specs():
        assert spec["authOptions"]["mode"] != "disabled", where


# ---------------------------------------------------------------------------- cluster launcher

def test_launcher_config_passes_rays_validation():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = launcher_config()
    prepared = prepare_config(copy.deepcopy(config))  # what `ray up` does before validating
    validate_config(prepared)
    # Our commands, not the provider defaults (which would install another Ray).
    for key in ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert prepared[key] == config[key], key
    assert not any("pip install" in c for c in prepared["head_setup_commands"])
    # The validator is live: a config it should refuse is refused.
    broken = copy.deepcopy(prepared)
    broken["available_node_types"]["gpu_worker"]["resources"] = {"GPU": "one"}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


def test_launcher_head_runs_no_tasks_gpu_pool_autoscales_on_s3_with_instance_roles():
    config = launcher_config()
    head_type = config["available_node_types"][config["head_node_type"]]
    assert head_type["resources"].get("CPU") == 0
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--num-cpus=0" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in head_start, "nothing on the head listens beyond loopback by flag"
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    assert re.search(r"mlflow server --host 127\.0\.0\.1", head_start)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
        assert all("RAY_AUTH_TOKEN_PATH=" in c for c in starts), key
    mounted = {str(k).strip("/") for k in config["file_mounts"]}
    assert any("ray-auth" in k for k in mounted), "the auth token folder reaches every node"

    workers = {n: t for n, t in config["available_node_types"].items()
               if n != config["head_node_type"]}
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu, "a GPU worker node type"
    for node_type in gpu:
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= config["max_workers"]
        assert node_type["max_workers"] >= 1
    for name, node_type in config["available_node_types"].items():
        assert "Arn" in node_type["node_config"].get("IamInstanceProfile", {}), (
            f"{name}: S3 access from an instance profile")
    assert "--results s3://" in LAUNCHER.read_text(), "the documented submit writes to S3"
