import re
from pathlib import Path

from setuptools import find_packages, setup

# The version is set once, in ssd/__init__.py (read as text: building must not import the package).
VERSION = re.search(r'^__version__ = "([^"]+)"', (Path(__file__).parent / "ssd" / "__init__.py").read_text(),
                    re.MULTILINE).group(1)

setup(
    name="ssd",
    version=VERSION,
    description="SSD300/SSD512 single-shot multibox detector: train, evaluate, predict",
    license="MIT",
    python_requires=">=3.9",
    # configs/*.yaml are installed as ssd/configs/ (ssd.config.packaged_config reads them);
    # _base_ references between them keep working there.
    packages=[*find_packages(include=["ssd", "ssd.*"]), "ssd.configs"],
    package_dir={"ssd.configs": "configs"},
    package_data={"ssd.configs": ["*.yaml"]},
    install_requires=[
        "torch>=2.0,<2.15",
        "torchvision>=0.15,<0.30",
        "opencv-python-headless>=4.5",
        "numpy>=1.22",
        "pyyaml>=5.4",
        "tqdm>=4.60",
        "pycocotools>=2.0.6",
        "matplotlib>=3.5",
    ],
    # The commands of scripts/{train,eval,predict,export_onnx,visualize,convert_dataset,make_shapes,
    # data}.py, with the same arguments (ssd.commands.COMMAND_SCRIPTS).
    entry_points={
        "console_scripts": [
            "ssd-train = ssd.cli:train_command",
            "ssd-eval = ssd.cli:eval_command",
            "ssd-predict = ssd.cli:predict_command",
            "ssd-export = ssd.cli:export_command",
            "ssd-visualize = ssd.cli:visualize_command",
            "ssd-convert = ssd.cli:convert_command",
            "ssd-make-shapes = ssd.cli:make_shapes_command",
            "ssd-data = ssd.cli:data_command",
        ],
    },
    extras_require={
        "dev": ["pytest>=7", "ruff>=0.4", "onnx>=1.14", "onnxruntime>=1.16", "onnxscript>=0.1"],
        "onnx": ["onnx>=1.14", "onnxruntime>=1.16", "onnxscript>=0.1"],
        "tensorboard": ["tensorboard>=2.10"],
    },
)
