"""Local image folders (``<dir>/<class>/<image>``, optionally in split folders): layout check and loading."""

from __future__ import annotations

import os

import datasets

__all__ = ["find_empty_class_folders", "load_image_folder"]

_METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")


def _image_extensions() -> frozenset[str]:
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    return frozenset(ext.lower() for ext in ImageFolder.EXTENSIONS)


def _ignored(name: str) -> bool:
    """Hidden and ``__``-prefixed entries, which ``datasets`` skips when it lists data files."""
    return name.startswith((".", "__"))


def find_empty_class_folders(root: str) -> list[str]:
    """Class folders of an image folder that hold no image, so that ``imagefolder`` would drop their class.

    ``datasets``' ``imagefolder`` names each image's class after the folder holding it. A class folder is a
    folder beside one that holds images (e.g. ``<root>/birds`` beside ``<root>/cats/0.png``, or
    ``<root>/train/birds`` beside ``<root>/train/cats/0.png``); it is empty when no folder of the same name
    holds an image directly, in any split. An image folder with a ``metadata.*`` file (labels from metadata)
    is not checked, hidden and ``__``-prefixed entries are skipped. Only directory listings are read, no
    image.

    Args:
        root: the image folder.

    Returns:
        The paths of the empty class folders, sorted.
    """
    extensions = _image_extensions()
    root = os.path.normpath(root)
    label_dirs: set[str] = set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        subfolders[:] = [name for name in subfolders if not _ignored(name)]
        if any(name in _METADATA_FILES for name in files):
            return []
        if folder != root and any(
            os.path.splitext(name)[1].lower() in extensions for name in files if not _ignored(name)
        ):
            label_dirs.add(folder)
    class_names = {os.path.basename(folder) for folder in label_dirs}
    empty = set()
    for parent in {os.path.dirname(folder) for folder in label_dirs}:
        for entry in os.scandir(parent):
            if entry.is_dir() and not _ignored(entry.name) and entry.name not in class_names:
                empty.add(entry.path)
    return sorted(empty)


def load_image_folder(root: str, cache_dir: str | None = None) -> datasets.DatasetDict:
    """``datasets.load_dataset("imagefolder", data_dir=root)``, refusing class folders without images.

    Args:
        root: the image folder, ``<root>/<class>/<image>`` or ``<root>/<split>/<class>/<image>``.
        cache_dir: ``datasets`` cache directory (default: ``datasets``' own).

    Raises:
        ValueError: a class folder holds no image (see :func:`find_empty_class_folders`); loading would drop
            its class and shift the class ids of the others.
    """
    empty = find_empty_class_folders(root)
    if empty:
        raise ValueError(
            f"The image folder {root!r} has class folder(s) without any image: {empty}. Their classes would "
            "be dropped, changing the number of classes and the class ids of the others (e.g. against a "
            "teacher trained on all classes). Add images to them or remove them."
        )
    return datasets.load_dataset("imagefolder", data_dir=root, cache_dir=cache_dir)
