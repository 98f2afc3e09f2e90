"""README.md and docs/*.md stay true to the tree: links resolve, named files exist, and every
``--flag`` a documented command passes to a script or to ``ddprun`` is one that it accepts."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A repository path named in the text: a file with an extension, or a folder in backticks.
REPO_FILE = re.compile(
    r"(?<![\w./-])((?:examples|benchmarks|launch|tests|ddp)/[\w./-]*\w\.(?:py|sh|sbatch|example))"
    r"(?![\w/-])"
)
REPO_DIR = re.compile(r"`((?:examples|benchmarks|launch|tests|ddp)/[\w/-]+/)`")
# A script as a whole token of a command (not ``.../examples/x.py:34:`` in quoted output).
SCRIPT = re.compile(r"(?:^|\s)((?:examples|benchmarks)/\w+\.py)(?=\s|$)")
COMMAND_END = {"|", "||", "&&", ";", ">", ">>", "2>&1", "&"}


def _doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def _anchors(path: Path) -> frozenset[str]:
    text = FENCE.sub("", path.read_text())
    return frozenset(_slug(h) for h in re.findall(r"^#{1,6}\s+(.*)$", text, flags=re.M))


def _commands(text: str) -> list[str]:
    """Every line of a fenced or indented code block, and every inline code span."""
    commands = []
    for block in FENCE.findall(text):
        commands += block.splitlines()
    prose = FENCE.sub("", text)
    commands += [line[4:] for line in prose.splitlines() if line.startswith("    ")]
    commands += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    return commands


def _tokens(command: str) -> list[str]:
    try:
        tokens = shlex.split(command, comments=True)
    except ValueError:  # quoted output, not a command
        tokens = command.split()
    for i, token in enumerate(tokens):
        if token in COMMAND_END:
            return tokens[:i]
    return tokens


def _flags(tokens: list[str]) -> list[str]:
    return [t.split("=", 1)[0] for t in tokens if re.fullmatch(r"--[a-z][\w-]*(=.*)?", t)]


def _script_flags() -> dict[str, dict[str, set[str]]]:
    """{script or "ddprun": {flag: {docs that pass it}}} over every command in the docs."""
    found: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for doc in DOCS:
        for command in _commands(doc.read_text()):
            # dev.sh hands the rest of its command line to examples/train.py.
            command = re.sub(r"\bdev\.sh train\b", "dev.sh examples/train.py", command)
            match = SCRIPT.search(command)
            if match:
                for flag in _flags(_tokens(command[match.end():])):
                    found[match.group(1)][flag].add(_doc_id(doc))
            launcher = re.search(r"(?:^|\s)\S*ddprun(?=\s|$)", command)
            if launcher:
                tokens = _tokens(command[launcher.end():])
                head = [t for t in tokens[: next((i for i, t in enumerate(tokens)
                                                  if t.endswith(".py")), len(tokens))]]
                for flag in _flags(head):
                    found["ddprun"][flag].add(_doc_id(doc))
    return found


def _help(script: str) -> str:
    command = [sys.executable, "-m", "ddp.launcher"] if script == "ddprun" else [
        sys.executable, str(ROOT / script)]
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60,
                            cwd=ROOT)
    return result.stdout + result.stderr


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_relative_links_resolve(doc):
    broken = []
    for target in LINK.findall(FENCE.sub("", doc.read_text())):
        if re.match(r"[a-z][\w+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.exists():
            broken.append(f"{target} (no file {path})")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target} (no heading with anchor #{anchor} in {path.name}; "
                          f"anchors: {sorted(_anchors(path))})")
    assert not broken, f"{_doc_id(doc)}: broken links: {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_named_repository_paths_exist(doc):
    text = doc.read_text()
    named = set(REPO_FILE.findall(text)) | set(REPO_DIR.findall(text))
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{_doc_id(doc)} names files that do not exist: {missing}"


def test_documented_flags_are_accepted():
    found = _script_flags()
    assert "examples/train.py" in found, "no documented command passes flags to train.py"
    with ThreadPoolExecutor(max_workers=4) as pool:
        helps = dict(zip(found, pool.map(_help, found), strict=True))
    unknown = [
        f"{script} {flag} (in {', '.join(sorted(docs))})"
        for script, flags in sorted(found.items())
        for flag, docs in sorted(flags.items())
        if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[script])
    ]
    assert not unknown, f"documented flags that --help does not list: {unknown}"


def test_flag_check_sees_commands():
    """The parser finds flags in fenced, indented and inline commands, and only after the
    script (python's own ``-W`` and output lines such as ``.../examples/x.py:34:`` are not
    the script's)."""
    text = (
        "```bash\nDDP_X=1 .venv/bin/python -W error examples/a.py --one 1 | tee log\n```\n"
        "    .venv/bin/python benchmarks/b.py --two '{\"k\": 1}'   # comment --no\n"
        "Run `.venv/bin/ddprun -n 2 --threads examples/a.py\n--three`.\n"
        "```\n.../examples/a.py:34: Warning: --not-a-flag\n```\n"
    )
    flags: dict[str, set[str]] = defaultdict(set)
    for command in _commands(text):
        match = SCRIPT.search(command)
        if match:
            flags[match.group(1)] |= set(_flags(_tokens(command[match.end():])))
    assert dict(flags) == {"examples/a.py": {"--one", "--three"}, "benchmarks/b.py": {"--two"}}
