"""The Dockerfile, checked statically (no container engine on the build machines)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

from jwtkeymap.operator.sidecar.defaults import InjectionDefaults

ROOT = Path(__file__).resolve().parents[3]
COMPILERS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cargo|rustc)\b")


@dataclasses.dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and the stages, with continuation lines joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            stages.append(Stage(name, base))
        elif not stages and keyword == "ARG":
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


ARGS, STAGES = parse((ROOT / "Dockerfile").read_text())
FINAL = STAGES[-1]


def test_multi_stage_on_a_slim_python_base() -> None:
    assert len(STAGES) >= 2
    for stage in STAGES:
        assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?(@sha256:[0-9a-f]{64})?", stage.base), (
            stage.base
        )
    assert FINAL.all("COPY") == ["--from=build /opt/jwtkeymap /opt/jwtkeymap"]


def test_no_compilers_in_the_final_stage() -> None:
    runs = " ".join(FINAL.all("RUN"))
    assert not COMPILERS.search(runs)
    # One package, the resolver's nginx engine, without its recommends or apt's lists.
    installs = re.findall(r"apt-get install ([^&]*)", runs)
    assert [i.split() for i in installs] == [["-y", "--no-install-recommends", "nginx-light"]]
    assert "rm -rf /var/lib/apt/lists/*" in runs
    # …while the build stage is where they belong.
    assert COMPILERS.search(" ".join(STAGES[0].all("RUN")))


def test_runs_as_the_non_root_user_the_chart_expects() -> None:
    [user] = FINAL.all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0  # numeric, so runAsNonRoot can verify it
    chart = yaml.safe_load((ROOT / "charts" / "jwtkeymap" / "values.yaml").read_text())
    assert chart["operator"]["podSecurityContext"]["runAsUser"] == int(uid)
    assert chart["injection"]["resolver"]["runAsUser"] == int(uid)
    assert chart["injection"]["resolver"]["runAsGroup"] == int(gid)
    assert InjectionDefaults().run_as_user == int(uid)


def test_environment() -> None:
    env = " ".join(FINAL.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env


def test_one_image_two_commands() -> None:
    assert FINAL.all("ENTRYPOINT") == ['["jwtkeymap"]']
    ports = {int(p) for p in " ".join(FINAL.all("EXPOSE")).split()}
    chart = yaml.safe_load((ROOT / "charts" / "jwtkeymap" / "values.yaml").read_text())
    assert {
        chart["webhook"]["port"],
        chart["metrics"]["port"],
        InjectionDefaults().listen_port,
    } <= ports


def test_build_context_is_only_the_package() -> None:
    rules = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert rules[0] == "*"
    assert set(rules[1:4]) == {"!pyproject.toml", "!README.md", "!operator/"}
    copied = {args.split()[0] for args in STAGES[0].all("COPY")} | {
        a for args in STAGES[0].all("COPY") for a in args.split()[:-1]
    }
    assert copied <= {"pyproject.toml", "README.md", "operator"}
