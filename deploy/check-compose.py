#!/usr/bin/env python3
"""Checks docker-compose.yml against the workspace, since no Docker engine runs it here.

For every service on the project's image: its binary is a workspace binary that the Dockerfile
copies into the image; every environment variable it gets and every flag of its command is one
the binary's --help knows; every listen address in its environment is a published container port
and every published port is listened on; its host ports are the local runner's for that stage
(deploy/local/services.sh). Across services: one of them builds the image, host ports are
unique, and every dependency names a service.

    deploy/check-compose.py [BINARY_DIR]   (default: target/debug; the binaries must be built)

Exits non-zero with one line per finding.
"""

import pathlib
import re
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
IMAGE = "uts:local"
# Read by the binaries without being clap settings (tracing's filter).
NOT_CLAP = {"RUST_LOG"}


def workspace_binaries():
    """Package names with a src/main.rs, plus [[bin]] names."""
    names = set()
    for manifest in ROOT.glob("*/Cargo.toml"):
        text = manifest.read_text()
        package = re.search(r'^\[package\]\s*\nname = "([^"]+)"', text, re.M)
        if package and (manifest.parent / "src/main.rs").exists():
            names.add(package.group(1))
        names.update(re.findall(r'\[\[bin\]\]\s*\nname = "([^"]+)"', text))
    return names


def image_binaries():
    """The binaries the Dockerfile copies out of target/release."""
    return set(re.findall(r"target/release/([A-Za-z0-9_-]+)", (ROOT / "Dockerfile").read_text()))


def help_of(binary_dir, command):
    """(environment variables, flags) that `binary --help` documents (for utsctl, the help of
    its subcommand)."""
    args = [str(binary_dir / command[0])] + command[1:2] * (command[0] == "utsctl") + ["--help"]
    text = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"env: ([A-Z0-9_]+)", text)), set(re.findall(r"(--[a-z0-9-]+)", text))


def local_runner_ports():
    """Stage → the set of 127.0.0.1 ports deploy/local/services.sh gives it."""
    text = (ROOT / "deploy/local/services.sh").read_text()
    defaults = dict(re.findall(r'^(UTS_[A-Z_]+)="\$\{\1:-(\d+)\}"', text, re.M))
    text = re.sub(r"\$(UTS_[A-Z_]+)", lambda m: defaults.get(m.group(1), m.group(0)), text)
    text = text.replace("\\\n", " ")
    ports = {}
    for line in text.splitlines():
        match = re.match(r"\s*start_stage ([a-z-]+)(.*)", line)
        if match:
            ports[match.group(1)] = {int(p) for p in re.findall(r"--[a-z-]*addr[ =]\S*127\.0\.0\.1:(\d+)", match.group(2))}
    return ports


def main():
    binary_dir = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target/debug"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    binaries, in_image, runner = workspace_binaries(), image_binaries(), local_runner_ports()
    findings, host_ports, builders = [], {}, []

    for name, service in services.items():
        for dependency in service.get("depends_on") or {}:
            if dependency not in services:
                findings.append(f"{name}: depends on {dependency}, which is no service")
        published = {}
        for mapping in service.get("ports") or []:
            host_ip, host, container = str(mapping).split(":")
            if host_ip != "127.0.0.1":
                findings.append(f"{name}: port {mapping} is not bound to 127.0.0.1")
            if int(host) in host_ports:
                findings.append(f"{name}: host port {host} is {host_ports[int(host)]}'s too")
            host_ports[int(host)] = name
            published[int(container)] = int(host)
        if service.get("image") != IMAGE:
            continue
        if "build" in service:
            builders.append(name)
        command = service.get("command") or []
        binary = command[0] if command else None
        if binary not in binaries:
            findings.append(f"{name}: runs {binary!r}, which is no binary of the workspace")
            continue
        if binary not in in_image:
            findings.append(f"{name}: runs {binary}, which the Dockerfile does not copy into the image")
        envs, flags = help_of(binary_dir, command)
        environment = service.get("environment") or {}
        for variable in environment:
            if variable not in envs and variable not in NOT_CLAP:
                findings.append(f"{name}: {variable} is not a setting of {binary} (see {binary} --help)")
        for argument in command[1 + (binary == "utsctl"):]:
            if argument.startswith("--") and argument.split("=")[0] not in flags:
                findings.append(f"{name}: {argument} is not a flag of {binary}")
        listened = set()
        for variable, value in environment.items():
            match = re.fullmatch(r"0\.0\.0\.0:(\d+)", str(value))
            if match and variable.endswith("_ADDR"):
                port = int(match.group(1))
                listened.add(port)
                if port not in published:
                    findings.append(f"{name}: listens on {port} ({variable}) but does not publish it")
        for port in published:
            if port not in listened:
                findings.append(f"{name}: publishes {port}, which nothing in it listens on")
        if binary != "utsctl" and name in runner and set(published.values()) != runner[name]:
            findings.append(
                f"{name}: host ports {sorted(published.values())}, the local runner's are {sorted(runner[name])}"
            )
        elif binary != "utsctl" and name not in runner:
            findings.append(f"{name}: the local runner does not start it")
    for stage in runner:
        if stage not in services:
            findings.append(f"the local runner starts {stage}, docker-compose.yml does not")
    if len(builders) != 1:
        findings.append(f"exactly one service should build {IMAGE}, not {builders}")

    for finding in findings:
        print(f"docker-compose.yml: {finding}")
    if not findings:
        print(f"docker-compose.yml: {len(services)} services consistent with the workspace and the local runner")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
