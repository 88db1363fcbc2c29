#!/usr/bin/env python3
"""Renders the Helm chart (deploy/helm/uts) with every value set of deploy/helm/values/ and checks
the output, offline — no cluster is needed:

- kubernetes-validate against the Kubernetes schemas (`--kubernetes-version`), every document of
  a built-in kind; KEDA's kinds are checked here instead (their CRDs are not in those schemas);
- against the workspace: every container's command is a binary the Dockerfile puts in the image,
  every environment variable is one that binary's --help knows, probes point at the admin port
  the stage listens on, Services select pods that exist and target ports they expose;
- the invariants of the design: a consumer stage's KEDA maximum is the partition count, the
  grace period outlasts the 30 s drain, every Deployment has a PodDisruptionBudget, the setup
  hook (migrations, topics) runs before install and upgrade, and its Secret before it;
- and that the chart refuses what it must: no database URL, SASL without credentials.

    deploy/helm/check-chart.py HELM BINARY_DIR

Exits non-zero with one line per finding.
"""

import importlib.util
import pathlib
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
# The compose check's readers of the workspace (the binaries' --help, the image's binaries).
_spec = importlib.util.spec_from_file_location("check_compose", ROOT / "deploy/check-compose.py")
_compose = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_compose)
help_of, image_binaries = _compose.help_of, _compose.image_binaries
CHART = ROOT / "deploy/helm/uts"
VALUES = sorted((ROOT / "deploy/helm/values").glob("*.yaml"))
KUBERNETES_VERSION = "1.31"
NOT_CLAP = {"RUST_LOG"}
DRAIN_SECONDS = 30


def render(helm, values, extra=()):
    args = [helm, "template", "uts", str(CHART), "--namespace", "uts"]
    if values:
        args += ["-f", str(values)]
    args += list(extra)
    return subprocess.run(args, capture_output=True, text=True)


def check_refusals(helm, findings):
    for what, extra, message in [
        ("no database URL", [], "secrets.databaseUrl"),
        (
            "SASL without a mechanism",
            ["--set", "secrets.databaseUrl=postgres://x", "--set", "kafka.securityProtocol=sasl_ssl"],
            "kafka.saslMechanism",
        ),
    ]:
        result = render(helm, None, extra)
        if result.returncode == 0 or message not in result.stderr:
            findings.append(f"the chart renders with {what} (expected an error naming {message})")


def check_documents(name, documents, binary_dir, findings):
    by_kind = {}
    for document in documents:
        by_kind.setdefault(document["kind"], []).append(document)
    in_image = image_binaries()
    partitions = None
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    if not deployments:
        findings.append(f"{name}: no Deployment rendered")
    pod_labels = {}
    for deployment_name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        pod_labels[deployment_name] = deployment["spec"]["template"]["metadata"]["labels"]
        if pod.get("terminationGracePeriodSeconds", 30) <= DRAIN_SECONDS:
            findings.append(f"{name}: {deployment_name}: the grace period does not outlast the {DRAIN_SECONDS} s drain")
        for container in pod["containers"]:
            command = container["command"]
            if command[0] not in in_image:
                findings.append(f"{name}: {deployment_name}: {command[0]} is not a binary of the image")
                continue
            known, _ = help_of(binary_dir, command)
            env = {e["name"]: e for e in container.get("env", [])}
            for variable in env:
                if variable not in known and variable not in NOT_CLAP:
                    findings.append(f"{name}: {deployment_name}: {variable} is not a setting of {command[0]}")
            if "UTS_TOPIC_PARTITIONS" in env:
                partitions = int(env["UTS_TOPIC_PARTITIONS"]["value"])
            admin = env.get("UTS_ADMIN_ADDR", {}).get("value", "")
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            if not admin.endswith(f":{ports.get('admin')}"):
                findings.append(f"{name}: {deployment_name}: the admin port {ports.get('admin')} is not where it listens ({admin})")
            for probe in ("livenessProbe", "readinessProbe"):
                if container.get(probe, {}).get("httpGet", {}).get("port") != "admin":
                    findings.append(f"{name}: {deployment_name}: {probe} is not on the admin port")
            if not container.get("resources", {}).get("requests", {}).get("memory"):
                findings.append(f"{name}: {deployment_name}: no memory request")
    budgets = {
        tuple(sorted(p["spec"]["selector"]["matchLabels"].items())) for p in by_kind.get("PodDisruptionBudget", [])
    }
    for deployment_name, labels in pod_labels.items():
        if tuple(sorted(labels.items())) not in budgets:
            findings.append(f"{name}: {deployment_name} has no PodDisruptionBudget")
    for service in by_kind.get("Service", []):
        selector = service["spec"]["selector"]
        targets = [d for d, labels in pod_labels.items() if all(labels.get(k) == v for k, v in selector.items())]
        if len(targets) != 1:
            findings.append(f"{name}: Service {service['metadata']['name']} selects {len(targets)} Deployments")
            continue
        exposed = {
            p["containerPort"]
            for c in deployments[targets[0]]["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            if port["targetPort"] not in exposed:
                findings.append(f"{name}: Service {service['metadata']['name']} targets port {port['targetPort']}, not exposed")
    for scaled in by_kind.get("ScaledObject", []):
        spec = scaled["spec"]
        if spec["scaleTargetRef"]["name"] not in deployments:
            findings.append(f"{name}: ScaledObject {scaled['metadata']['name']} scales no Deployment")
        if partitions is not None and spec["maxReplicaCount"] != partitions:
            findings.append(f"{name}: ScaledObject {scaled['metadata']['name']} may exceed the {partitions} partitions")
        for trigger in spec["triggers"]:
            if trigger["type"] != "kafka" or not trigger["metadata"].get("consumerGroup"):
                findings.append(f"{name}: ScaledObject {scaled['metadata']['name']}: not a Kafka lag trigger")
    jobs = by_kind.get("Job", [])
    if not any("pre-install" in j["metadata"].get("annotations", {}).get("helm.sh/hook", "") for j in jobs):
        findings.append(f"{name}: no pre-install hook Job (migrations, topics)")
    for secret in by_kind.get("Secret", []):
        weight = int(secret["metadata"].get("annotations", {}).get("helm.sh/hook-weight", "0"))
        if weight >= 0:
            findings.append(f"{name}: Secret {secret['metadata']['name']} is not created before the setup hook")


def validate(documents, name, findings):
    builtin = [d for d in documents if not d["apiVersion"].startswith("keda.sh/")]
    text = yaml.safe_dump_all(builtin)
    result = subprocess.run(
        ["kubernetes-validate", "--kubernetes-version", KUBERNETES_VERSION, "--strict", "-"],
        input=text,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        for line in (result.stdout + result.stderr).splitlines():
            if line.strip() and "PASSED" not in line:
                findings.append(f"{name}: {line.strip()}")


def main():
    helm, binary_dir = sys.argv[1], pathlib.Path(sys.argv[2])
    findings = []
    check_refusals(helm, findings)
    rendered = 0
    for values in VALUES:
        result = render(helm, values)
        if result.returncode != 0:
            findings.append(f"{values.name}: helm template failed: {result.stderr.strip()}")
            continue
        documents = [d for d in yaml.safe_load_all(result.stdout) if d]
        rendered += len(documents)
        validate(documents, values.name, findings)
        check_documents(values.name, documents, binary_dir, findings)
    for finding in findings:
        print(finding)
    if findings:
        sys.exit(1)
    print(f"deploy/helm/uts: {len(VALUES)} value sets, {rendered} documents valid for Kubernetes {KUBERNETES_VERSION} and consistent with the workspace")


if __name__ == "__main__":
    main()
