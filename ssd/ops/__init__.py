"""Tuned kernels behind the SSD algorithm, one module per kernel.

``ssd.box_utils.match``, ``ssd.loss.MultiBoxLoss`` and ``ssd.postprocess.detect`` read as the
SSD algorithm and call these by what they compute. Each module's docstring states the plain
computation it equals; tests/test_ops.py checks each bit for bit (``torch.equal``) against
that plain form. `ssd.ops.reference` holds the plain classic algorithms (per-image matching
and mining, the per-class NMS loop, the devkit AP loop) that tests and benchmarks compare with.

The kernels never import ``ssd.box_utils`` (their box maths is the leaf ``ssd.ops.boxes``), so
``ssd.box_utils`` imports them without an import cycle; only ``ssd.ops.reference``, which
nothing in the package imports, uses its ``decode``.
"""
