"""The operator documentation names only what exists.

Every `docs/*.md` and the README are read with a few conventions the docs keep (see
``docs/architecture.md``, "How these docs are checked"), and each claim is checked against the
code, not against a list kept by hand:

* ``manage.py <command> [subcommand|subcommand] ... --flag`` (inline code, or a line of a fenced
  block): the command exists and each flag is in its ``--help`` (or its subcommands'); ``make
  <target>``: a Makefile target;
* an inline ``UPPER_CASE`` name (or ``NAME=value``; in fenced blocks ``NAME=``): an environment
  variable that ``messaging_project/config.py`` reads, or a Django setting;
* ``stream_*``, ``idempotency_*`` and ``process_*`` names: a metric in a real scrape of the API's
  ``/metrics`` and of the workers' endpoint (``manage.py runworkers``), unless it is a broker option;
* an inline ``CamelCase`` name: an alert of ``monitoring/prometheus/alerts.yml`` or a name in the
  project's code (``brokers``, ``delivery``, ``messaging_project``, ``benchmarks``);
* an inline dotted name under one of those packages (``delivery.services.ingest.message_ingest``):
  importable;
* an inline path (with a slash, or a file name with a known extension): a file or directory of
  the repository; a relative Markdown link: its file, and its ``#anchor`` among that file's headings.

``docs/decisions/`` are records of what was decided when, not descriptions of the present, and
are not checked.
"""

from __future__ import annotations

import argparse
import http.client
import importlib
import inspect
import re
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from django.conf import settings
from django.core.management import get_commands, load_command_class
from django.test import Client

from brokers import RedisStreamsBroker
from tests.conftest import free_port, project_subprocess, wait_for
from tests.promql import alert_rules

REPO = Path(__file__).resolve().parents[1]
#: The project's own settings in the ``manage.py`` subprocesses (not the test suite's).
PROJECT_ENV = {"DJANGO_SETTINGS_MODULE": "messaging_project.settings"}
DOCS = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]
PACKAGES = ("brokers", "delivery", "messaging_project", "benchmarks")

#: Environment variables read by libraries, not by the configuration: each must appear in
#: the project's code (where the project sets or passes it).
LIBRARY_VARIABLES = frozenset({"PROMETHEUS_MULTIPROC_DIR", "DJANGO_SETTINGS_MODULE"})

_FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
_SETTING = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")
_SETTING_SPAN = re.compile(rf"({_SETTING.pattern})(?:=\S*)?")
_SETTING_ASSIGNED = re.compile(rf"(?<![\w$.])({_SETTING.pattern})=")
_METRIC = re.compile(r"(?<![\w.])((?:stream|idempotency|process)_[a-z0-9_]+)")
_CAMEL = re.compile(r"[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+")
_DOTTED = re.compile(rf"(?:{'|'.join(PACKAGES)})(?:\.[A-Za-z_]\w*)+")
_PATH = re.compile(r"[\w.-]+(?:/[\w.-]+)*/?")
_PATH_SUFFIXES = (".py", ".md", ".yml", ".yaml", ".json", ".lua", ".toml", ".txt")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Doc:
    """One Markdown file: its prose (fenced blocks blanked out) and its fenced blocks."""

    path: Path
    prose: str
    blocks: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        return str(self.path.relative_to(REPO))

    def spans(self) -> Iterator[str]:
        """The inline code spans of the prose (whitespace, line breaks included, folded)."""
        for match in _INLINE.finditer(self.prose):
            yield " ".join(match.group(1).split())

    def block_lines(self) -> Iterator[str]:
        """The lines of every fenced block but Mermaid diagrams, without shell comments."""
        for lang, body in self.blocks:
            if lang == "mermaid":
                continue
            for line in body.splitlines():
                yield re.sub(r"\s#\s.*$", "", line)


@cache
def docs() -> tuple[Doc, ...]:
    loaded = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        blocks = tuple((m.group(1), m.group(2)) for m in _FENCE.finditer(text))
        loaded.append(Doc(path, _FENCE.sub("", text), blocks))
    return tuple(loaded)


def _report(problems: dict[str, set[str]]) -> str:
    return "\n".join(f"{doc}: {sorted(found)}" for doc, found in sorted(problems.items()) if found)


# ----------------------------------------------------------------------------- extraction


def command_claims(text: str) -> list[tuple[list[str], list[str]]]:
    """``manage.py`` invocations in ``text``: (command words, flags) for each."""
    claims = []
    for match in re.finditer(r"manage\.py\s+([^\n`]*)", text):
        words = re.split(r"[\s\[\]]+", match.group(1).strip())
        command = words[0] if words else ""
        if not re.fullmatch(r"[a-z_]+", command):
            continue
        subcommands = [
            s for s in (words[1].split("|") if len(words) > 1 else []) if re.fullmatch(r"[a-z]+", s)
        ]
        claims.append(([command, *subcommands], _FLAG.findall(match.group(1))))
    return claims


def make_targets(doc: Doc) -> set[str]:
    targets = {m.group(1) for span in doc.spans() for m in re.finditer(r"^make ([a-z-]+)", span)}
    for line in doc.block_lines():
        targets |= set(re.findall(r"^\s*make ([a-z-]+)", line))
    return targets


def setting_claims(doc: Doc) -> set[str]:
    found = set()
    for span in doc.spans():
        match = _SETTING_SPAN.fullmatch(span)
        if match:
            found.add(match.group(1))
    lines = list(doc.block_lines())
    for line in lines:
        found |= set(_SETTING_ASSIGNED.findall(line))
    # A name the blocks also read back (``$NAME``) is the walkthrough's own shell variable.
    shell_variables = {name for line in lines for name in re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", line)}
    return found - {name for name in shell_variables if f"{name}=$(" in "\n".join(lines)}


def metric_claims(doc: Doc) -> set[str]:
    found = set()
    for span in doc.spans():
        found |= set(_METRIC.findall(span))
    for line in doc.block_lines():
        found |= set(_METRIC.findall(line))
    return found


def path_claims(doc: Doc) -> set[str]:
    found = set()
    for span in doc.spans():
        if not _PATH.fullmatch(span) or re.match(r"\d+/", span) or span.startswith("var/"):
            continue
        if "/" in span or span.endswith(_PATH_SUFFIXES):
            found.add(span)
    return found


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = defaultdict(int)
    found = set()
    for heading in _HEADING.findall(text):
        slug = _slug(heading)
        found.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return found


# ----------------------------------------------------------------------------- the code's side


def command_help(words: tuple[str, ...]) -> str | None:
    """What ``manage.py <words> --help`` prints, from a real ``manage.py`` process; None when it fails."""
    process = project_subprocess(
        [sys.executable, "manage.py", *words, "--help"],
        env=PROJECT_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = process.communicate(timeout=60)
    return out.decode() if process.returncode == 0 else None


def command_helps() -> dict[tuple[str, ...], str]:
    """The ``--help`` text of every management command and subcommand, from the parsers that
    ``manage.py <command> [subcommand] --help`` prints (built in this process: one ``manage.py``
    start per command would cost seconds on a loaded machine)."""
    helps: dict[tuple[str, ...], str] = {}
    for name, app in get_commands().items():
        parser = load_command_class(app, name).create_parser("manage.py", name)
        helps[(name,)] = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    helps[(name, sub)] = subparser.format_help()
    return helps


@cache
def configuration_variables() -> frozenset[str]:
    """Every environment variable ``messaging_project/config.py`` reads."""
    source = (REPO / "messaging_project" / "config.py").read_text(encoding="utf-8")
    return frozenset(re.findall(r'"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)"', source))


@cache
def code_identifiers() -> frozenset[str]:
    words: set[str] = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            words |= set(re.findall(r"[A-Za-z_]\w*", path.read_text(encoding="utf-8")))
    return frozenset(words)


@cache
def broker_words() -> frozenset[str]:
    """Broker parameters and message options: names that look like metrics but are not."""
    words = set(inspect.signature(RedisStreamsBroker.__init__).parameters)
    for path in (REPO / "brokers").glob("*.py"):
        words |= set(re.findall(r'options(?:\.get\(|\[)"(\w+)"', path.read_text(encoding="utf-8")))
    return frozenset(words)


def exposed_names(text: str) -> set[str]:
    """Metric names in a Prometheus text exposition (histograms also by their base name)."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def worker_scrape() -> str:
    """The workers' endpoint as ``manage.py runworkers`` serves it. The database given does not
    answer, so the supervisor serves its metrics and waits, starting no worker process."""
    port = free_port()
    env = {
        **PROJECT_ENV,
        "METRICS_PORT": str(port),
        "ENABLE_PROMETHEUS_METRICS": "true",
        "DATABASE_URL": "postgres://postgres@127.0.0.1:1/nowhere",
    }
    process = project_subprocess(
        [sys.executable, "manage.py", "runworkers", "--processes", "1", "--threads", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def scrape() -> str | None:
            assert process.poll() is None, f"runworkers exited with {process.returncode}"
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connection.request("GET", "/metrics")
                response = connection.getresponse()
                return response.read().decode() if response.status == 200 else None
            except OSError:
                return None

        text: str = wait_for(scrape, timeout=30, interval=0.1, what="the workers' metrics endpoint")
        return text
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ----------------------------------------------------------------------------- the extraction itself


def test_extraction_follows_the_conventions() -> None:
    doc = Doc(
        REPO / "x.md",
        "Run `python manage.py deadletters list|show --reason R\n--limit 5` or `--verbose`;\n"
        "set `STREAM_PARTITIONS=32`, not `XADD`; watch `rate(stream_enqueue_total[5m])` and\n"
        "`idempotency_key`; see `brokers/keys.py`, `partition.py`, `50/s`, `var/redis`, `/metrics`.",
        (("bash", "export REDIS_URL=redis://x # a comment\nmake test\n"),),
    )
    assert [claim for span in doc.spans() for claim in command_claims(span)] == [
        (["deadletters", "list", "show"], ["--reason", "--limit"])
    ]
    assert make_targets(doc) == {"test"}
    assert setting_claims(doc) == {"STREAM_PARTITIONS", "REDIS_URL"}
    assert metric_claims(doc) == {"stream_enqueue_total", "idempotency_key"}
    assert path_claims(doc) == {"brokers/keys.py", "partition.py"}
    assert _slug("Per-key blocking: `stream_partition_blocked_keys` (G3)") == (
        "per-key-blocking-stream_partition_blocked_keys-g3"
    )


# ----------------------------------------------------------------------------- the checks


def test_every_documented_command_and_flag_exists() -> None:
    claims: list[tuple[str, list[str], list[str]]] = []
    for doc in docs():
        for text in [*doc.spans(), *doc.block_lines()]:
            claims += [(doc.name, words, flags) for words, flags in command_claims(text)]
    assert claims, "no manage.py command found in the docs"
    helps = command_helps()
    problems: dict[str, set[str]] = defaultdict(set)
    for doc_name, words, flags in claims:
        command, mentioned = words[0], words[1:]
        if (command,) not in helps:
            problems[doc_name].add(f"manage.py {command}")
            continue
        subcommands = [words[1] for words in helps if len(words) == 2 and words[0] == command]
        scope = [s for s in mentioned if s in subcommands] or subcommands
        known = set(_FLAG.findall(helps[(command,)]))
        for sub in scope:
            known |= set(_FLAG.findall(helps[(command, sub)]))
        problems[doc_name] |= {f"manage.py {command} {flag}" for flag in flags if flag not in known}
    assert not any(problems.values()), f"commands or flags that do not exist:\n{_report(problems)}"


def test_every_documented_make_target_exists() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z-]+):", makefile, flags=re.MULTILINE))
    problems = {doc.name: make_targets(doc) - targets for doc in docs()}
    assert not any(problems.values()), f"make targets that do not exist:\n{_report(problems)}"


def test_every_documented_setting_is_read_by_the_configuration() -> None:
    known = configuration_variables()
    identifiers = code_identifiers()
    problems: dict[str, set[str]] = {}
    for doc in docs():
        problems[doc.name] = {
            name
            for name in setting_claims(doc)
            if name not in known
            and not hasattr(settings, name)
            and name not in settings.DATABASES["default"]
            and not (name in LIBRARY_VARIABLES and name in identifiers)
        }
    assert not any(problems.values()), f"settings the configuration does not read:\n{_report(problems)}"


def test_every_documented_metric_is_exported() -> None:
    api = Client(REMOTE_ADDR="127.0.0.1").get("/metrics")
    assert api.status_code == 200
    exposed = exposed_names(api.content.decode()) | exposed_names(worker_scrape())
    assert {"stream_enqueue_total", "stream_worker_restarts_total", "stream_partition_lag"} <= exposed
    options = broker_words()
    problems = {
        doc.name: {m for m in metric_claims(doc) if m not in exposed and m not in options} for doc in docs()
    }
    assert not any(problems.values()), f"metrics that no endpoint exports:\n{_report(problems)}"


def test_every_documented_camel_case_name_is_an_alert_or_in_the_code() -> None:
    alerts = {rule["alert"] for rule in alert_rules()}
    identifiers = code_identifiers()
    problems = {
        doc.name: {s for s in doc.spans() if _CAMEL.fullmatch(s) and s not in alerts and s not in identifiers}
        for doc in docs()
    }
    assert not any(problems.values()), f"alerts or names that do not exist:\n{_report(problems)}"


def test_every_documented_python_name_imports() -> None:
    def resolves(dotted: str) -> bool:
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                target: object = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attribute in parts[cut:]:
                    target = getattr(target, attribute)
            except AttributeError:
                return False
            return True
        return False

    def named(dotted: str) -> bool:
        """A logger's name, say."""
        return any(
            f'"{dotted}"' in path.read_text(encoding="utf-8")
            for package in PACKAGES
            for path in (REPO / package).rglob("*.py")
        )

    problems = {
        doc.name: {s for s in doc.spans() if _DOTTED.fullmatch(s) and not resolves(s) and not named(s)}
        for doc in docs()
    }
    assert not any(problems.values()), f"Python names that do not resolve:\n{_report(problems)}"


def test_every_documented_path_exists() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    entries = set(tracked) | {
        str(parent) for f in tracked for parent in Path(f).parents if str(parent) != "."
    }

    def exists(path: str) -> bool:
        """In the repository, from its root or (as docs/broker.md names brokers/ files) below a folder."""
        path = path.rstrip("/")
        return path in entries or any(entry.endswith("/" + path) for entry in entries)

    problems = {doc.name: {p for p in path_claims(doc) if not exists(p)} for doc in docs()}
    assert not any(problems.values()), f"paths that are not in the repository:\n{_report(problems)}"


def test_every_relative_link_and_anchor_exists() -> None:
    problems: dict[str, set[str]] = defaultdict(set)
    for doc in docs():
        for target in _LINK.findall(doc.prose):
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            path = (doc.path.parent / file_part).resolve() if file_part else doc.path
            missing_anchor = anchor and path.suffix == ".md" and path.exists() and anchor not in anchors(path)
            if not path.exists() or missing_anchor:
                problems[doc.name].add(target)
    assert not any(problems.values()), f"links to nothing:\n{_report(problems)}"


def test_the_architecture_has_a_mermaid_diagram_of_the_flow() -> None:
    doc = next(d for d in docs() if d.path.name == "architecture.md")
    diagrams = [body for lang, body in doc.blocks if lang == "mermaid"]
    assert diagrams and diagrams[0].lstrip().startswith(("flowchart", "graph", "sequenceDiagram"))
    for step in ("ingress", "enqueue", "partition", "persist", "receipt"):
        assert step in diagrams[0].lower(), step


def test_help_built_in_process_is_what_manage_py_prints() -> None:
    """The flags checked above are those of a real ``manage.py ... --help``, and an unknown
    command is refused there."""
    helps = command_helps()
    for words in [("runworkers",), ("deadletters", "requeue")]:
        printed = command_help(words)
        assert printed is not None
        assert set(_FLAG.findall(printed)) == set(_FLAG.findall(helps[words])), words
    assert command_help(("no_such_command",)) is None
    assert ("no_such_command",) not in helps
