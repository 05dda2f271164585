"""Roles of the accuracy benchmark's datasets and settings, declared on 2026-12-07 before any design work on them.

* ``design``: its validation split may feed any choice of ``LKDConfig`` defaults, of what is learned beforehand and
  shipped, of population factors or candidate values. Test splits never drive a choice, whatever the role.
* ``evaluation``: scored with frozen defaults, the scores only reported; it never feeds a design choice and never
  moves to ``design`` once its scores have been seen.

animal-mnist and mnist-5k (clean) fed earlier design choices, and scikit-learn's digits is a source of the shipped
pre-learned loss: all three are design, in every setting. ``letters`` (the letters A-J rendered from fonts that
Debian packages ship, notMNIST-style, fonts split between train / validation / test) is a new domain, never seen by
any design choice: evaluation, in every setting.

A benchmark key is ``<dataset>`` (the clean setting) or ``<dataset>/<setting>``:

* ``weak``: a weak teacher, trained with CE on a fraction of the training split or for few epochs, 60-85% test top-1
  (committed beside the dataset's teacher).
* ``lt10``, ``lt50``: a long-tailed training set, class ``c`` of ``C`` keeps ``n_max * ratio ** (-c / (C - 1))``
  images (imbalance ratio 10 or 50, Cao et al. 2019); validation and test stay balanced; balanced top-1 is
  reported too.
* ``noise20``, ``noise40``: 20% or 40% of the training labels replaced by a class drawn uniformly among the *other*
  classes (symmetric noise, fixed by the seed of the data split); validation and test labels stay clean.

The settings above distil from a teacher trained on clean, balanced data. The ``-shared`` settings (declared on
2026-12-07, later the same day, before any run of them) make the teacher share the corruption:

* ``lt10-shared``, ``lt50-shared``, ``noise20-shared``, ``noise40-shared``: the students' training set of ``lt10``,
  ``lt50``, ``noise20``, ``noise40``, and a teacher trained with CE on exactly that set (the same images and labels),
  with the clean teacher's recipe (committed as ``benchmarks/teacher_shared_<corruption>_<dataset>``).
"""

from __future__ import annotations

DATASET_ROLES = {"animal-mnist": "design", "mnist-5k": "design", "digits": "design", "letters": "evaluation"}
"""Each dataset's role, the same for every setting of it."""

SHARED = "-shared"
"""The suffix of a setting whose teacher was trained on the students' corrupted training set."""
CORRUPTIONS = ("lt10", "lt50", "noise20", "noise40")
"""The changes a setting makes to the students' training set."""
SETTINGS = ("clean", "weak", *CORRUPTIONS, *(c + SHARED for c in CORRUPTIONS))
"""The settings a dataset is run in; ``clean`` is the plain dataset with its strong teacher."""


def parse_key(key: str) -> tuple[str, str]:
    """``(dataset, setting)`` of a benchmark key (``"mnist-5k"`` -> ``("mnist-5k", "clean")``).

    Args:
        key: ``<dataset>`` or ``<dataset>/<setting>``.
    """
    dataset, _, setting = key.partition("/")
    setting = setting or "clean"
    if dataset not in DATASET_ROLES:
        raise ValueError(f"Unknown dataset {dataset!r} in {key!r}; declared: {sorted(DATASET_ROLES)}.")
    if setting not in SETTINGS:
        raise ValueError(f"Unknown setting {setting!r} in {key!r}; declared: {list(SETTINGS)}.")
    return dataset, setting


def role(key: str) -> str:
    """The role (``"design"`` or ``"evaluation"``) of a benchmark key.

    Args:
        key: ``<dataset>`` or ``<dataset>/<setting>``.
    """
    return DATASET_ROLES[parse_key(key)[0]]


def corruption(setting: str) -> str:
    """The change a setting makes to the students' training set: ``"lt50"`` for ``lt50`` and ``lt50-shared``, the
    setting itself for ``clean`` and ``weak`` (which keep it).

    Args:
        setting: a setting of :data:`SETTINGS`.
    """
    return setting.removesuffix(SHARED)
