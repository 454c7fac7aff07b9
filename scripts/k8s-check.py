"""Checks one rendered overlay (kubectl kustomize output) for scripts/k8s-check.

Usage: k8s-check.py RENDERED.yaml OUT_DIR SCHEMA_DIR DOCKERFILE BASE_TOML CHANNEL_WORKER_LIB

Writes the built-in resources to OUT_DIR/builtin.yaml (for kubernetes-validate) and each custom
resource to OUT_DIR/<schema>/<name>.json, for check-jsonschema against SCHEMA_DIR/<schema>.json:
the schema whose apiVersion and kind constants name the resource's (several groups have a kind
called Cluster or User, so the file name alone does not decide). A custom resource that no schema
names is a problem. Also checks what no schema can: Herald's rules for its pods (probes on the metrics port, grace
period above shutdown_grace_period, hardened security context, binaries the image ships,
autoscaler targets that exist, a worker Deployment for each channel herald-channel-worker knows
and, where workers are autoscaled, a ScaledObject on each one's queue; where a ServiceMonitor is
rendered, every Deployment's pods are behind a Service port it scrapes). Prints every problem and exits 1 if there is any.
"""

import json
import os
import re
import sys
import tomllib

import yaml

# API groups whose resources kubernetes-validate knows (the core group is "").
BUILTIN_GROUPS = {
    "", "apps", "batch", "autoscaling", "policy", "networking.k8s.io", "rbac.authorization.k8s.io",
}


def seconds(humantime: str) -> int:
    """Seconds in a humantime duration as base.toml writes them ("20s", "2m")."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", humantime)
    if not match:
        raise SystemExit(f"k8s-check: cannot read the duration {humantime!r}")
    value, unit = int(match.group(1)), match.group(2)
    return {"ms": value // 1000, "s": value, "m": value * 60, "h": value * 3600}[unit]


def shipped_binaries(dockerfile: str) -> set:
    with open(dockerfile) as file:
        return set(re.findall(r"^COPY --from=\S+ \S+ /usr/local/bin/(\S+)$", file.read(), re.M))


def channels(channel_worker_lib: str) -> set:
    """The channels herald-channel-worker runs, from its service names (herald-<channel>-worker)."""
    with open(channel_worker_lib) as file:
        return set(re.findall(r'=> "herald-([a-z-]+)-worker"', file.read()))


def worker_problems(documents: list, known: set) -> list:
    """A Deployment per channel running it, and a ScaledObject on its queue if any is here."""
    problems = []
    running = {}
    for document in documents:
        if document["kind"] != "Deployment":
            continue
        for container in document["spec"]["template"]["spec"]["containers"]:
            command = container.get("command", [])
            if command[1:2] == ["--channel"]:
                running[command[2]] = document["metadata"]["name"]
    if not running:
        return problems
    for channel in sorted(known - set(running)):
        problems.append(f"no Deployment runs herald-channel-worker --channel {channel}")
    for channel, name in sorted(running.items()):
        if channel not in known:
            problems.append(f"Deployment {name} runs the unknown channel {channel!r}")
        elif name != f"herald-{channel}-worker":
            problems.append(f"Deployment {name} runs {channel}: name it herald-{channel}-worker")
    scaled = {
        document["spec"]["scaleTargetRef"]["name"]: document["spec"]["triggers"]
        for document in documents
        if document["kind"] == "ScaledObject"
    }
    if scaled:
        for channel, name in sorted(running.items()):
            queue = f"herald.{channel.replace('-', '_')}.deliver"
            queues = [trigger["metadata"].get("queueName") for trigger in scaled.get(name, [])]
            if queue not in queues:
                problems.append(f"no ScaledObject scales {name} on the queue {queue}")
    return problems


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def monitoring_problems(documents: list) -> list:
    """With a ServiceMonitor here, every Deployment's pods are endpoints of a port it scrapes."""
    monitors = [d for d in documents if d["kind"] == "ServiceMonitor"]
    if not monitors:
        return []
    services = [d for d in documents if d["kind"] == "Service"]
    scraped = []  # the pod selectors of the Service ports a ServiceMonitor scrapes
    for monitor in monitors:
        wanted = monitor["spec"]["selector"].get("matchLabels", {})
        ports = {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]}
        for service in services:
            if not selects(wanted, service["metadata"].get("labels", {})):
                continue
            for port in service["spec"].get("ports", []):
                if port.get("name") in ports and port.get("targetPort") == "metrics":
                    scraped.append(service["spec"].get("selector", {}))
    problems = []
    for document in documents:
        if document["kind"] != "Deployment":
            continue
        labels = document["spec"]["template"]["metadata"].get("labels", {})
        if not any(selector and selects(selector, labels) for selector in scraped):
            problems.append(f"Deployment {document['metadata']['name']}: no ServiceMonitor scrapes its metrics port")
    return problems


def pod_problems(name: str, pod: dict, grace: int, shipped: set, serves: bool) -> list:
    problems = []
    security = pod.get("securityContext", {})
    if security.get("runAsNonRoot") is not True:
        problems.append(f"{name}: the pod does not set runAsNonRoot")
    if serves and pod.get("terminationGracePeriodSeconds", 30) <= grace:
        problems.append(
            f"{name}: terminationGracePeriodSeconds is not above shutdown_grace_period ({grace}s)"
        )
    if serves and not pod.get("topologySpreadConstraints"):
        problems.append(f"{name}: no topology spread")
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        where = f"{name}/{container['name']}"
        context = container.get("securityContext", {})
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: the root filesystem is not read-only")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: privilege escalation is not refused")
        if context.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{where}: capabilities are not all dropped")
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(resources.get(kind, {})):
                problems.append(f"{where}: no cpu and memory {kind}")
        binary = os.path.basename((container.get("command") or [""])[0])
        if binary not in shipped:
            problems.append(f"{where}: runs {binary!r}, which the image does not ship")
        if not serves:
            continue
        ports = {port.get("name"): port.get("containerPort") for port in container.get("ports", [])}
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        listen = env.get("HERALD__TELEMETRY__PROMETHEUS_LISTEN", "")
        if "metrics" not in ports or not listen.endswith(f":{ports['metrics']}"):
            problems.append(f"{where}: the metrics port is not where prometheus_listen serves")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = container.get(probe, {}).get("httpGet", {})
            if get.get("path") != path or get.get("port") not in ("metrics", ports.get("metrics")):
                problems.append(f"{where}: {probe} is not GET {path} on the metrics port")
    return problems


def schemas_by_kind(schema_dir: str) -> dict:
    """{(apiVersion, kind): schema file stem} from each schema's `apiVersion` and `kind` constants."""
    found = {}
    for file_name in sorted(os.listdir(schema_dir)):
        if not file_name.endswith(".json"):
            continue
        with open(os.path.join(schema_dir, file_name)) as file:
            properties = json.load(file).get("properties", {})
        api_version = properties.get("apiVersion", {}).get("const")
        kind = properties.get("kind", {}).get("const")
        if not api_version or not kind:
            raise SystemExit(f"k8s-check: {file_name} does not fix apiVersion and kind with const")
        if (api_version, kind) in found:
            raise SystemExit(f"k8s-check: {file_name} and {found[api_version, kind]}.json both describe {api_version} {kind}")
        found[api_version, kind] = file_name.removesuffix(".json")
    return found


def main() -> int:
    rendered, out_dir, schema_dir, dockerfile, base_toml, channel_worker_lib = sys.argv[1:7]
    with open(rendered) as file:
        documents = [document for document in yaml.safe_load_all(file) if document]
    with open(base_toml, "rb") as file:
        config = tomllib.load(file)
    grace = max(
        seconds(config["server"]["shutdown_grace_period"]),
        seconds(config["worker"]["shutdown_grace_period"]),
    )
    shipped = shipped_binaries(dockerfile)
    if not shipped:
        raise SystemExit(f"k8s-check: {dockerfile} copies no binary into /usr/local/bin")

    problems, builtin = [], []
    schemas = schemas_by_kind(schema_dir)
    deployments = {d["metadata"]["name"] for d in documents if d["kind"] == "Deployment"}
    for document in documents:
        group = document["apiVersion"].rpartition("/")[0]
        kind, name = document["kind"], document["metadata"]["name"]
        if group in BUILTIN_GROUPS:
            builtin.append(document)
        else:
            schema = schemas.get((document["apiVersion"], kind))
            if schema is None:
                problems.append(f"{kind} {name}: no schema in {schema_dir} for {document['apiVersion']}")
            else:
                os.makedirs(os.path.join(out_dir, schema), exist_ok=True)
                with open(os.path.join(out_dir, schema, f"{name}.json"), "w") as file:
                    json.dump(document, file)
        if kind in ("Deployment", "Job"):
            pod = document["spec"]["template"]["spec"]
            problems += pod_problems(f"{kind} {name}", pod, grace, shipped, kind == "Deployment")
        if kind in ("ScaledObject", "HorizontalPodAutoscaler"):
            target = document["spec"].get("scaleTargetRef", {}).get("name")
            if target not in deployments:
                problems.append(f"{kind} {name}: scales {target!r}, which is no Deployment here")
    known = channels(channel_worker_lib)
    if not known:
        raise SystemExit(f"k8s-check: no channel found in {channel_worker_lib}")
    problems += worker_problems(documents, known)
    problems += monitoring_problems(documents)
    with open(os.path.join(out_dir, "builtin.yaml"), "w") as file:
        yaml.safe_dump_all(builtin, file)
    for problem in problems:
        print(f"k8s-check: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
