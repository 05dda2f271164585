"""Image classification data for timm models on the Hugging Face ``Trainer``.

Every loader returns a :class:`datasets.DatasetDict` with the splits ``"train"``, ``"validation"`` and
``"test"`` and the columns ``"image"`` (a :class:`datasets.Image` feature, decoded to PIL images) and
``"label"`` (a :class:`datasets.ClassLabel` with class names):

* ``train``: what the model is trained on;
* ``validation``: held out of the training data, for LKD's meta (validation) steps and for tuning;
* ``test``: the evaluation split, never overlapping ``train`` or ``validation``.

:func:`image_transform` builds the PIL -> tensor transform that a timm model expects (channels, size,
normalisation), :func:`with_transform` applies it on the fly so that examples read
``{"pixel_values": FloatTensor[C, H, W], "labels": int}``, and :class:`ImageCollator` batches them (and checks
the labels against the number of classes, on CPU). :func:`build_datasets` does all of it in one call::

    model = timm.create_model("lkd_convnet_s4", num_classes=10)
    data = build_datasets("animal-mnist", model, augment="light")
    data["train"][0]["pixel_values"].shape  # torch.Size([1, 28, 28])

Modules:

* :mod:`~lkd_hf.data.bundled`: the datasets shipped with installed packages (``animal-mnist``, ``digits``,
  ``mnist-5k``);
* :mod:`~lkd_hf.data.folder`: local image folders (layout check, loading);
* :mod:`~lkd_hf.data.splits`: column detection, class labels and the held-out splits;
* :mod:`~lkd_hf.data.loading`: :func:`load_image_splits` and :func:`build_datasets` over all sources;
* :mod:`~lkd_hf.data.transforms`: the image transforms of a timm model;
* :mod:`~lkd_hf.data.examples`: dataset rows -> model examples (:func:`with_transform`,
  :func:`check_columns`);
* :mod:`~lkd_hf.data.collator`: :class:`ImageCollator`.
"""

from .bundled import (
    ANIMAL_MNIST_CLASS_NAMES,
    ANIMAL_MNIST_SPLIT_SIZES,
    BUNDLED_DATASETS,
    MNIST_5K_SPLIT_SIZES,
    animal_mnist_arrays,
    load_bundled,
)
from .collator import ImageCollator, class_index
from .examples import check_columns, read_labels, with_transform
from .folder import find_empty_class_folders, load_image_folder
from .loading import build_datasets, load_image_splits
from .splits import IMAGE_COLUMNS, LABEL_COLUMNS, dataset_num_classes, standardize_splits
from .transforms import AUGMENTATIONS, ConvertMode, image_transform, resolve_data_config

__all__ = [
    "ANIMAL_MNIST_CLASS_NAMES",
    "ANIMAL_MNIST_SPLIT_SIZES",
    "AUGMENTATIONS",
    "BUNDLED_DATASETS",
    "ConvertMode",
    "IMAGE_COLUMNS",
    "ImageCollator",
    "LABEL_COLUMNS",
    "MNIST_5K_SPLIT_SIZES",
    "animal_mnist_arrays",
    "build_datasets",
    "check_columns",
    "class_index",
    "dataset_num_classes",
    "find_empty_class_folders",
    "image_transform",
    "load_bundled",
    "load_image_folder",
    "load_image_splits",
    "read_labels",
    "resolve_data_config",
    "standardize_splits",
    "with_transform",
]
