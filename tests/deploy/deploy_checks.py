"""Checks of deploy/: the Grafana dashboard against mpa_server's metric families, and the Helm
chart's rendered manifests. Standard library only (no PyYAML): the chart's output is read with a
small block-YAML reader that covers what `helm template` prints.

Usage:
  deploy_checks.py dashboard REPO_ROOT
  deploy_checks.py manifests CASE RENDERED_YAML FLAG_SOURCE...
      (CASE: default | gpu | tls | apikeys)
      FLAG_SOURCE: the source files whose ABSL_FLAGs are mpa_server's flags
  deploy_checks.py queries DASHBOARD_JSON         (prints one PromQL expression per line)
  deploy_checks.py live PROMETHEUS_URL JOB DASHBOARD_JSON
      every dashboard query, as Grafana would send it for job JOB, answers with at least one
      finite value from a Prometheus that scrapes a loaded mpa_server
Exit status 0 when every check passes; failures are listed on stderr.
"""

import json
import os
import re
import sys

# mpa_server's metric families (declared in server/metrics.cc): name -> (type, labels).
FAMILIES = {
    "mpa_build_info": ("gauge", {"model", "architecture", "attention"}),
    "mpa_requests_total": ("counter", {"finish_reason"}),
    "mpa_request_errors_total": ("counter", {"code"}),
    "mpa_prompt_tokens_total": ("counter", set()),
    "mpa_cached_tokens_total": ("counter", set()),
    "mpa_generated_tokens_total": ("counter", set()),
    "mpa_time_to_first_token_seconds": ("histogram", set()),
    "mpa_time_per_output_token_seconds": ("histogram", set()),
    "mpa_request_duration_seconds": ("histogram", set()),
    "mpa_decode_step_seconds": ("histogram", set()),
    "mpa_decode_batch_size": ("histogram", set()),
    "mpa_prefill_chunk_seconds": ("histogram", set()),
    "mpa_sessions": ("gauge", set()),
    "mpa_active_generations": ("gauge", set()),
    "mpa_kv_cache_tokens": ("gauge", {"state"}),
    "mpa_kv_cache_usage_ratio": ("gauge", set()),
    "mpa_attention_exact_fraction": ("histogram", {"mode"}),
    "mpa_attention_tokens_total": ("counter", {"kind"}),
    "mpa_centroids_scored_total": ("counter", set()),
    "mpa_cluster_updates_total": ("counter", set()),
    "mpa_cluster_update_seconds_total": ("counter", set()),
    "mpa_tokens_reclustered_total": ("counter", set()),
    "mpa_prefill_cluster_seconds_total": ("counter", set()),
    "mpa_attention_state_bytes": ("gauge", set()),
    "mpa_attention_state_limit_bytes": ("gauge", set()),
}
# Label values the server emits, where a query may match on them.
LABEL_VALUES = {
    "finish_reason": {"length", "stop", "eos", "cancelled", "error"},
    "state": {"used", "free"},
    "kind": {"exact", "total"},
    "mode": {"dense", "multipole", "exact-only", "quest"},
}
# Labels Prometheus adds to every scraped series, and the histogram bucket label.
TARGET_LABELS = {"job", "instance"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# What the dashboard must show (family names as they appear in queries).
REQUIRED_SERIES = [
    "mpa_requests_total", "mpa_request_errors_total",
    "mpa_time_to_first_token_seconds_bucket", "mpa_time_per_output_token_seconds_bucket",
    "mpa_generated_tokens_total", "mpa_decode_step_seconds_bucket", "mpa_decode_batch_size_sum",
    "mpa_kv_cache_usage_ratio", "mpa_kv_cache_tokens", "mpa_sessions", "mpa_active_generations",
    "mpa_attention_exact_fraction_bucket", "mpa_cluster_update_seconds_total",
    "mpa_cluster_updates_total", "mpa_tokens_reclustered_total", "mpa_centroids_scored_total",
    "mpa_attention_state_bytes", "mpa_attention_state_limit_bytes",
]

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
    return condition


def family_of(series):
    """The family a series name belongs to, or None."""
    if series in FAMILIES:
        return series
    for suffix in HISTOGRAM_SUFFIXES:
        base = series[: -len(suffix)]
        if series.endswith(suffix) and FAMILIES.get(base, ("",))[0] == "histogram":
            return base
    return None


# ---------------------------------------------------------------- dashboard


def dashboard_queries(dashboard):
    """(where, expr) for every panel target and every query variable."""
    out = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                out.append((f'panel "{panel.get("title")}" {target.get("refId")}',
                            target.get("expr", "")))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query")
            text = query.get("query", "") if isinstance(query, dict) else query
            out.append((f'variable "{variable.get("name")}"', text))
    return out


def labels_in(expr):
    """Label names an expression groups by or matches on."""
    names = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        names |= {n.strip() for n in group.split(",") if n.strip()}
    for selector in re.findall(r"\{([^}]*)\}", expr):
        names |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", selector))
    return names


def check_dashboard(root):
    path = os.path.join(root, "deploy", "grafana", "multipole-dashboard.json")
    with open(path) as f:
        dashboard = json.load(f)
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    source = variables.get("datasource", {})
    check(source.get("type") == "datasource" and source.get("query") == "prometheus",
          "templating: no datasource variable of type prometheus")

    panel_ids = []
    used = set()

    def walk(panels):
        for panel in panels:
            panel_ids.append(panel.get("id"))
            check("gridPos" in panel, f'panel "{panel.get("title")}": no gridPos')
            if panel.get("type") != "row":
                check(panel.get("datasource", {}).get("uid") == "${datasource}",
                      f'panel "{panel.get("title")}": datasource is not ${{datasource}}')
                check(panel.get("targets"), f'panel "{panel.get("title")}": no queries')
                for target in panel.get("targets", []):
                    check(target.get("datasource", {}).get("uid") == "${datasource}",
                          f'panel "{panel.get("title")}" {target.get("refId")}: datasource')
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    check(len(panel_ids) == len(set(panel_ids)), f"panel ids repeat: {panel_ids}")

    for where, expr in dashboard_queries(dashboard):
        check(expr.strip(), f"{where}: empty query")
        series = set(re.findall(r"\bmpa_[a-z0-9_]+", expr))
        families = set()
        for name in series:
            family = family_of(name)
            if check(family, f"{where}: {name} is not a metric family of mpa_server "
                             "(nor a histogram's _bucket/_sum/_count)"):
                families.add(family)
        used |= series
        allowed = set(TARGET_LABELS)
        for family in families:
            allowed |= FAMILIES[family][1]
            if FAMILIES[family][0] == "histogram":
                allowed.add("le")
        for label in labels_in(expr):
            check(label in allowed, f"{where}: label {label} is not a label of {sorted(families)}")
        for label, value in re.findall(r'([a-z_]+)="([^"$]*)"', expr):
            if label in LABEL_VALUES:
                check(value in LABEL_VALUES[label], f'{where}: {label}="{value}" is never emitted')
        if "histogram_quantile" in expr:
            check(re.search(r"by \(le[,)]", expr) and "_bucket" in expr,
                  f"{where}: histogram_quantile needs rate(..._bucket) summed by le")
        if "rate(" in expr:
            check("$__rate_interval" in expr, f"{where}: rate() without $__rate_interval")

    def legends(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                for label in re.findall(r"\{\{\s*([a-zA-Z_]+)\s*\}\}", target.get("legendFormat", "")):
                    check(label in labels_in(target.get("expr", "")) or label in TARGET_LABELS,
                          f'panel "{panel.get("title")}": legend {{{{{label}}}}} not in its query')
            legends(panel.get("panels", []))

    legends(dashboard.get("panels", []))
    for name in REQUIRED_SERIES:
        check(name in used, f"dashboard does not use {name}")
    ttft = [e for _, e in dashboard_queries(dashboard)
            if "mpa_time_to_first_token_seconds_bucket" in e]
    for quantile in ("0.5", "0.9", "0.99"):
        check(any(f"histogram_quantile({quantile}," in e for e in ttft), f"no TTFT p{quantile}")

    # The families above must be the server's: each is declared in server/metrics.cc with its type.
    source_path = os.path.join(root, "server", "metrics.cc")
    if os.path.exists(source_path):
        with open(source_path) as f:
            declared = dict((name, kind.lower()) for kind, name in re.findall(
                r'(Counter|Gauge|Histogram)Family\(\s*\w+,\s*"(mpa_[a-z0-9_]+)"', f.read()))
        for name, (kind, _) in FAMILIES.items():
            check(declared.get(name) == kind,
                  f"server/metrics.cc: {name} is not declared as a {kind} "
                  f"(found: {declared.get(name)})")
        print(f"dashboard: {len(declared)} families declared in server/metrics.cc match")
    else:
        print("dashboard: server/metrics.cc absent: families not compared with the server")
    print(f"dashboard: {len(panel_ids)} panels, {len(dashboard_queries(dashboard))} queries, "
          f"{len(used)} series names checked")


# ---------------------------------------------------------------- manifests


def parse_scalar(text):
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [parse_scalar(item) for item in inner.split(",")] if inner else []
    if text == "{}":
        return {}
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def parse_yaml(text):
    """Block YAML as helm prints it (mappings, sequences, scalars, flow lists) -> dict/list/str."""
    lines = []
    for raw in text.split("\n"):
        stripped = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if stripped.strip():
            lines.append((len(stripped) - len(stripped.lstrip()), stripped.strip()))
    position = 0

    def parse_block(indent):
        nonlocal position
        if position >= len(lines):
            return None
        if lines[position][1].startswith("- ") or lines[position][1] == "-":
            items = []
            while (position < len(lines) and lines[position][0] == indent
                   and (lines[position][1].startswith("- ") or lines[position][1] == "-")):
                rest = lines[position][1][2:].strip()
                if not rest:
                    position += 1
                    items.append(parse_block(lines[position][0]))
                elif re.match(r"^[^\"'\[{][^:]*:( |$)", rest):
                    # "- key: value": a mapping whose keys sit two columns right of the dash.
                    lines[position] = (indent + 2, rest)
                    items.append(parse_block(indent + 2))
                else:
                    position += 1
                    items.append(parse_scalar(rest))
            return items
        mapping = {}
        while position < len(lines) and lines[position][0] == indent:
            key, _, value = lines[position][1].partition(":")
            key = parse_scalar(key)
            position += 1
            if value.strip():
                mapping[key] = parse_scalar(value)
            elif position < len(lines) and (
                    lines[position][0] > indent
                    or (lines[position][0] == indent and lines[position][1].startswith("- "))):
                mapping[key] = parse_block(lines[position][0])
            else:
                mapping[key] = None
        return mapping

    return parse_block(lines[0][0]) if lines else None


def documents(rendered):
    docs = []
    for chunk in re.split(r"^---\s*$", rendered, flags=re.M):
        doc = parse_yaml(chunk)
        if doc:
            docs.append(doc)
    return docs


def check_manifests(case, path, flag_sources):
    with open(path) as f:
        docs = documents(f.read())
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc.get("kind"), []).append(doc)
    deployments = by_kind.get("Deployment", [])
    services = by_kind.get("Service", [])
    if not check(len(deployments) == 1 and len(services) == 1,
                 f"{case}: want one Deployment and one Service, got {sorted(map(str, by_kind))}"):
        return
    pod = deployments[0]["spec"]["template"]
    spec = pod["spec"]
    container = spec["containers"][0]
    args = container.get("args", [])
    flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)

    # Flags mpa_server takes (ABSL_FLAG in server/server_main.cc and the multipole flags of
    # model/config/multipole_flags.cc); a misspelled one stops it at start.
    known = set()
    for source in flag_sources:
        with open(source) as f:
            defined = set(re.findall(r"ABSL_FLAG\(\s*[\w:<>]+\s*,\s*(\w+)\s*,", f.read()))
        check(defined, f"{source}: defines no flags")
        known |= defined
    check(len(known) > 10, f"{flag_sources}: found only {sorted(known)} flags")
    for name in flags:
        check(name in known, f"{case}: unknown mpa_server flag --{name}")
    check(flags.get("model") == "/models/stories260K", f"{case}: --model={flags.get('model')}")
    check(flags.get("address") == "0.0.0.0:50051", f"{case}: --address={flags.get('address')}")
    check(flags.get("metrics_address") == "0.0.0.0:9464",
          f"{case}: --metrics_address={flags.get('metrics_address')}")
    check(flags.get("drain_timeout") == "30s", f"{case}: --drain_timeout={flags.get('drain_timeout')}")
    mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
    check(mounts.get("models", {}).get("mountPath") == "/models"
          and mounts["models"].get("readOnly") == "true", f"{case}: model volume not at /models (ro)")

    ports = {p["name"]: p for p in container.get("ports", [])}
    check(ports.get("grpc", {}).get("containerPort") == "50051", f"{case}: grpc containerPort")
    check(ports.get("metrics", {}).get("containerPort") == "9464", f"{case}: metrics containerPort")
    service_ports = {p["name"]: p for p in services[0]["spec"].get("ports", [])}
    check(service_ports.get("grpc", {}).get("targetPort") == "grpc", f"{case}: Service grpc port")
    check(service_ports.get("metrics", {}).get("targetPort") == "metrics",
          f"{case}: Service metrics port")
    selector = services[0]["spec"].get("selector", {})
    check(selector and all(pod["metadata"]["labels"].get(k) == v for k, v in selector.items()),
          f"{case}: the Service selector does not match the pod labels")

    # Kubernetes' gRPC probes speak plaintext only: with TLS they go to the health-only port.
    probe_port = "50052" if case == "tls" else "50051"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc = (container.get(probe) or {}).get("grpc") or {}
        check(grpc.get("port") == probe_port and grpc.get("service") == "",
              f"{case}: {probe} is not a gRPC health probe on {probe_port}: {container.get(probe)}")
    liveness = container["livenessProbe"]
    check(int(liveness["periodSeconds"]) * int(liveness["failureThreshold"]) > 30,
          f"{case}: liveness would kill a pod before a 30 s drain ends")

    grace = int(spec.get("terminationGracePeriodSeconds", 0))
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    pre_stop_seconds = int(pre_stop[1]) if pre_stop else 0
    check(grace > 30 + pre_stop_seconds,
          f"{case}: terminationGracePeriodSeconds {grace} <= preStop {pre_stop_seconds} + drain 30")

    security = spec.get("securityContext", {})
    check(security.get("runAsNonRoot") == "true", f"{case}: pod may run as root")
    resources = container.get("resources", {})
    check(resources.get("requests", {}).get("memory"), f"{case}: no memory request")
    annotations = (pod.get("metadata") or {}).get("annotations") or {}

    tls_flags = {"tls_cert", "tls_key", "tls_client_ca", "tls_reload_interval_s", "health_address"}
    if case != "tls":
        check(not tls_flags & set(flags), f"{case}: TLS flags without tls.enabled: {flags}")
        check("health" not in ports and "tls" not in mounts, f"{case}: TLS port or mount")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    key_flags = {"api_keys_file", "max_sessions_per_key"}
    if case != "apikeys":
        check(not key_flags & set(flags), f"{case}: API key flags without apiKeys.enabled: {flags}")
        check("api-keys" not in mounts and "api-keys" not in volumes, f"{case}: API key mount")
    if case == "default":
        check(container["image"] == "multipole/mpa-server:0.1.0", f"{case}: image {container['image']}")
        check("nvidia.com/gpu" not in resources.get("limits", {}), f"{case}: GPU requested")
        check(annotations.get("prometheus.io/scrape") == "true"
              and annotations.get("prometheus.io/port") == "9464"
              and annotations.get("prometheus.io/path") == "/metrics",
              f"{case}: Prometheus scrape annotations: {annotations}")
        check("ServiceMonitor" not in by_kind, f"{case}: ServiceMonitor rendered while disabled")
        check(spec["volumes"][0].get("persistentVolumeClaim", {}).get("claimName") == "multipole-models",
              f"{case}: model claim {spec['volumes'][0]}")
        check(flags.get("attention") == "dense", f"{case}: --attention={flags.get('attention')}")
        check("device" not in flags, f"{case}: --device={flags.get('device')} without a GPU")
    elif case == "gpu":
        # values: gpu.enabled (so --device=cuda and dense attention), serviceMonitor with a
        # release label, multipole knobs, a
        # million-token KV cache (printed as an integer, not 1.048576e+06), a chart-made claim.
        check(container["image"] == "multipole/mpa-server:0.1.0-cuda", f"{case}: image {container['image']}")
        check(resources.get("limits", {}).get("nvidia.com/gpu") == "1",
              f"{case}: limits {resources.get('limits')}")
        check(resources.get("limits", {}).get("memory") == "8Gi", f"{case}: memory limit lost")
        check(flags.get("attention") == "dense", f"{case}: --attention={flags.get('attention')}")
        check(flags.get("device") == "cuda", f"{case}: --device={flags.get('device')}")
        check(flags.get("max_kv_tokens") == "1048576", f"{case}: --max_kv_tokens={flags.get('max_kv_tokens')}")
        check(flags.get("cluster_ratio") == "8" and flags.get("block_tokens") == "8192"
              and flags.get("token_budget_fraction") == "0.05"
              and flags.get("centroid_keys") == "pre_rope_rotated_means",
              f"{case}: multipole knobs {flags}")
        monitors = by_kind.get("ServiceMonitor", [])
        if check(len(monitors) == 1, f"{case}: no ServiceMonitor"):
            monitor = monitors[0]
            check(monitor["apiVersion"] == "monitoring.coreos.com/v1", f"{case}: ServiceMonitor apiVersion")
            check(monitor["metadata"]["labels"].get("release") == "kps", f"{case}: ServiceMonitor labels")
            endpoint = monitor["spec"]["endpoints"][0]
            check(endpoint.get("port") == "metrics" and endpoint.get("path") == "/metrics",
                  f"{case}: ServiceMonitor endpoint {endpoint}")
            check(monitor["spec"]["selector"]["matchLabels"] == selector,
                  f"{case}: ServiceMonitor selects {monitor['spec']['selector']}, Service has {selector}")
        claims = by_kind.get("PersistentVolumeClaim", [])
        if check(len(claims) == 1, f"{case}: no PersistentVolumeClaim"):
            name = claims[0]["metadata"]["name"]
            check(spec["volumes"][0].get("persistentVolumeClaim", {}).get("claimName") == name,
                  f"{case}: the pod does not mount the claim {name}")
    elif case == "tls":
        # values: tls.enabled with secret "mpa-tls", clientCaKey ca.crt, reloadIntervalSeconds 300.
        directory = "/etc/multipole/tls"
        check(flags.get("tls_cert") == f"{directory}/tls.crt"
              and flags.get("tls_key") == f"{directory}/tls.key"
              and flags.get("tls_client_ca") == f"{directory}/ca.crt",
              f"{case}: TLS file flags {flags}")
        check(flags.get("tls_reload_interval_s") == "300",
              f"{case}: --tls_reload_interval_s={flags.get('tls_reload_interval_s')}")
        check(flags.get("health_address") == "0.0.0.0:50052",
              f"{case}: --health_address={flags.get('health_address')}")
        check(ports.get("health", {}).get("containerPort") == "50052", f"{case}: health containerPort")
        check("health" not in service_ports, f"{case}: the Service exposes the plaintext health port")
        mount = mounts.get("tls", {})
        check(mount.get("mountPath") == directory and mount.get("readOnly") == "true"
              and "subPath" not in mount, f"{case}: TLS secret mount {mount}")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        secret = volumes.get("tls", {}).get("secret") or {}
        check(secret.get("secretName") == "mpa-tls", f"{case}: TLS volume {volumes.get('tls')}")
        check(secret.get("defaultMode") == "0440", f"{case}: TLS files mode {secret.get('defaultMode')}")
        # The metrics port stays plain HTTP.
        check(flags.get("metrics_address") == "0.0.0.0:9464", f"{case}: metrics address")
    elif case == "apikeys":
        # values: apiKeys.enabled with secret "mpa-keys", secretKey keys.txt, maxSessionsPerKey 8.
        directory = "/etc/multipole/api-keys"
        check(flags.get("api_keys_file") == f"{directory}/keys.txt",
              f"{case}: --api_keys_file={flags.get('api_keys_file')}")
        check(flags.get("max_sessions_per_key") == "8",
              f"{case}: --max_sessions_per_key={flags.get('max_sessions_per_key')}")
        mount = mounts.get("api-keys", {})
        check(mount.get("mountPath") == directory and mount.get("readOnly") == "true"
              and "subPath" not in mount, f"{case}: API key secret mount {mount}")
        secret = volumes.get("api-keys", {}).get("secret") or {}
        check(secret.get("secretName") == "mpa-keys"
              and secret.get("items") == [{"key": "keys.txt", "path": "keys.txt"}],
              f"{case}: API key volume {volumes.get('api-keys')}")
        check(secret.get("defaultMode") == "0440", f"{case}: key file mode {secret.get('defaultMode')}")
        check(not tls_flags & set(flags), f"{case}: TLS flags {flags}")
    print(f"manifests ({case}): {len(docs)} documents, {len(args)} server args checked")


# ---------------------------------------------------------------- router


def check_router(case, json_path, shared_config_path, slots, autoscaled):
    """The chart with router.enabled, as rendered documents (JSON from validate_manifests.mjs)."""
    import hashlib
    import json
    with open(json_path) as f:
        docs = json.load(f)
    with open(shared_config_path) as f:
        shared = f.read()
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    named = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    sets = by_kind.get("StatefulSet", [])
    if not check(len(sets) == 1 and len(by_kind.get("Deployment", [])) == 1,
                 f"{case}: want the servers' StatefulSet and the router's Deployment, got "
                 f"{sorted(by_kind)}"):
        return
    servers = sets[0]
    fullname = servers["metadata"]["name"]
    router = by_kind["Deployment"][0]
    check(router["metadata"]["name"] == f"{fullname}-router", f"{case}: router name")
    server_labels = servers["spec"]["template"]["metadata"]["labels"]
    router_labels = router["spec"]["template"]["metadata"]["labels"]
    check(server_labels.get("app.kubernetes.io/component") == "server"
          and router_labels.get("app.kubernetes.io/component") == "router",
          f"{case}: pod labels {server_labels} / {router_labels}")

    def selects(selector, labels):
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    # Discovery: the StatefulSet's headless Service, one DNS name per ready pod.
    headless = named.get(("Service", servers["spec"]["serviceName"]))
    if check(headless is not None, f"{case}: no Service {servers['spec']['serviceName']}"):
        check(headless["spec"].get("clusterIP") == "None", f"{case}: replicas Service not headless")
        check(headless["spec"].get("publishNotReadyAddresses") is False,
              f"{case}: not-ready pods are published")
        check(selects(headless["spec"]["selector"], server_labels), f"{case}: headless selector")
    # Clients keep the address <fullname>: it leads to the routers now.
    front = named.get(("Service", fullname))
    if check(front is not None, f"{case}: no Service {fullname}"):
        check(selects(front["spec"]["selector"], router_labels)
              and not selects(front["spec"]["selector"], server_labels),
              f"{case}: Service {fullname} selects {front['spec']['selector']}")
        check("sessionAffinity" not in front["spec"], f"{case}: session affinity in front of routers")
        ports = {p["name"]: p for p in front["spec"]["ports"]}
        check(ports.get("grpc", {}).get("targetPort") == "grpc", f"{case}: Service grpc port")

    # The router's configuration: the tested file as it is, then one server per slot.
    configs = by_kind.get("ConfigMap", [])
    if check(len(configs) == 1, f"{case}: want one ConfigMap"):
        config = configs[0]["data"]["haproxy.cfg"]
        check(config.startswith(shared), f"{case}: the ConfigMap's haproxy.cfg does not start with "
              f"{shared_config_path} byte for byte")
        servers_text = config[len(shared):]
        want = "".join(
            f"  server mpa{i} {fullname}-{i}.{headless['metadata']['name']}.default.svc."
            f"cluster.local:50051\n" for i in range(slots))
        check(servers_text == want, f"{case}: server lines\n{servers_text!r}\nwant\n{want!r}")
        annotations = router["spec"]["template"]["metadata"].get("annotations", {})
        check(annotations.get("checksum/config") == hashlib.sha256(config.encode()).hexdigest(),
              f"{case}: checksum/config is not the configuration's SHA-256")
        with open(json_path + ".haproxy.cfg", "w") as f:
            f.write(config)
    pod = router["spec"]["template"]["spec"]
    container = pod["containers"][0]
    check(container["image"] == "haproxy:2.6", f"{case}: router image {container['image']}")
    check(container["command"][-2:] == ["-f", "/usr/local/etc/haproxy/haproxy.cfg"],
          f"{case}: router command {container['command']}")
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    check(mounts.get("config", {}).get("mountPath") == "/usr/local/etc/haproxy"
          and volumes.get("config", {}).get("configMap", {}).get("name") == configs[0]["metadata"]["name"],
          f"{case}: the router does not mount its ConfigMap")
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    check(env.get("MPA_ROUTER_BIND") == ":50051" and env.get("MPA_ROUTER_MONITOR_BIND") == ":8404"
          and env.get("MPA_ROUTER_HARD_STOP") == "30s", f"{case}: router environment {env}")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    check(ports == {"grpc": 50051, "monitor": 8404}, f"{case}: router ports {ports}")
    for probe in ("readinessProbe", "livenessProbe"):
        get = container.get(probe, {}).get("httpGet", {})
        check(get.get("path") == "/healthz" and get.get("port") == "monitor", f"{case}: router {probe}")
    stop = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    check("sleep 5" in stop and "kill -USR1 1" in stop, f"{case}: router preStop {stop}")
    check(pod["terminationGracePeriodSeconds"] > 5 + 30, f"{case}: router grace period")
    check(pod["securityContext"].get("runAsNonRoot") is True, f"{case}: router may run as root")

    # The servers: drained within their grace period, not scaled by two owners.
    spec = servers["spec"]
    server_pod = spec["template"]["spec"]
    server = server_pod["containers"][0]
    drain = next(a for a in server["args"] if a.startswith("--drain_timeout="))
    drain_seconds = int(drain.split("=")[1].rstrip("s"))
    pre_stop = int(server["lifecycle"]["preStop"]["exec"]["command"][1])
    check(server_pod["terminationGracePeriodSeconds"] > pre_stop + drain_seconds,
          f"{case}: server grace {server_pod['terminationGracePeriodSeconds']} <= preStop "
          f"{pre_stop} + drain {drain_seconds}")
    check(spec.get("podManagementPolicy") == "Parallel", f"{case}: podManagementPolicy")
    check(not any(a.startswith("--tls") for a in server["args"]), f"{case}: TLS behind the router")
    check(("replicas" in spec) != autoscaled, f"{case}: StatefulSet replicas {spec.get('replicas')} "
          f"with autoscaling {autoscaled}")

    # Disruption budgets for both, each selecting its own pods.
    budgets = {d["metadata"]["name"]: d for d in by_kind.get("PodDisruptionBudget", [])}
    server_budget = budgets.get(fullname, {}).get("spec", {})
    check(server_budget.get("maxUnavailable") == 1
          and selects(server_budget.get("selector", {}).get("matchLabels"), server_labels),
          f"{case}: server PodDisruptionBudget {server_budget}")
    router_budget = budgets.get(f"{fullname}-router", {}).get("spec", {})
    check(router_budget.get("minAvailable") == 1
          and selects(router_budget.get("selector", {}).get("matchLabels"), router_labels),
          f"{case}: router PodDisruptionBudget {router_budget}")

    scalers = by_kind.get("HorizontalPodAutoscaler", [])
    if autoscaled:
        if check(len(scalers) == 1, f"{case}: no HorizontalPodAutoscaler"):
            hpa = scalers[0]["spec"]
            check(hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                            "name": fullname}, f"{case}: HPA target {hpa['scaleTargetRef']}")
            check(hpa["maxReplicas"] == slots, f"{case}: {slots} slots for up to {hpa['maxReplicas']}")
            metric = hpa["metrics"][0]["pods"]["metric"]["name"]
            check(metric == "mpa_active_generations", f"{case}: HPA metric {metric}")
    else:
        check(not scalers, f"{case}: HPA without autoscaling.enabled")
    for monitor in by_kind.get("ServiceMonitor", []):
        labels = monitor["spec"]["selector"]["matchLabels"]
        check(selects(labels, headless["metadata"]["labels"])
              and not selects(labels, front["metadata"]["labels"]),
              f"{case}: the ServiceMonitor does not select the replicas' Service")
    print(f"router ({case}): {len(docs)} documents, {slots} server slots checked")


# ---------------------------------------------------------------- router health check


def check_health_bytes(config_path, generator_path):
    """The router's tcp-check sends what tools/grpc_health_check_bytes.py writes, and that is one
    well-formed HTTP/2 gRPC call of grpc.health.v1.Health/Check for multipole.v1.DecodeService."""
    import importlib.util
    import struct
    with open(config_path) as f:
        config = f.read()
    sent = bytes.fromhex("".join(re.findall(r"^\s*tcp-check send-binary ([0-9a-fA-F]+)", config, re.M)))
    spec = importlib.util.spec_from_file_location("grpc_health_check_bytes", generator_path)
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    check(sent == generator.check_bytes("multipole.v1.DecodeService"),
          f"{config_path}: the tcp-check bytes are not tools/grpc_health_check_bytes.py's")
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    if not check(sent.startswith(preface), "health check: no HTTP/2 client preface"):
        return
    frames, at = [], len(preface)
    while at + 9 <= len(sent):
        length = int.from_bytes(sent[at:at + 3], "big")
        kind, flags = sent[at + 3], sent[at + 4]
        stream = struct.unpack(">I", sent[at + 5:at + 9])[0]
        frames.append((kind, flags, stream, sent[at + 9:at + 9 + length]))
        at += 9 + length
    check(at == len(sent), "health check: frames do not add up to the bytes sent")
    check([(k, f, s) for k, f, s, _ in frames] == [(4, 0, 0), (1, 4, 1), (0, 1, 1)],
          f"health check: frames {[(k, f, s) for k, f, s, _ in frames]}")
    headers = frames[1][3] if len(frames) > 1 else b""
    for text in (b"/grpc.health.v1.Health/Check", b"application/grpc", b"trailers"):
        check(text in headers, f"health check: {text} not in the HEADERS frame")
    data = frames[2][3] if len(frames) > 2 else b""
    message = b"\x0a\x1amultipole.v1.DecodeService"
    check(data == b"\x00" + struct.pack(">I", len(message)) + message,
          f"health check: DATA {data!r}")
    # The answer it passes on: HealthCheckResponse{status: SERVING}, framed.
    check(re.search(r"tcp-check expect min-recv 0 binary 00000000020801\b", config),
          "health check: no expectation of SERVING")
    print(f"router health check: {len(sent)} bytes, {len(frames)} HTTP/2 frames, as the generator writes")


# ---------------------------------------------------------------- live


def check_live(prometheus_url, job, dashboard_path):
    import math
    import urllib.parse
    import urllib.request

    with open(dashboard_path) as f:
        queries = dashboard_queries(json.load(f))
    answered = 0
    for where, expr in queries:
        if expr.startswith("label_values("):
            # A variable: the values its label takes on the metric it names.
            metric, label = re.match(r"label_values\((.*), *([a-z_]+)\)$", expr).groups()
            expr = f"count by ({label}) ({metric})"
        # The whole run (Prometheus started just before the load) lies inside a 5 m window.
        expr = (expr.replace("$__rate_interval", "5m").replace("$job", job)
                .replace("$instance", ".*"))
        url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.load(response)
        if not check(answer.get("status") == "success", f"{where}: {answer}"):
            continue
        values = [float(r["value"][1]) for r in answer["data"]["result"]]
        if check(any(math.isfinite(v) for v in values),
                 f"{where}: no finite value for {expr}: {answer['data']['result']}"):
            answered += 1
    print(f"live: {answered} of {len(queries)} dashboard queries answered with data")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "dashboard":
        check_dashboard(sys.argv[2])
    elif len(sys.argv) >= 5 and sys.argv[1] == "manifests":
        check_manifests(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif len(sys.argv) == 4 and sys.argv[1] == "health-bytes":
        check_health_bytes(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 7 and sys.argv[1] == "router":
        check_router(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6] == "1")
    elif len(sys.argv) == 5 and sys.argv[1] == "live":
        check_live(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) == 3 and sys.argv[1] == "queries":
        with open(sys.argv[2]) as f:
            for _, expr in dashboard_queries(json.load(f)):
                print(expr)
        return 0
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
