"""Import smoke test of every script: each imports by path (from a clone, without installing),
has its entry point, and answers --help without doing any work."""

import inspect
import sys
from pathlib import Path

import pytest
from conftest import load_script

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
ENTRY_SCRIPTS = sorted(p for p in SCRIPTS.glob("*.py") if not p.name.startswith("_"))
BENCHMARK_SECTIONS = sorted(p for p in (SCRIPTS / "benchmarks").glob("*.py")
                            if not p.name.startswith("_"))


def _import(path: Path):
    """Import a script file as its own module, with scripts/ importable as when run."""
    return load_script(path.relative_to(SCRIPTS).with_suffix("").as_posix())


def test_every_script_is_covered():
    names = {p.stem for p in ENTRY_SCRIPTS}
    assert {"train", "eval", "predict", "visualize", "benchmark"} <= names


@pytest.mark.parametrize("path", ENTRY_SCRIPTS, ids=lambda p: p.name)
def test_script_imports_and_answers_help(path, monkeypatch, capsys):
    module = _import(path)
    assert callable(getattr(module, "main", None)), f"{path.name} has no main()"
    assert 'if __name__ == "__main__":' in path.read_text(), f"{path.name} does not run main"
    if hasattr(module, "parse_args"):
        entry = module.parse_args
    else:
        entry = module.main
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    with pytest.raises(SystemExit) as info:
        entry(["--help"]) if inspect.signature(entry).parameters else entry()
    assert info.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("path", BENCHMARK_SECTIONS, ids=lambda p: p.name)
def test_benchmark_section_has_run(path):
    module = _import(path)
    run = getattr(module, "run", None)
    assert callable(run) and "quick" in inspect.signature(run).parameters
