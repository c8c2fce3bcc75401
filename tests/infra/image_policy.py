"""Policy for the Dockerfiles of infra/image, read with dockerfile-parse (Docker's own syntax rules:
line continuations, stages, instruction arguments).

Each check returns its violations ([] when none): non-root final user, every base image pinned to
an exact version tag or a digest (never latest), every pip install pinned or constrained, no
secret-looking ENV/ARG, and only the expected ports exposed.
"""

from __future__ import annotations

import io
import re
import shlex
from typing import Any

from dockerfile_parse import DockerfileParser

SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|PRIVATE|(ACCESS|API|AUTH)_?KEY", re.I)
EXACT_TAG = re.compile(r"\d+\.\d+\.\d+")  # a tag that names a full version (13.0.0-devel-ubuntu24.04)
# pip options that take a value, so the value is not read as a requirement.
PIP_VALUE_OPTIONS = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url",
                     "-w", "--wheel-dir", "-f", "--find-links", "-t", "--target", "--prefix", "--root"}


def parse(text: str) -> list[dict[str, Any]]:
    """The Dockerfile's instructions: dicts with `instruction`, `value`, `startline`."""
    return DockerfileParser(fileobj=io.BytesIO(text.encode())).structure


def check_user(instructions: list[dict[str, Any]]) -> list[str]:
    """The final stage ends as a non-root user, given by number (Kubernetes can verify runAsNonRoot)."""
    last_from = max(i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM")
    users = [ins["value"].strip() for ins in instructions[last_from:] if ins["instruction"] == "USER"]
    if not users:
        return ["the final stage sets no USER: it runs as root"]
    user = users[-1].split(":")[0]
    if user in ("root", "0"):
        return [f"USER {users[-1]}: root"]
    if not user.isdigit():
        return [f"USER {users[-1]}: not numeric, so runAsNonRoot cannot be verified"]
    return []


def check_base_images(instructions: list[dict[str, Any]]) -> list[str]:
    """Every FROM names an exact version tag or a sha256 digest; a stage may build on an earlier one."""
    problems, stages = [], set()
    for ins in instructions:
        if ins["instruction"] != "FROM":
            continue
        words = ins["value"].split()
        image = next(w for w in words if not w.startswith("--"))
        if len(words) >= 3 and words[-2].lower() == "as":
            stages.add(words[-1])
        if image in stages:
            continue
        name, _, digest = image.partition("@")
        last = name.rsplit("/", 1)[-1]
        tag = last.partition(":")[2]
        if "$" in image:
            problems.append(f"FROM {image}: an ARG-built reference cannot be checked")
        elif digest:
            if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
                problems.append(f"FROM {image}: malformed digest")
        elif not tag or tag == "latest":
            problems.append(f"FROM {image}: no version tag (latest)")
        elif not EXACT_TAG.search(tag):
            problems.append(f"FROM {image}: tag {tag!r} is not an exact version (x.y.z)")
    return problems


def _commands(run: str) -> list[list[str]]:
    """The simple commands of a RUN line (split on &&, ||, ;), each as words."""
    words = shlex.split(run.replace("\\\n", " "), comments=True, posix=True)  # `# ...` is the shell's comment
    commands, current = [], []
    for word in words:
        if word in ("&&", "||", ";"):
            commands.append(current)
            current = []
        else:
            current.append(word)
    return [c for c in commands + [current] if c]


def check_pip_pins(instructions: list[dict[str, Any]]) -> list[str]:
    """Every `pip install`/`pip wheel` requirement is `name==version`, or local (a path, a wheel,
    `.[extra]`) and installed under a constraints file (-c)."""
    problems = []
    for ins in instructions:
        if ins["instruction"] != "RUN":
            continue
        for words in _commands(ins["value"]):
            try:
                at = next(i for i, w in enumerate(words) if w in ("install", "wheel"))
            except StopIteration:
                continue
            if not any(w.endswith("pip") or w == "pip3" for w in words[:at]):
                continue
            args, skip, constrained = words[at + 1:], False, False
            requirements = []
            for word in args:
                if skip:
                    skip = False
                    continue
                if word in PIP_VALUE_OPTIONS:
                    skip = True
                    constrained |= word in ("-c", "--constraint")
                elif not word.startswith("-"):
                    requirements.append(word)
            for requirement in requirements:
                local = requirement.startswith((".", "/")) or requirement.endswith(".whl")
                if local and not constrained:
                    problems.append(f"line {ins['startline'] + 1}: pip {words[at]} {requirement} without -c constraints")
                elif not local and not re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+==[A-Za-z0-9_.+!]+", requirement):
                    problems.append(f"line {ins['startline'] + 1}: pip {words[at]} {requirement}: not pinned (==)")
    return problems


def _assignments(value: str) -> list[tuple[str, str]]:
    """KEY=VALUE pairs of an ENV or ARG instruction (also the legacy `ENV KEY VALUE`)."""
    words = shlex.split(value.replace("\\\n", " "))
    if words and "=" not in words[0]:
        return [(words[0], " ".join(words[1:]))]
    return [tuple(w.split("=", 1)) if "=" in w else (w, "") for w in words]  # type: ignore[misc]


def check_no_secrets(instructions: list[dict[str, Any]]) -> list[str]:
    """No ENV or ARG that carries a credential: build args and env are visible in the image's history."""
    problems = []
    for ins in instructions:
        if ins["instruction"] not in ("ENV", "ARG"):
            continue
        for key, value in _assignments(ins["value"]):
            if SECRET_NAME.search(key) or re.search(r"://[^/\s:@]+:[^/\s@]+@|\bAKIA[0-9A-Z]{16}\b", value):
                problems.append(f"line {ins['startline'] + 1}: {ins['instruction']} {key} looks like a secret")
    return problems


def check_ports(instructions: list[dict[str, Any]], expected: set[int]) -> list[str]:
    """The image exposes exactly the expected ports."""
    exposed = {int(p.split("/")[0]) for ins in instructions if ins["instruction"] == "EXPOSE"
               for p in ins["value"].split()}
    return [] if exposed == expected else [f"EXPOSE {sorted(exposed)}, expected {sorted(expected)}"]


def check_all(text: str, expected_ports: set[int]) -> dict[str, list[str]]:
    """Every check's violations for one Dockerfile, by check name."""
    instructions = parse(text)
    return {
        "user": check_user(instructions),
        "base_images": check_base_images(instructions),
        "pip_pins": check_pip_pins(instructions),
        "secrets": check_no_secrets(instructions),
        "ports": check_ports(instructions, expected_ports),
    }
