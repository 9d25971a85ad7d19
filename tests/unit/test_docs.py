"""The documentation keeps up with the code: README.md stays short and its test command is the
one CI runs; every configuration key, section and metric is documented; every relative link in
README.md and docs/ leads to a file (and heading) that exists."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_BYTES = 15 * 1024
PAGES = ("architecture", "configuration", "http-api", "smpp-server", "routing", "country-rules",
         "observability", "simulator", "performance")


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def test_readme_is_short() -> None:
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes; move reference text to docs/"


def test_every_docs_page_exists_and_the_readme_links_it() -> None:
    readme = README.read_text(encoding="utf-8")
    for page in PAGES:
        assert (DOCS / f"{page}.md").is_file(), page
        assert f"(docs/{page}.md)" in readme, f"README.md does not link docs/{page}.md"


def test_readme_test_command_is_the_ci_command() -> None:
    """.ci/run promises to run the README's test command, after the README's install."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    readme = README.read_text(encoding="utf-8")
    quick = readme[readme.index("## Quick start"):]
    install = re.search(r"^python3 -m venv \.venv && \.venv/bin/pip install -e '\.\[test\]' && "
                        r"(\S+)$", quick, re.M)
    assert install is not None, "Quick start step 2 is not 'venv && pip install && pytest'"
    assert "python3 -m venv .venv\n.venv/bin/pip install -e '.[test]'\n" in ci
    assert re.search(rf"^{re.escape(install.group(1))} \|\| pytest_rc=", ci, re.M), (
        f"{install.group(1)} is not the test command in .ci/run")


def _config_keys() -> set[str]:
    """Every key aggregator/config.py reads, from the calls that read them."""
    source = (ROOT / "aggregator" / "config.py").read_text(encoding="utf-8")
    keys = set(re.findall(
        r'\br\.(?:string|integer|number|boolean|optional|given|lookup|string_list)\(\s*"(\w+)"',
        source))
    keys |= set(re.findall(r'_(?:optional_path|optional_rate|parse_region_lists)\(r, "(\w+)"',
                           source))
    for low, high in re.findall(r'_ordered\(r, "(\w+)", "(\w+)"\)', source):
        keys |= {low, high}
    for key in re.findall(r'_secret\(r, "(\w+)"', source):
        keys |= {key, f"{key}_sha256", f"{key}_env"}
    return keys


def test_every_config_key_and_section_is_documented() -> None:
    source = (ROOT / "aggregator" / "config.py").read_text(encoding="utf-8")
    doc = (DOCS / "configuration.md").read_text(encoding="utf-8")
    keys = _config_keys()
    assert {"listen", "max_pending", "breaker_cooldown", "api_key_env", "tls_ca"} <= keys
    missing = sorted(k for k in keys if f"`{k}`" not in doc)
    assert not missing, f"keys not in docs/configuration.md: {missing}"
    sections = set(re.findall(r'\btop\.section\("(\w+)"', source))
    assert sections, "no sections found in config.py"
    for name in sections:
        assert f"## `[{name}]`" in doc, f"no heading for [{name}] in docs/configuration.md"
    for name in ("accounts", "providers", "routes"):
        assert f"## `[[{name}]]`" in doc


def test_every_metric_is_documented() -> None:
    source = (ROOT / "aggregator" / "metrics.py").read_text(encoding="utf-8")
    names = set(re.findall(r'"(smsagg_\w+)"', source))
    assert len(names) > 30
    doc = (DOCS / "observability.md").read_text(encoding="utf-8")
    missing = sorted(n for n in names if f"`{n}`" not in doc)
    assert not missing, f"metrics not in docs/observability.md: {missing}"


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_relative_links_resolve() -> None:
    broken: list[str] = []
    for md in _markdown_files():
        text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http:, https:, mailto:
            file_part, _, anchor = target.partition("#")
            dest = (md.parent / file_part).resolve() if file_part else md
            if not dest.exists():
                broken.append(f"{md.relative_to(ROOT)}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{md.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)
