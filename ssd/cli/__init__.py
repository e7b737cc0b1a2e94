"""The command-line programs, installed as commands by `pip install .`:

    ssd-train    ssd.cli.train     (python scripts/train.py in a clone)
    ssd-eval     ssd.cli.eval      (python scripts/eval.py)
    ssd-predict  ssd.cli.predict   (python scripts/predict.py)
    ssd-export   ssd.cli.export    (python scripts/export_onnx.py)

Each module has `main(argv) -> exit status` (for in-process calls) and `entry_point()` (the
installed command: errors as `error: ...`, exit status 2, see ssd.cli.common.run_cli).
"""
