from setuptools import find_packages, setup

setup(
    name="ssd",
    version="0.1.0",
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
    extras_require={
        "dev": ["pytest>=7", "ruff>=0.4", "onnx>=1.14", "onnxruntime>=1.16", "onnxscript>=0.1"],
        "onnx": ["onnx>=1.14", "onnxruntime>=1.16", "onnxscript>=0.1"],
        "tensorboard": ["tensorboard>=2.10"],
    },
)
