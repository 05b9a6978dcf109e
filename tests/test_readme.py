import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    block = readme[readme.index("```bash") + 1: readme.index("```bash") + 3]
    assert block[0].startswith("pip install -e . && lwm ") and "pytest" in block[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert block[1] in ci


def test_ci_lints_with_the_project_ruff_config():
    ci = (ROOT / ".ci" / "run").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "python3 -m ruff check ." in ci and "[tool.ruff.lint]" in pyproject and '"ruff==' in pyproject
