"""The README is a front door: at most ~200 lines, and every link in the repository's Markdown,
and every `README "Section"` cited from code, leads somewhere (`scripts/check-links`)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checker():  # noqa: ANN201  the script, loaded as a module
    loader = importlib.machinery.SourceFileLoader("check_links", str(ROOT / "scripts/check-links"))
    spec = importlib.util.spec_from_loader("check_links", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def test_the_readme_is_short_and_every_link_leads_somewhere() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
    run = subprocess.run([sys.executable, str(ROOT / "scripts/check-links")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "0 broken" in run.stdout


def test_a_broken_link_a_missing_anchor_and_a_stale_citation_are_found(tmp_path: Path) -> None:
    cl = checker()
    (tmp_path / "other.md").write_text("# Other\n\n## Real section\n\n**Bold lead.** text\n")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "[ok](other.md) [ok](other.md#real-section) [gone](missing.md) [bad](other.md#nowhere)\n"
        "```\n[not a link](in-a-fence.md)\n```\n"
    )
    bad = cl.check_markdown(doc)
    assert len(bad) == 2, bad
    assert "missing.md does not exist" in bad[0] and "no heading #nowhere" in bad[1]
    src = tmp_path / "code.rs"
    src.write_text('// see other.md "Real section"\n// other.md "Bold lead"\n// other.md "Gone away"\n')
    bad = cl.check_citations(src)
    assert len(bad) == 1 and "Gone away" in bad[0], bad
