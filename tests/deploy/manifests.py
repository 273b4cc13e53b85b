"""Checks deploy/k8s as a platform team would apply it. Usage: manifests.py OUT_DIR FILE...
- every gateway container of a Job or Deployment in sidecar.yaml is a native sidecar (an
  init container with restartPolicy: Always), never a second ordinary container;
- every gateway container drops all capabilities, cannot escalate, has a read-only root
  filesystem and resource limits;
- the gateway.toml each ConfigMap embeds is written to OUT_DIR/<file>-<name>.toml for
  `redcap-gateway check-config`."""
import os
import sys

import yaml

out, files = sys.argv[1], sys.argv[2:]
problems = []
for path in files:
    base = os.path.basename(path).removesuffix(".yaml")
    for doc in yaml.safe_load_all(open(path)):
        if not doc:
            continue
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
        for c in plain + init:
            sc = c.get("securityContext", {}) | pod.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{path}: {name}: allowPrivilegeEscalation must be false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{path}: {name}: readOnlyRootFilesystem must be true")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{path}: {name}: capabilities must drop ALL")
            if "limits" not in c.get("resources", {}):
                problems.append(f"{path}: {name}: resources.limits missing")
for p in problems:
    print("PROBLEM:", p)
sys.exit(1 if problems else 0)
