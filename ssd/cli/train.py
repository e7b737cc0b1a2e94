"""Train an SSD from a YAML config (ssd-train, or python scripts/train.py in a clone).

    ssd-train --config configs/shapes.yaml
    ssd-train --config configs/voc300.yaml --opts solver.lr=0.002 --resume auto
    ssd-train --config my.yaml --weights detector.pth   # fine-tune to my.yaml's classes
    torchrun --nproc_per_node=2 scripts/train.py --config configs/voc300.yaml
    torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\
        scripts/train.py --config configs/voc300.yaml --resume auto     # on each node

--config is a YAML file; a built-in config (voc300.yaml, shapes.yaml, ...; also written
configs/voc300.yaml) is used when no such file exists, with its data, weights and output
folders relative to the working directory.

solver.batch_size is the global batch: under torchrun each of the N processes (all nodes
together) takes batch_size / N images per iteration and solver.lr applies to the global batch
unchanged (it must be divisible by N: checked, with the rest of the config, before the
processes connect; a wrong input is printed once per machine and every process exits with
status 2). Only rank 0 writes checkpoints, to the output folder on its own node: with several
nodes, use a shared filesystem so that --resume auto finds the same checkpoint everywhere.

Exit status: 0 done (also when train.patience or train.max_time stopped the run), 2 wrong
input, 3 training failed (a non-finite loss), 130 interrupted (Ctrl-C, SIGTERM), 75 preempted
(train.preempt_signal, default SIGUSR1: the iteration was saved; requeue the job with
--resume auto).
"""

from __future__ import annotations

import argparse
import sys

from ssd.cli.common import (
    EXIT_USER_ERROR,
    USER_ERRORS,
    add_version_argument,
    load_cli_config,
    pick_device,
    run_cli,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/voc300.yaml",
                        help="YAML config file, or a built-in one (default configs/voc300.yaml)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. solver.lr=0.002 solver.max_iter=1000")
    parser.add_argument("--resume", help="checkpoint to continue from, or 'auto' for the newest "
                                         "in the output folder")
    parser.add_argument("--weights", help="initialise the whole model from these weights "
                                          "(a checkpoint or a classic state_dict); weights trained "
                                          "on other classes are fine-tuned to the config's")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--output", help="output folder (default: train.output_dir of the config)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in an output folder that holds another run, deleting "
                             "its checkpoints and metrics first")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_version_argument(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ssd.data import DataError
    from ssd.engine.checkpoint import CheckpointError
    from ssd.engine.distributed import (
        check_global_batch,
        check_sync_bn,
        cleanup,
        finish_together,
        init_distributed,
        launch_info,
    )
    from ssd.engine.preemption import EXIT_PREEMPTED, PREEMPTED
    from ssd.engine.run_lock import FolderInUseError
    from ssd.engine.trainer import OutputFolderError, Trainer, TrainingError

    launch = launch_info()
    try:  # before the ranks connect, so that a wrong input stops every one of them cleanly
        cfg = load_cli_config(args.config, overrides=args.opts)
        check_global_batch(cfg.solver.batch_size, launch.world_size)
        device = pick_device(args.device)
        check_sync_bn(cfg.train.sync_bn, device.split(":")[0], launch.world_size)
    except USER_ERRORS:
        if launch.local_rank == 0:
            raise
        return EXIT_USER_ERROR  # the same error as local rank 0's, which prints it
    dist_info = init_distributed(device.split(":")[0])
    try:
        trainer = Trainer.from_config(cfg, output_dir=args.output, device=device, dist_info=dist_info,
                                      resume=args.resume, init_weights=args.weights,
                                      progress=not args.no_progress, overwrite=args.overwrite)
        result = trainer.train()
        finish_together(dist_info)
    except (CheckpointError, OutputFolderError, FolderInUseError, DataError) as err:  # the input is wrong
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as err:
        print(str(err) or "Interrupted.", file=sys.stderr)
        return 130
    finally:
        cleanup(dist_info)
    if trainer.stop_reason == PREEMPTED:
        if dist_info.is_main:
            print(f"Preempted at iteration {trainer.iteration}: checkpoint in {trainer.output_dir}; "
                  f"exit status {EXIT_PREEMPTED} (continue with --resume auto)", file=sys.stderr)
        return EXIT_PREEMPTED
    if dist_info.is_main:
        summary = {k: v for k, v in result.items() if k in ("loss", "loss_loc", "loss_conf")}
        stopped = f" (stopped early: {trainer.stop_reason})" if trainer.stop_reason else ""
        print(f"Finished at iteration {trainer.iteration}{stopped}: {summary}")
        if result.get("eval"):
            print(f"{cfg.test.metric} mAP: {result['eval']['mAP']:.4f}")
        print(f"Checkpoints and metrics in {trainer.output_dir}")
    return 0


if __name__ == "__main__":  # python -m ssd.cli.train, torchrun -m ssd.cli.train
    run_cli(main)
