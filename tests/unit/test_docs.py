"""The documentation is checked against the repository it describes.

For README.md, SECURITY.md, infra/README.md and docs/*.md:
- every relative link resolves: the file exists, and a `#anchor` is the slug (GitHub's rules) of a
  heading of the target;
- every `make <target>` in code (fenced shell blocks and inline code) is a target of the Makefile;
- every command line of the project's own CLIs in code (`imgcls ...`, `python -m modelserver <sub> ...`,
  `python -m bench.run ...`, `python -m gateway.keys`, a script such as `deploy/rotation.py out`, and the
  flags `make bench` passes on in `BENCH_ARGS`) names a CLI that exists, a subcommand its parser has and
  only flags the subcommand's real `--help` lists (run in a subprocess); a module without an argument
  parser takes no flags;
- every repository path named in code (`gateway/drain.py`, `deploy/rollout-instance.sh`) exists;
- every pointer from code, tests and config into the docs (`docs/model.md, "The handler"`) names a
  heading of that doc.
A failure names the document, the line and what is missing.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelserver.paths import REPO_ROOT

REPO = REPO_ROOT
DOCS = [REPO / "README.md", REPO / "SECURITY.md", REPO / "infra" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_FENCES = {"", "sh", "bash", "shell", "console"}
# Top-level folders whose paths, named in code, must exist (unless git ignores them: generated or the user's).
TRACKED_TOP = {"gateway", "handlers", "modelserver", "client", "bench", "tests", "deploy", "docker", "infra", ".ci"}
PACKAGES = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()} - {"tests"}
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]  # imgcls = "client.cli:main"


@dataclass(frozen=True)
class Snippet:
    """A piece of code in a document: one logical line of a fenced shell block, or one inline code span."""

    line: int
    text: str


@dataclass(frozen=True)
class Doc:
    path: Path
    headings: list[str]
    links: list[tuple[int, str]]  # (line, target) of [text](target) outside code
    code: list[Snippet]

    @property
    def name(self) -> str:
        return str(self.path.relative_to(REPO)) if self.path.is_relative_to(REPO) else self.path.name


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(headings: list[str]) -> set[str]:
    """Slugs of all headings; a repeated slug gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for heading in headings:
        slug = github_slug(heading)
        found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return found


def parse(path: Path, text: str | None = None) -> Doc:
    text = path.read_text() if text is None else text
    headings: list[str] = []
    links: list[tuple[int, str]] = []
    code: list[Snippet] = []
    fence: str | None = None  # the info string of the open fenced block
    pending, pending_line = "", 0  # a shell line continued with a backslash, and where it began
    prose: list[tuple[int, str]] = []

    def flush_prose() -> None:
        # Inline code spans may wrap a line, so they are found in the whole paragraph.
        if not prose:
            return
        start, block = prose[0][0], "\n".join(line for _, line in prose)
        for match in re.finditer(r"`([^`]+)`", block):
            code.append(Snippet(start + block.count("\n", 0, match.start()), " ".join(match.group(1).split())))
        unquoted = re.sub(r"`[^`]+`", "", block)
        for match in re.finditer(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", unquoted):
            links.append((start + unquoted.count("\n", 0, match.start()), match.group(1)))
        prose.clear()

    for number, line in enumerate(text.splitlines(), start=1):
        opening = re.match(r"^\s*(```|~~~)\s*([\w+-]*)", line)
        if fence is None and opening:
            flush_prose()
            fence = opening.group(2).lower()
            continue
        if fence is not None:
            if re.match(r"^\s*(```|~~~)\s*$", line):
                fence = None
            elif fence in SHELL_FENCES:
                stripped = re.sub(r"(^|\s)#.*$", "", line).rstrip()
                pending_line = pending_line if pending else number
                if stripped.endswith("\\"):
                    pending += stripped[:-1] + " "
                    continue
                if pending + stripped:
                    code.append(Snippet(pending_line, pending + stripped))
                pending = ""
            continue
        heading = re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line)
        if heading:
            flush_prose()
            headings.append(heading.group(1))
            continue
        if not line.strip():
            flush_prose()
            continue
        prose.append((number, line))
    flush_prose()
    return Doc(path, headings, links, code)


def segments(snippet: str) -> Iterator[list[str]]:
    """The simple commands of a shell snippet, as words (quotes dropped)."""
    for part in re.split(r"\|\||&&|\$\(|[;|()]", snippet):
        words = [word.strip("\"'[]") for word in part.split()]
        if words := [w for w in words if w and w != "..."]:
            yield words


# --- links ----------------------------------------------------------------------------------------------


def link_problems(doc: Doc) -> list[str]:
    problems = []
    for line, target in doc.links:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (doc.path.parent / file_part).resolve()
        where = f"{doc.name}:{line}: link ({target})"
        if file_part and not resolved.exists():
            problems.append(f"{where}: no file {file_part}")
            continue
        if anchor and (not file_part or resolved.suffix == ".md"):
            target_anchors = anchors(parse(resolved).headings if file_part else doc.headings)
            if anchor not in target_anchors:
                known = ", ".join(sorted(target_anchors))
                problems.append(f"{where}: no heading with anchor #{anchor} in {file_part or doc.name} ({known})")
    return problems


# --- make targets ---------------------------------------------------------------------------------------


@functools.cache
def makefile_targets() -> frozenset[str]:
    targets: set[str] = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        rule = re.match(r"^([A-Za-z0-9_.-]+(?:\s+[A-Za-z0-9_.-]+)*)\s*:(?!=)", line)
        if rule:
            targets.update(rule.group(1).split())
    return frozenset(targets)


def make_problems(doc: Doc) -> list[str]:
    problems = []
    for snippet in doc.code:
        for words in segments(snippet.text):
            if words[0] != "make":
                continue
            for word in words[1:]:
                if "=" in word or word.startswith("-"):
                    continue
                if word not in makefile_targets():
                    problems.append(f"{doc.name}:{snippet.line}: `make {word}`: no target {word!r} in the Makefile")
    return problems


# --- CLIs -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cli:
    name: str  # as the docs write it
    argv: tuple[str, ...]  # how to run it
    parses: bool  # it has an argparse parser (so --help is safe to run and lists its flags)


def module_source(module: str) -> Path | None:
    base = REPO / module.replace(".", "/")
    for candidate in (base / "__main__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def has_parser(source: Path) -> bool:
    return "ArgumentParser" in source.read_text()


def find_cli(words: list[str]) -> tuple[Cli, list[str]] | str | None:
    """The project CLI a command runs and its arguments; an error message if it names one that is not there;
    None for other programs."""
    first = words[0]
    if first in SCRIPTS:
        module, _, function = SCRIPTS[first].partition(":")
        code = f"import sys; from {module} import {function}; sys.exit({function}())"
        source = module_source(module)
        return Cli(first, (sys.executable, "-c", code), source is not None and has_parser(source)), words[1:]
    if re.fullmatch(r"(\S*/)?python3?(\.\d+)?", first) and len(words) > 2 and words[1] == "-m":
        module = words[2]
        if module.split(".")[0] not in PACKAGES:
            return None  # pytest, http.server, ...
        source = module_source(module)
        if source is None:
            return f"`python -m {module}`: no module {module} in the repository"
        return Cli(f"python -m {module}", (sys.executable, "-m", module), has_parser(source)), words[3:]
    if first == "modelserver" and len(words) > 1:  # the launcher's subcommands written without `python -m`
        return Cli("python -m modelserver", (sys.executable, "-m", "modelserver"), True), words[1:]
    script = next((w for w in words[:2] if w.endswith(".py") and "/" in w), None)
    if script and (first == script and len(words) > 1 or re.fullmatch(r"(\S*/)?python3?(\.\d+)?", first)):
        parts = Path(script).parts  # /opt/image-classification-api/deploy/rotation.py: the repository's tail
        tails = (REPO.joinpath(*parts[i:]) for i in range(len(parts)))
        found = next((tail for tail in tails if tail.is_file()), None)
        if found is None:
            return f"`{script}`: no such script in the repository"
        rest = words[words.index(script) + 1 :]
        return Cli(str(found.relative_to(REPO)), (sys.executable, str(found)), has_parser(found)), rest
    return None


@functools.cache
def help_text(argv: tuple[str, ...]) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([*argv, "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    return done.returncode, done.stdout + done.stderr


def subcommands(help_output: str) -> set[str]:
    """argparse lists its subparsers as `{a,b,c}` first under "positional arguments"."""
    match = re.search(r"^positional arguments:\n\s+\{([^}]+)\}", help_output, flags=re.M)
    return set(match.group(1).split(",")) if match else set()


def flags_of(arguments: list[str]) -> list[str]:
    return [w.split("=")[0] for w in arguments if re.fullmatch(r"--[A-Za-z][\w-]*(=.*)?|-[A-Za-z]", w)]


def check_command(where: str, cli: Cli, arguments: list[str]) -> list[str]:
    flags = flags_of(arguments)
    if not cli.parses:
        return [f"{where}: `{cli.name}` takes no options (no argument parser), the docs pass {flags}"] if flags else []
    status, output = help_text(cli.argv)
    if status != 0:
        return [f"{where}: `{cli.name} --help` exits {status}: {output[-500:]}"]
    command, argv = cli.name, cli.argv
    if choices := subcommands(output):
        if not arguments or arguments[0].startswith("-"):
            return []  # the CLI itself (`imgcls`, `python -m modelserver --help`)
        if arguments[0] not in choices:
            return [f"{where}: `{cli.name} {arguments[0]}`: no such subcommand (it has {sorted(choices)})"]
        command, argv = f"{cli.name} {arguments[0]}", (*cli.argv, arguments[0])
        status, output = help_text(argv)
        if status != 0:
            return [f"{where}: `{command} --help` exits {status}: {output[-500:]}"]
    listed = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", output))
    return [f"{where}: `{command}` has no option {flag} (not in its --help)" for flag in flags if flag not in listed]


def cli_problems(doc: Doc) -> list[str]:
    problems = []
    for snippet in doc.code:
        where = f"{doc.name}:{snippet.line}"
        # `make bench BENCH_ARGS="--seconds 6"`: the Makefile hands BENCH_ARGS to bench.run.
        for value in re.findall(r"BENCH_ARGS=(\"[^\"]*\"|'[^']*'|\S+)", snippet.text):
            bench = Cli("python -m bench.run", (sys.executable, "-m", "bench.run"), True)
            problems += check_command(where, bench, value.strip("\"'").split())
        for words in segments(snippet.text):
            found = find_cli(words)
            if isinstance(found, str):
                problems.append(f"{where}: {found}")
            elif found is not None:
                problems += check_command(where, *found)
    return problems


# --- paths ----------------------------------------------------------------------------------------------


@functools.cache
def git_ignored(path: str) -> bool:
    """Ignored by the repository's .gitignore (check-ignore needs no commit, only the rules)."""
    return subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO, check=False).returncode == 0


def path_problems(doc: Doc) -> list[str]:
    problems = []
    for snippet in doc.code:
        for word in snippet.text.split():
            word = word.strip("\"'(),;:[]")
            if (
                word.split("/")[0] in TRACKED_TOP
                and re.fullmatch(r"[\w/-]+(\.\w+)+|[\w/-]+/", word)  # a file with its extension, or a folder/
                and not (REPO / word).exists()
                and not git_ignored(word)  # made by a build or by the user (infra/terraform.tfvars)
            ):
                problems.append(f"{doc.name}:{snippet.line}: `{word}`: no such file or folder in the repository")
    return problems


# --- pointers from the code into the docs ---------------------------------------------------------------

POINTER = re.compile(r"(docs/[\w-]+\.md|SECURITY\.md|infra/README\.md)(?:,\s*|\s+\(?)([\"'])([A-Z][^\"']{0,80}?)\2")


def pointer_sources() -> list[Path]:
    """The files whose comments and strings point into the docs: code, tests, build and config files."""
    folders = ("gateway", "handlers", "modelserver", "client", "bench", "tests", "deploy", "docker", ".ci", ".github")
    named = [REPO / name for name in ("Makefile", "docker-compose.yml", ".env.example", "pyproject.toml")]
    found = [*named, *REPO.glob("Dockerfile.*"), *REPO.glob("config*.properties")]
    for folder in folders:
        found += [
            p for p in (REPO / folder).rglob("*") if p.suffix in {".py", ".sh", ".yml", ".yaml", ""} and p.is_file()
        ]
    return sorted(p for p in set(found) if p.is_file() and p != Path(__file__).resolve())


def pointer_problems(path: Path, text: str) -> list[str]:
    """`docs/model.md, "The handler"` names a heading of that doc (its beginning is enough)."""
    problems = []
    for match in POINTER.finditer(text):
        doc, section = match.group(1), " ".join(re.sub(r"\n\s*#?", " ", match.group(3)).split())
        target = REPO / doc
        line = text.count("\n", 0, match.start()) + 1
        where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path.name}:{line}"
        if not target.is_file():
            problems.append(f"{where}: points to {doc}, which does not exist")
            continue
        titles = [github_slug(h) for h in parse(target).headings]
        if not any(title.startswith(github_slug(section)) for title in titles):
            problems.append(f'{where}: points to {doc}, "{section}", which is no heading there')
    return problems


def test_pointers_from_the_code_name_real_sections() -> None:
    sources = pointer_sources()
    found = [m for p in sources for m in POINTER.finditer(p.read_text(errors="replace"))]
    assert len(found) > 10, "the pointer search finds the code's pointers into the docs"
    problems = [problem for p in sources for problem in pointer_problems(p, p.read_text(errors="replace"))]
    assert not problems, "\n".join(problems)


# --- the tests ------------------------------------------------------------------------------------------

CHECKS = {"links": link_problems, "make": make_problems, "clis": cli_problems, "paths": path_problems}


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_doc(path: Path, check: str) -> None:
    problems = CHECKS[check](parse(path))
    assert not problems, "\n".join(problems)


def test_the_checks_see_the_docs() -> None:
    """The parsing finds what the docs are known to hold, so an empty parse cannot pass for clean docs."""
    docs = [parse(path) for path in DOCS]
    commands = [words for doc in docs for snippet in doc.code for words in segments(snippet.text)]
    clis = {found[0].name for words in commands if isinstance(found := find_cli(words), tuple)}
    assert {"imgcls", "python -m modelserver", "python -m bench.soak", "python -m gateway.keys"} <= clis, clis
    assert any("BENCH_ARGS=" in snippet.text for doc in docs for snippet in doc.code)
    assert {"run", "test"} <= {words[1] for words in commands if words[0] == "make" and len(words) > 1}
    assert sum(len(doc.links) for doc in docs) > 50
    assert {"test", "run", "bench", "api-key", "images"} <= makefile_targets()
    assert "-m bench.run $(BENCH_ARGS)" in (REPO / "Makefile").read_text()  # BENCH_ARGS goes to bench.run


def test_github_slugs() -> None:
    assert github_slug("CI/CD (GitHub Actions)") == "cicd-github-actions"
    assert github_slug("Batch client: `imgcls`") == "batch-client-imgcls"
    assert github_slug("TorchServe's known vulnerabilities") == "torchserves-known-vulnerabilities"
    assert github_slug("`GATEWAY_DRAIN_S` and [SIGUSR1](x.md)") == "gateway_drain_s-and-sigusr1"
    assert anchors(["Logs", "Logs", "Logs"]) == {"logs", "logs-1", "logs-2"}


def test_broken_docs_fail_with_doc_line_and_what(tmp_path: Path) -> None:
    """Each check reports a broken link, anchor, target, subcommand, flag and path with its line."""
    (tmp_path / "other.md").write_text("# Other\n\n## Real section\n")
    text = (
        "# Doc\n\n"
        "See [gone](missing.md), [anchor](other.md#no-such-section), [fine](other.md#real-section)\n"
        "and [here](#doc).\n\n"
        "```sh\nmake no-such-target\n"
        "imgcls classify photos/ --no-such-flag\n"
        "python -m modelserver conjure\n"
        "python -m modelserver build --weights random \\\n    --also-not-a-flag\n```\n\n"
        "Run `python -m gateway.keys --length 3` and read `gateway/no_such_module.py`.\n"
    )
    doc = parse(tmp_path / "doc.md", text)
    found = [p.replace(str(tmp_path), "TMP") for check in CHECKS.values() for p in check(doc)]
    assert len(found) == 8, "\n".join(found)
    expected = [
        "doc.md:3: link (missing.md): no file missing.md",
        "doc.md:3: link (other.md#no-such-section): no heading with anchor #no-such-section in other.md",
        "doc.md:7: `make no-such-target`: no target 'no-such-target' in the Makefile",
        "doc.md:8: `imgcls classify` has no option --no-such-flag",
        "doc.md:9: `python -m modelserver conjure`: no such subcommand",
        "doc.md:10: `python -m modelserver build` has no option --also-not-a-flag",
        "doc.md:14: `python -m gateway.keys` takes no options (no argument parser), the docs pass ['--length']",
        "doc.md:14: `gateway/no_such_module.py`: no such file or folder in the repository",
    ]
    for start, problem in zip(expected, found, strict=True):
        assert problem.startswith(start), (start, problem)
    code = 'x = 1  # see docs/model.md, "The handler"\n# and docs/model.md, "No such\n# section"; docs/gone.md, "X"\n'
    assert [p.split(": ", 1)[1] for p in pointer_problems(tmp_path / "code.py", code)] == [
        'points to docs/model.md, "No such section", which is no heading there',
        "points to docs/gone.md, which does not exist",
    ]
