"""Every command and code block of README.md and docs/*.md runs as written, or says what it needs.

Code blocks are fenced ```` ```bash ```` or ```` ```python ````; ```` ```text ```` blocks (formulas, printed output) are
not code, and a fence without a language is refused. A code block whose first line is ``# needs: <what>`` (a GPU,
the Hub, a dataset not shipped, a long run: :data:`NEEDS`) is not run: its Python is compiled, and the arguments of
its commands are parsed by the script's own parser (:data:`PARSE_ONLY`), so a renamed option fails here all the
same. Every other block runs, from a scratch folder that links the repository's ``benchmarks/`` and ``recipes/``
(so the paths in the docs, relative to the repository root, resolve and ``outputs/`` stays out of the checkout):

* the Python blocks of a page in order in one interpreter, as doctest does (later blocks see earlier names);
* commands with the tiny settings of :data:`TINY` appended (for a repeated option the last value wins), so a
  recipe runs a few steps; a script without tiny settings fails the test: mark its block, or add its settings;
* ``make <target>`` as ``make -n <target>`` (what it would run), ``pip install`` as a check that the package is
  installed.

The README's quoted results of its example (``eval_accuracy`` ...) are checked against the run within
:data:`TOLERANCE`.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NEEDS = ("a GPU", "the Hub", "a dataset not shipped", "a long run")
"""What a ``# needs: ...`` first line may name (one or more, joined by "and" or commas)."""
TINY = {
    "recipes/quickstart.py": ["--student_epochs", "0.5", "--train_subset", "256"],
    "recipes/learn_loss.py": ["--meta_steps", "2", "--train_subset", "256"],
}
"""Options appended to a command of each script so that it runs in seconds (later options override earlier ones)."""
TOLERANCE = 0.02
"""How far the README's example may land from its quoted top-1 / top-5 accuracy on another CPU (absolute)."""
TIMEOUT = 1800  # seconds per block; the machines that run the suite may be shared
PARSE_ONLY = """
import argparse, contextlib, io, json, os, runpy, sys
parse = argparse.ArgumentParser.parse_known_args
def parse_only(self, args=None, namespace=None):
    namespace, extras = parse(self, args, namespace)
    if extras:
        self.error("unrecognized arguments: " + " ".join(extras))
    raise SystemExit(0)
argparse.ArgumentParser.parse_known_args = parse_only
errors = {}
for key, (script, args) in json.loads(sys.stdin.read()).items():
    sys.argv, path, stderr = [script, *args], list(sys.path), io.StringIO()
    sys.path.insert(0, os.path.dirname(script))
    sys.modules.pop("common", None)
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(script, run_name="__main__")
        errors[key] = "the script ran past its argument parsing"
    except SystemExit as stop:
        errors[key] = None if stop.code in (0, None) else stderr.getvalue()[-2000:] or str(stop.code)
    finally:
        sys.path[:] = path
print(json.dumps(errors))
"""
"""Runs scripts (a JSON ``{key: [script, arguments]}`` on stdin) only until their parser has read the arguments, in
one interpreter; prints ``{key: None or the parser's error}``."""


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    code: str

    @property
    def needs(self) -> str | None:
        """What the block's ``# needs:`` first line names, or ``None``."""
        first = self.code.lstrip().split("\n", 1)[0]
        match = re.match(r"#\s*needs:\s*(.*)", first)
        return match.group(1) if match else None

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page."""
    found, lines = [], page.read_text().split("\n")
    start = None
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            if start is None:
                start, language = number, line[3:].strip()
            else:
                found.append(Block(page, start, language, "\n".join(lines[start:number - 1]) + "\n"))
                start = None
    return found


CODE = [b for page in PAGES for b in blocks(page) if b.language in ("bash", "python")]


def commands(code: str) -> list[tuple[dict[str, str], list[str]]]:
    """The commands of a bash block: ``(environment assignments, argv)`` per line, continuations joined."""
    found = []
    for line in code.replace("\\\n", "").split("\n"):
        words = shlex.split(line, comments=True)
        env = {}
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            name, value = words.pop(0).split("=", 1)
            env[name] = value
        if words:
            found.append((env, words))
    return found


def script_of(argv: list[str]) -> tuple[str, list[str]] | None:
    """``(script, arguments)`` of a ``python``, ``accelerate launch`` or ``bash`` command, else ``None``."""
    if argv[0] in ("python", "bash") or argv[:2] == ["accelerate", "launch"]:
        for i, word in enumerate(argv):
            if word.endswith((".py", ".sh")):
                return word, argv[i + 1:]
    return None


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A working folder for the docs' commands: ``benchmarks/`` and ``recipes/`` link to the repository's."""
    folder = tmp_path_factory.mktemp("docs")
    for name in ("benchmarks", "recipes"):
        (folder / name).symlink_to(ROOT / name)
    return folder


def environment(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", **extra}


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=cwd, env=environment(**(env or {})), capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, f"{shlex.join(argv)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def check_installed(argv: list[str]) -> None:
    """``pip install ...``: the packages it names are installed (``-e .``: lkd_hf; ``name==version``: that one)."""
    for word in argv[2:]:
        if word == ".":
            importlib.metadata.version("lkd_hf")
        elif "==" in word:
            name, version = word.split("==")
            assert importlib.metadata.version(name) == version, word


@pytest.fixture(scope="module")
def parsed(scratch) -> dict[str, str | None]:
    """The parse errors (``None``: none) of the Python scripts' commands in marked blocks, by ``shlex.join(argv)``."""
    import json

    todo = {}
    for block in CODE:
        if block.needs and block.language == "bash":
            for _, argv in commands(block.code):
                found = script_of(argv)
                if found and found[0].endswith(".py"):
                    todo[shlex.join(argv)] = [str(ROOT / found[0]), found[1]]
    result = subprocess.run([sys.executable, "-c", PARSE_ONLY], input=json.dumps(todo), cwd=scratch, text=True,
                            capture_output=True, env=environment(), timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().split("\n")[-1])


def run_command(argv: list[str], cwd: Path, env: dict[str, str] | None = None,
                parsed: dict[str, str | None] | None = None) -> None:
    """Run one command of a block (see the module docstring); with ``parsed``, only look up its parse error."""
    parse_only = parsed is not None
    if argv[0] == "make":
        run(["make", "-n", *argv[1:]], ROOT)
    elif argv[:2] == ["pip", "install"]:
        check_installed(argv)
    elif (found := script_of(argv)) is None:
        pytest.fail(f"{shlex.join(argv)}: not a command the docs test knows how to run; mark its block")
    elif found[0].endswith(".sh"):
        run(["bash", "-n", str(ROOT / found[0])], ROOT)
    elif parse_only:
        error = parsed[shlex.join(argv)]
        assert error is None, f"{shlex.join(argv)}: {error}"
    else:
        assert found[0] in TINY, f"{shlex.join(argv)}: no tiny settings for {found[0]} (add them to TINY or mark it)"
        run([sys.executable, found[0], *found[1], *TINY[found[0]]], cwd, env)


def test_every_fence_names_its_language_and_every_mark_a_known_need():
    for page in PAGES:
        for block in blocks(page):
            assert block.language in ("bash", "python", "text"), f"{block}: fence language {block.language!r}"
            if block.needs is not None and block.language != "text":
                named = [n.strip() for n in re.split(r",|\band\b", block.needs.split("(")[0]) if n.strip()]
                assert named and all(n in NEEDS for n in named), f"{block}: '# needs: {block.needs}' ({NEEDS})"


@pytest.mark.parametrize("block", [b for b in CODE if b.needs], ids=str)
def test_a_marked_block_compiles_and_its_options_parse(block, scratch, parsed):
    if block.language == "python":
        compile(block.code, str(block), "exec")
        return
    for _, argv in commands(block.code):
        run_command(argv, scratch, parsed=parsed)


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in CODE if b.language == "bash" and not b.needs], ids=str)
def test_an_unmarked_command_block_runs(block, scratch):
    for env, argv in commands(block.code):
        run_command(argv, scratch, env)


def run_python_blocks(page: Path, cwd: Path) -> str:
    """Run the page's unmarked Python blocks in order in one interpreter; returns what they print."""
    code = "\n".join(b.code for b in CODE if b.page == page and b.language == "python" and not b.needs)
    return run([sys.executable, "-c", code], cwd).stdout


@pytest.mark.slow
@pytest.mark.parametrize("page", sorted({b.page for b in CODE if b.language == "python" and not b.needs}),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_python_blocks_of_a_page_run_in_order(page, scratch):
    printed = run_python_blocks(page, scratch)
    if page.name == "README.md":
        check_quoted_results(page.read_text(), printed)


def check_quoted_results(readme: str, printed: str) -> None:
    """The example's ``eval_accuracy`` and ``eval_top5_accuracy`` are the README's quoted ones within TOLERANCE."""
    metrics = re.findall(r"'eval_(top5_accuracy|accuracy)': ([0-9.]+)", printed)
    assert {name for name, _ in metrics} == {"accuracy", "top5_accuracy"}, printed[-2000:]
    for name, value in metrics:
        quoted = float(re.search(rf"`eval_{name}` ([0-9.]+)", readme).group(1))
        assert abs(float(value) - quoted) <= TOLERANCE, f"eval_{name} {value}, the README quotes {quoted}"


def test_the_readme_quotes_the_tolerance_its_numbers_are_checked_with():
    assert f"within {TOLERANCE}" in (ROOT / "README.md").read_text()


def test_benchmark_records_hold_no_machine_paths():
    machine = re.compile(r"(?<![\w.$])/(?:work|home|root|opt|Users|mnt|scratch|srv)/")
    patterns = ("*.json", "*.log", "*.md", "*.txt")
    records = [p for pattern in patterns for p in ROOT.glob(f"docs/benchmark_*/**/{pattern}")]
    assert records
    for record in records:
        found = machine.search(record.read_text())
        assert found is None, f"{record.relative_to(ROOT)} holds a machine path at {found.start()}"
