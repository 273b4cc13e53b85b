"""Checks deploy/k8s as a platform team would apply it.
Usage: manifests.py OUT_DIR FILE...  (each FILE an overlay rendered by kubectl kustomize,
named after it: base.yaml, central.yaml, sidecar.yaml)
- every gateway container of a Job or Deployment in sidecar.yaml is a native sidecar (an
  init container with restartPolicy: Always), never a second ordinary container;
- every gateway container (and every container of central.yaml) drops all capabilities,
  cannot escalate, has a read-only root filesystem and resource limits;
- central.yaml is a complete install: 2+ replicas spread over nodes, probes on the admin
  port, a PodDisruptionBudget, an Ingress with TLS, NetworkPolicies (deny by default,
  the gateway's egress limited to named ports), Redis with the Service the config names;
- the gateway.toml each ConfigMap embeds is written to OUT_DIR/<file>-<name>.toml for
  `redcap-gateway check-config`."""
import os
import re
import sys

import yaml

out, files = sys.argv[1], sys.argv[2:]
problems = []


def check_container(path, name, pod, c):
    sc = c.get("securityContext", {}) | pod.get("securityContext", {})
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{path}: {name}/{c['name']}: allowPrivilegeEscalation must be false")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{path}: {name}/{c['name']}: readOnlyRootFilesystem must be true")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
        problems.append(f"{path}: {name}/{c['name']}: capabilities must drop ALL")
    if "limits" not in c.get("resources", {}):
        problems.append(f"{path}: {name}/{c['name']}: resources.limits missing")
    if pod.get("securityContext", {}).get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{path}: {name}: seccompProfile must be RuntimeDefault")


def check_central(path, docs):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    gw = [d for d in by_kind.get("Deployment", []) if d["metadata"]["name"] == "redcap-gateway"]
    if not gw:
        problems.append(f"{path}: no redcap-gateway Deployment")
        return
    dep = gw[0]
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    if dep["spec"].get("replicas", 1) < 2:
        problems.append(f"{path}: the gateway needs 2+ replicas")
    keys = {t["topologyKey"] for t in pod.get("topologySpreadConstraints", [])}
    if "kubernetes.io/hostname" not in keys:
        problems.append(f"{path}: no topology spread over nodes")
    c = pod["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        if c.get(probe, {}).get("httpGet", {}).get("port") != "admin":
            problems.append(f"{path}: {probe} must be on the admin port")
    pdbs = by_kind.get("PodDisruptionBudget", [])
    if not any(p["spec"]["selector"]["matchLabels"].items() <= labels.items() for p in pdbs):
        problems.append(f"{path}: no PodDisruptionBudget selects the gateway")
    if not any(i["spec"].get("tls") for i in by_kind.get("Ingress", [])):
        problems.append(f"{path}: no Ingress with TLS")
    nps = by_kind.get("NetworkPolicy", [])
    if not any(n["spec"]["podSelector"] == {} and not n["spec"].get("ingress") and not n["spec"].get("egress")
               and set(n["spec"]["policyTypes"]) == {"Ingress", "Egress"} for n in nps):
        problems.append(f"{path}: no default-deny NetworkPolicy")
    gw_np = [n for n in nps if n["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()
             and n["spec"]["podSelector"] != {}]
    if not gw_np or "Egress" not in gw_np[0]["spec"]["policyTypes"]:
        problems.append(f"{path}: no egress NetworkPolicy for the gateway")
    else:
        for rule in gw_np[0]["spec"].get("egress", []):
            if not rule.get("ports") or not rule.get("to"):
                problems.append(f"{path}: a gateway egress rule open to any port or peer")
    # Redis: the Service the config names, in this namespace.
    cm = [d for d in by_kind.get("ConfigMap", []) if "gateway.toml" in d.get("data", {})]
    m = re.search(r'redis_url = "redis://([^.:/]+)\.([^.:/]+)\.svc[^:]*:(\d+)/', cm[0]["data"]["gateway.toml"]) if cm else None
    if not m:
        problems.append(f"{path}: the config names no Redis Service")
    else:
        svc, ns, port = m.groups()
        if not any(s["metadata"]["name"] == svc and s["metadata"].get("namespace") == ns
                   and any(p["port"] == int(port) for p in s["spec"]["ports"])
                   for s in by_kind.get("Service", [])):
            problems.append(f"{path}: no Service {svc}.{ns}:{port} for the config's redis_url")
    if not any(s["metadata"]["name"] == "redcap-project-tokens" for s in by_kind.get("Secret", [])):
        problems.append(f"{path}: no Secret for the project tokens")


for path in files:
    base = os.path.basename(path).removesuffix(".yaml")
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "ConfigMap" and "gateway.toml" in doc.get("data", {}):
            with open(os.path.join(out, f"{base}-{name}.toml"), "w") as f:
                f.write(doc["data"]["gateway.toml"])
        if kind not in ("Job", "Deployment"):
            continue
        pod = doc["spec"]["template"]["spec"]
        plain = [c for c in pod.get("containers", []) if c["image"].startswith("redcap-gateway")]
        init = [c for c in pod.get("initContainers", []) if c["image"].startswith("redcap-gateway")]
        if base == "sidecar":
            if plain:
                problems.append(f"{path}: {kind} {name}: the gateway is an ordinary container (a Job would never finish)")
            if not init or any(c.get("restartPolicy") != "Always" for c in init):
                problems.append(f"{path}: {kind} {name}: the gateway must be an init container with restartPolicy: Always")
        checked = plain + init
        if base == "central":
            checked = pod.get("containers", []) + pod.get("initContainers", [])
        for c in checked:
            check_container(path, name, pod, c)
    if base == "central":
        check_central(path, docs)
for p in problems:
    print("PROBLEM:", p)
sys.exit(1 if problems else 0)
