"""Names and file names shared by the configuration and the modules that implement them (no imports)."""

LOGIT_LOSS_BASES = ("kd", "dist")
"""Hand-made losses the learned logit loss can reproduce at initialisation (``LogitLossNet(base=...)``)."""

LKD_INITS = ("pretrained", *LOGIT_LOSS_BASES)
"""Starts of the learned logit loss (``LKDConfig.lkd_init``): the loss shipped with lkd_hf, or a hand-made loss."""

PRETRAINED_LOSS_DIRNAME = "pretrained/logit_loss"
"""Folder, inside the ``lkd_hf`` package, of the learned loss shipped with it (a ``LearnedLoss``)."""

SNAPSHOT_STRATEGIES = ("current", "uniform", "gaussian", "fixed")
"""Where a meta step's virtual steps start (``LKDConfig.snapshot_strategy``)."""

META_VAL_LOSS_NAMES = ("ce", "calibrated_ce")
"""Outer objectives of a meta step (``LKDConfig.meta_val_loss``)."""

META_VAL_SOURCES = ("heldout", "train_batch")
"""Validation batch of a meta step (``LKDConfig.meta_val_source``)."""

META_PRECISIONS = ("auto", "fp32", "bf16")
"""Precision of a meta step's validation pass (``LKDConfig.meta_precision``)."""

META_OPTIMIZERS = ("adam", "sgd")
"""Optimizers of the loss networks (``LKDConfig.meta_optimizer``)."""

LOSS_DIRNAME = "lkd_loss"
"""Folder of the learned loss (a ``LearnedLoss``) in a training output or checkpoint."""

CONNECTORS_NAME = "connectors.safetensors"
"""File of the feature connectors beside the student's weights."""

LKD_STATE_DIRNAME = "lkd_state"
"""Folder in a checkpoint with what a resumed run needs beyond the Trainer's own state."""
