"""The published SSD settings, written once: the config's defaults and every function's default
arguments refer to these names (no torch import, so the config can read them cheaply)."""

VARIANCES = (0.1, 0.2)  # box encoding: (centre, size) variances of the original SSD
MATCH_IOU_THRESHOLD = 0.5  # a prior is positive when its best ground-truth IoU reaches this
NEG_POS_RATIO = 3  # hard negative mining keeps 3 negatives per positive

SCORE_THRESHOLD = 0.01  # detections must score above this (evaluation setting)
NMS_THRESHOLD = 0.45  # NMS suppresses boxes overlapping a better one by more than this IoU
TOP_K = 200  # detections kept per image
CANDIDATES_PER_CLASS = 400  # highest-scoring boxes per class that enter NMS
