"""A task's prompt: the template from the manifest filled with the task, the repository,
the branch, the language found in the workspace with its build and test commands, the
constraints, and how to ask a question. Also the task's slug.

Pure, except `detect_language`, which looks at a few file names in the workspace.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from pathlib import Path

QUESTION_FILE = "BLOCKED.md"
ANSWER_FILE = "ANSWER.md"

DEFAULT_TEMPLATE = """\
{task}

Repository: {repo}
Branch: {branch} (from {base})
Language: {language}; build: {build}; test: {test}

Constraints:
{constraints}

If you need an answer before you can go on: {ask}
"""

ASK = (
    f"write the question in {QUESTION_FILE} at the top of the workspace and stop, or run "
    '`fleetbus call agentic.report \'{{"run_id": "\'$FLEETBUS_RUN_ID\'", "kind": '
    '"question", "text": "..."}}\'`; the answer comes in a new run'
)


@dataclass(frozen=True)
class Language:
    name: str
    build: str
    test: str


# (file that marks it, language): the first found wins
MARKERS: tuple[tuple[str, Language], ...] = (
    ("pyproject.toml", Language("Python", "pip install -e .", "pytest")),
    ("setup.py", Language("Python", "pip install -e .", "pytest")),
    ("Cargo.toml", Language("Rust", "cargo build", "cargo test")),
    ("go.mod", Language("Go", "go build ./...", "go test ./...")),
    ("package.json", Language("JavaScript/TypeScript", "npm install", "npm test")),
    ("pom.xml", Language("Java", "mvn -q package", "mvn test")),
    ("build.gradle", Language("Java/Kotlin", "gradle build", "gradle test")),
    ("Gemfile", Language("Ruby", "bundle install", "bundle exec rake test")),
    ("Makefile", Language("unknown (Makefile)", "make", "make test")),
)
UNKNOWN = Language("unknown", "see the README", "see the README")


def detect_language(workspace: Path) -> Language:
    """The language of the checkout at `workspace`, from the files at its top."""
    for marker, language in MARKERS:
        if (workspace / marker).is_file():
            return language
    return UNKNOWN


def build(
    template: str | None,
    *,
    task: str,
    repo: str,
    branch: str,
    base: str,
    language: Language,
    constraints: list[str],
) -> str:
    """The prompt of a task's first run (`template` was checked when the manifest was
    loaded: see `check_template`)."""
    fields = {
        "task": task.strip(),
        "repo": repo,
        "branch": branch,
        "base": base,
        "language": language.name,
        "build": language.build,
        "test": language.test,
        "constraints": "\n".join(f"- {line}" for line in constraints) or "- none",
        "ask": ASK,
    }
    return (template or DEFAULT_TEMPLATE).format_map(fields)


def check_template(template: str) -> str | None:
    """What is wrong with a prompt template, or None."""
    allowed = {"task", "repo", "branch", "base", "language", "build", "test", "constraints", "ask"}
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:  # an unmatched brace
        return f"prompt_template is not a valid template: {e} (write {{{{ and }}}} for braces)"
    unknown = sorted(n for n in names if n not in allowed)
    if unknown:
        return f"prompt_template names unknown fields {unknown}; known: {sorted(allowed)}"
    if "{task}" not in template:
        return "prompt_template must contain {task}"
    return None


def resumed(prompt: str, question: str, answer: str) -> str:
    """The prompt of the run that resumes a blocked task."""
    return (
        f"{prompt.rstrip()}\n\n"
        f"You stopped earlier with this question:\n{question.strip()}\n\n"
        f"The answer (also in {ANSWER_FILE} at the top of the workspace):\n{answer.strip()}\n\n"
        "Go on with the task using this answer.\n"
    )


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def slug(task: str, task_id: str) -> str:
    """`fix-the-login-bug-3f2a`: the task's first words and the end of its id."""
    words = re.sub(r"[^a-z0-9]+", "-", task.lower()).strip("-")
    head = words[:40].rstrip("-") or "task"
    return f"{head}-{task_id[-6:]}"
