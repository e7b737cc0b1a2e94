"""How messages name the project's commands and documents, for where the package runs from.

    command("ssd-train")          # 'ssd-train' once installed, 'python scripts/train.py' in a clone
    clone_script("convert_vgg.py", "A B")  # a clone-only tool; says where it is when installed
    clone_doc("data/README.md")   # '; see data/README.md' in a clone, '' once installed

A clone is a source checkout whose ssd/ package sits next to its scripts/ folder (run from
there, or installed editable); `pip install .` copies only the package, so its users have
the installed commands and neither scripts/ nor the clone's README files.
"""

from __future__ import annotations

from pathlib import Path

CLONE_SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"

# Installed command -> the clone's script that runs the same code (setup.py's entry points).
COMMAND_SCRIPTS = {
    "ssd-train": "train.py",
    "ssd-eval": "eval.py",
    "ssd-predict": "predict.py",
    "ssd-export": "export_onnx.py",
    "ssd-visualize": "visualize.py",
    "ssd-convert": "convert_dataset.py",
    "ssd-make-shapes": "make_shapes.py",
    "ssd-data": "data.py",
}


def running_from_clone() -> bool:
    """True when the imported ssd package is a clone's (its scripts/ folder is next to it)."""
    return (CLONE_SCRIPTS / COMMAND_SCRIPTS["ssd-train"]).is_file()


def command(name: str) -> str:
    """How to run the installed command `name` here: 'python scripts/<script>.py' in a clone,
    else `name` itself (e.g. 'ssd-make-shapes')."""
    if name not in COMMAND_SCRIPTS:
        raise KeyError(f"no command named {name!r}; known: {', '.join(COMMAND_SCRIPTS)}")
    return f"python scripts/{COMMAND_SCRIPTS[name]}" if running_from_clone() else name


def clone_script(script: str, arguments: str = "") -> str:
    """How to run `script` with `arguments`, a tool that exists only in a clone:
    'python scripts/<script> <arguments>', followed, once installed, by where it lives."""
    line = " ".join(["python", f"scripts/{script}", *([arguments] if arguments else [])])
    if running_from_clone():
        return line
    return f"{line} (a script of the project's source repository, not an installed command)"


def clone_doc(path: str) -> str:
    """'; see <path>' (a README of the clone, e.g. data/README.md) in a clone; '' once
    installed, where the file does not exist (the message must say enough on its own)."""
    return f"; see {path}" if running_from_clone() else ""
