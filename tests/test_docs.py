"""The documentation: the site builds strictly, the README is a front page whose links resolve,
and the generated reference pages match the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import ROOT


def test_the_docs_site_builds_in_strict_mode(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The API reference is generated from the docstrings.
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "deflated_sharpe_ratio" in api and "GatePolicy" in api and "replay" in api


def test_the_readme_is_a_front_page_whose_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 110  # about two screens
    assert "make demo" in readme and "make test" in readme
    links = re.findall(r"\]\(([^)]+)\)", readme)
    assert links and all((ROOT / link).is_file() for link in links if "://" not in link), links


def test_the_run_parameter_reference_is_the_configs_own():
    from include.config import params_markdown

    assert (ROOT / "docs" / "reference" / "params.md").read_text() == params_markdown(), (
        "regenerate: python -c 'from include.config import params_markdown; print(params_markdown(), end=\"\")' "
        "> docs/reference/params.md")
