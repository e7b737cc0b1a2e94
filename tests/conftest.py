import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"  # tests name config files by absolute path: any cwd works
sys.path.insert(0, str(REPO_ROOT))

torch.set_num_threads(2)

# The devices a test parametrised over `DEVICES` runs on: the CPU always, CUDA where a GPU is
# present (skipped elsewhere), so that a run on a GPU machine checks the CUDA paths too: fp16
# autocast, pinned memory, the whole-batch NMS, cuDNN, torch.compile's GPU code.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


def pytest_collection_modifyitems(config, items):
    """Slow tests (marked `slow`) are skipped when CI=true; a faster test covers the same code."""
    import os

    if os.environ.get("CI", "").lower() != "true":
        return
    skip = pytest.mark.skip(reason="slow test skipped under CI=true (covered by a faster test)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: on a shared 2-core machine, two threads that wait for each
    other make small models up to 10x slower (measured: 65 s instead of 4 s for a tiny fit)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ------------------------------------------------------------------ scripts as modules
SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    """scripts/<name>.py imported as the module `_script_<name>` (loaded once, then cached),
    with scripts/ on sys.path as when the script runs, so its `main(argv)` can be called
    in-process. `name` may name a file below scripts/, e.g. "benchmarks/predict"."""
    import importlib.util

    module_name = "_script_" + name.replace("/", "_")
    if module_name in sys.modules:
        return sys.modules[module_name]
    if str(SCRIPTS_DIR) not in sys.path:
        sys.path.insert(0, str(SCRIPTS_DIR))
    path = SCRIPTS_DIR / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"No script {path}")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


# ------------------------------------------------------------------ a non-editable install
class InstalledProject:
    """A virtualenv holding a non-editable install of a copy of the project."""

    def __init__(self, venv: Path):
        self.venv = venv
        self.bin = venv / "bin"
        self.python = self.bin / "python"

    def env(self) -> dict[str, str]:
        """The environment to run its commands in: without PYTHONPATH, which would put a
        checkout's ssd package first."""
        import os

        return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def _see_running_site_packages(project: InstalledProject) -> None:
    """Let the new virtualenv import the packages of the interpreter running the tests (torch,
    numpy, ...) through a .pth file naming its site-packages folders. `venv
    --system-site-packages` would not do: run from inside a virtualenv, it sees the base
    Python's packages, not the virtualenv's. Folders named in a .pth file have their own .pth
    files ignored, so an editable install of the checkout stays invisible there."""
    import subprocess

    folders = [entry for entry in sys.path
               if Path(entry).name in ("site-packages", "dist-packages") and Path(entry).is_dir()]
    ask_purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    purelib = subprocess.run([str(project.python), "-c", ask_purelib],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "_running_interpreter.pth").write_text("".join(f"{folder}\n" for folder in folders))


@pytest.fixture(scope="session")
def installed_project(tmp_path_factory) -> InstalledProject:
    """pip install (not editable, offline, no dependencies: the virtualenv sees the system
    site-packages) of a copy of the project, done once per test session. Skips the test when
    pip cannot build the project here."""
    import shutil
    import subprocess

    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # a copy: pip's in-tree build leaves build/ folders behind
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
        if (REPO_ROOT / name).exists():
            shutil.copy(REPO_ROOT / name, source / name)
    for folder in ("ssd", "configs"):
        shutil.copytree(REPO_ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    project = InstalledProject(root / "venv")
    subprocess.run([sys.executable, "-m", "venv", str(project.venv)], check=True)
    _see_running_site_packages(project)
    install = [str(project.python), "-m", "pip", "install", "-q", "--no-deps", str(source)]
    done = subprocess.run([*install[:-1], "--no-build-isolation", install[-1]], capture_output=True,
                          text=True)
    if done.returncode != 0:  # no `wheel` in the system site-packages: let pip isolate the build
        done = subprocess.run(install, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"pip cannot install the project offline here: {done.stderr[-500:]}")
    return project
