"""The documentation: the generated blocks of docs/ are what docs/generate.py makes from the
code (every metric of the catalogue in the metrics table, every module in the module map), the
generator refuses what it does not know, and README.md stays short and keeps the two commands
a newcomer types. `mkdocs build --strict` (links and anchors) runs in .ci/run."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from celery_exporter import catalogue

ROOT = Path(__file__).resolve().parents[2]
GENERATE = ROOT / "docs" / "generate.py"
README_MAX_LINES = 250


def load_generator():
    spec = importlib.util.spec_from_file_location("docs_generate", GENERATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generate():
    return load_generator()


def block(page: Path, name: str) -> str:
    text = page.read_text()
    match = re.search(rf"^<!-- BEGIN GENERATED: {name} -->\n(.*?)^<!-- END GENERATED: {name} -->$", text, re.M | re.S)
    assert match, f"{page.name} has no generated block {name!r}"
    return match.group(1)


def test_the_generated_blocks_are_what_generate_py_makes():
    result = subprocess.run([sys.executable, str(GENERATE), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def catalogue_metric_names():
    """Every metric name the catalogue declares, as queries see it: the names in its
    declarations (strings, and the first item of each tuple declaration), and the task state
    counters the collector names after TASK_COUNTERS, as celery_task_<state>_total."""
    names = {f"celery_task_{state}" for state in catalogue.TASK_COUNTERS}

    def walk(value):
        if isinstance(value, str):
            if re.fullmatch(r"celery_[a-z_]+", value):
                names.add(value)
        elif isinstance(value, (tuple, list)):
            for item in value:
                walk(item)

    for attribute, value in vars(catalogue).items():
        if not attribute.startswith("_"):
            walk(value)
    return sorted(names)


def test_the_catalogue_is_read_by_this_test():
    names = catalogue_metric_names()
    # a few of every kind of declaration: plain strings, tuples, tuples of tuples, counters by state
    for name in ("celery_task_exceptions", "celery_worker_up", "celery_task_runtime_seconds",
                 "celery_task_last_failed_timestamp_seconds", "celery_task_redelivered",
                 "celery_exporter_beat_schedule_read_errors"):  # fmt: skip
        assert name in names
    assert len(names) >= 50, names


@pytest.mark.parametrize("source", ["generated", "page"])
def test_every_metric_of_the_catalogue_is_in_the_metrics_table(generate, source):
    table = generate.metrics_table() if source == "generated" else block(ROOT / "docs" / "metrics.md", "metrics")
    shown = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.M))
    missing = [n for n in catalogue_metric_names() if n not in shown and n + "_total" not in shown]
    assert not missing, missing
    # and nothing is shown twice
    rows = re.findall(r"^\| `([a-z_]+)` \|", table, re.M)
    assert len(rows) == len(shown)


def test_the_metrics_table_gives_type_labels_and_help(generate):
    rows = {
        m.group(1): (m.group(2), m.group(3), m.group(4))
        for m in re.finditer(r"^\| `([a-z_]+)` \| ([^|]*) \| ([^|]*) \| (.*) \|$", generate.metrics_table(), re.M)
    }
    assert rows["celery_task_failed_total"] == ("counter", "name, queue_name", catalogue.TASK_COUNTER_HELP["failed"])
    assert rows["celery_task_runtime_seconds"][:2] == ("histogram (seconds)", "name, queue_name")
    assert rows["celery_worker_up"] == ("gauge", "hostname", catalogue.WORKER_UP[1])
    assert rows["celery_worker_info"][1] == "hostname, sw_ident, sw_ver, sw_sys"
    assert rows["celery_task_exceptions_total"][1] == "name, queue_name, exception"
    assert rows["celery_exporter_events_dropped_total"][:2] == ("counter", "reason")
    assert rows["celery_exporter_broker_connected"][:2] == ("gauge", "")


def test_every_module_is_in_the_module_map(generate):
    table = block(ROOT / "docs" / "architecture.md", "modules")
    package = ROOT / "celery_exporter"
    for path in package.rglob("*.py"):
        name = path.relative_to(package).as_posix()
        if path.name == "__init__.py" and name != "__init__.py":
            name = name[: -len("__init__.py")]
        assert f"| `{name}` |" in table, name


PAGE = """# A page

text
<!-- BEGIN GENERATED: numbers -->
old
<!-- END GENERATED: numbers -->
more text
"""


def run_main(generate, tmp_path, pages, *argv, blocks=None):
    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    for name, text in pages.items():
        (docs / name).write_text(text)
    blocks = blocks if blocks is not None else {"numbers": lambda: "1\n2\n"}
    return generate.main(list(argv), docs=docs, blocks=blocks)


def test_check_names_every_stale_block_and_changes_nothing(generate, tmp_path, capsys):
    pages = {"a.md": PAGE, "b.md": PAGE.replace("numbers", "letters")}
    blocks = {"numbers": lambda: "1\n2\n", "letters": lambda: "a\n"}
    assert run_main(generate, tmp_path, pages, "--check", blocks=blocks) == 1
    err = capsys.readouterr().err
    assert "docs/a.md: block 'numbers'" in err and "docs/b.md: block 'letters'" in err
    assert (tmp_path / "docs" / "a.md").read_text() == PAGE


def test_rewrite_replaces_only_the_block_then_check_passes(generate, tmp_path, capsys):
    assert run_main(generate, tmp_path, {"a.md": PAGE}) == 0
    assert (tmp_path / "docs" / "a.md").read_text() == PAGE.replace("old\n", "1\n2\n")
    assert "rewrote docs/a.md: block 'numbers'" in capsys.readouterr().out
    assert run_main(generate, tmp_path, {}, "--check") == 0


@pytest.mark.parametrize(
    "page,message",
    [
        (PAGE.replace("GENERATED: numbers -->\nold", "GENERATED: nmbers -->\nold"), "unknown generated block 'nmbers'"),
        (PAGE.replace("<!-- END GENERATED: numbers -->\n", ""), "block 'numbers' is never closed"),
        (PAGE.replace("<!-- BEGIN GENERATED: numbers -->\n", ""), "END of block 'numbers' without its BEGIN"),
        (PAGE.replace("old\n", "<!-- BEGIN GENERATED: numbers -->\n"), "opened inside block 'numbers'"),
        ("# no block here\n", "no page under docs/ holds the block(s) numbers"),
    ],
    ids=["unknown name", "unclosed", "END without BEGIN", "nested", "registered but nowhere"],
)
def test_what_the_generator_does_not_know_is_an_error(generate, tmp_path, capsys, page, message):
    for argv in ((), ("--check",)):
        assert run_main(generate, tmp_path, {"a.md": page}, *argv) == 2
        assert message in capsys.readouterr().err
        assert (tmp_path / "docs" / "a.md").read_text() == page


def test_readme_stays_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move the detail into docs/"


def test_readme_keeps_the_install_and_the_test_command():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```sh\n(.*?)^```$", text, re.M | re.S)
    lines = [line.strip() for b in blocks for line in b.splitlines()]
    assert "pip install . && celery-exporter demo" in lines
    assert "pip install 'pip>=25.1' && pip install --group test . && python -m pytest" in lines
    # the first code block is the user's: the test suite's needs are not in it
    assert blocks[0].strip() == "pip install . && celery-exporter demo"
    # ...and the README starts with the two: install and run, then the tests
    assert blocks[1].strip() == "pip install 'pip>=25.1' && pip install --group test . && python -m pytest"
    assert "bash .ci/run" in text


def test_ci_builds_the_docs_strictly_and_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^mkdocs build --strict\b", ci, re.M)
    assert re.search(r"^python -m pip install -q 'pip>=25\.1'$", ci, re.M)
    assert re.search(r"^python -m pip install -q --group test \.$", ci, re.M)
    assert re.search(r"^python -m pytest$", ci, re.M)
