"""Repository conventions that must not drift: one source of truth for set-up commands."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _command_lines(text: str) -> set[str]:
    lines = (line.strip() for line in text.splitlines())
    return {line for line in lines if line.startswith("python3 -m venv")}


def test_ci_runs_the_readme_test_command() -> None:
    ci = _command_lines((ROOT / ".ci" / "run").read_text())
    readme = _command_lines((ROOT / "README.md").read_text())
    assert len(ci) == 1 and ci <= readme, (ci, readme)
    assert "pytest" in next(iter(ci)) and "ruff check" in next(iter(ci))
    assert "ruff format --check" in next(iter(ci))


def test_dockerfiles_lint_clean() -> None:
    """hadolint (from the test extra) passes on every Dockerfile, with .hadolint.yaml."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    files = sorted(str(p) for p in (ROOT / "docker").glob("Dockerfile*"))
    assert files
    r = subprocess.run([exe, *files], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
