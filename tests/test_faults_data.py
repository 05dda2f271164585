"""Data faults are reported early and name what is wrong: unreadable images, empty class folders, silent
resizes, datasets without the columns the Trainer needs."""

import re
import warnings

import datasets
import numpy as np
import pytest
import timm
import torch
from PIL import Image

import lkd_hf.models  # noqa: F401  (registers the models)
from lkd_hf.data import build_datasets, check_columns, image_transform, load_image_splits, with_transform
from lkd_hf.data.transforms import _ResizeNotice


def make_image_folder(root, classes=("cats", "dogs"), per_class=4, size=(20, 20)):
    rng = np.random.default_rng(0)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def read_all(splits):
    for ds in splits.values():
        for i in range(len(ds)):
            ds[i]


# ----------------------------------------------------------------------------------------------------------------------
# Unreadable images
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_truncated_image_is_reported_with_its_path(tmp_path, suffix):
    root = make_image_folder(tmp_path / "images")
    bad = root / "dogs" / f"broken{suffix}"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(bad)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    splits = build_datasets(
        str(root), {"input_size": (3, 20, 20)}, val_fraction=0.2, augment="none", cache_dir=str(tmp_path / "c")
    )
    with pytest.raises(OSError, match=re.escape(str(bad))) as info:
        read_all(splits)
    assert "truncated" in str(info.value)


# ----------------------------------------------------------------------------------------------------------------------
# Empty class folders
# ----------------------------------------------------------------------------------------------------------------------


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = make_image_folder(tmp_path / "images")
    (root / "birds").mkdir()
    (root / "birds" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=re.escape(str(root / "birds"))) as info:
        load_image_splits(str(root), cache_dir=str(tmp_path / "c"))
    assert "without any image" in str(info.value)


def test_an_empty_class_folder_in_every_split_is_an_error(tmp_path):
    root = tmp_path / "images"
    for split in ("train", "test"):
        make_image_folder(root / split)
        (root / split / "birds").mkdir()
    with pytest.raises(ValueError) as info:
        load_image_splits(str(root), cache_dir=str(tmp_path / "c"))
    message = str(info.value)
    assert str(root / "train" / "birds") in message and str(root / "test" / "birds") in message


def test_a_class_with_images_in_another_split_and_hidden_folders_are_fine(tmp_path):
    root = tmp_path / "images"
    make_image_folder(root / "train", classes=("birds", "cats", "dogs"))
    make_image_folder(root / "test")
    (root / "test" / "birds").mkdir()  # empty here, but the class has training images
    (root / "train" / ".ipynb_checkpoints").mkdir()
    splits = load_image_splits(str(root), val_fraction=0.2, cache_dir=str(tmp_path / "c"))
    assert splits["train"].features["label"].names == ["birds", "cats", "dogs"]


# ----------------------------------------------------------------------------------------------------------------------
# Resizing to the model's input size
# ----------------------------------------------------------------------------------------------------------------------


def test_a_resize_to_the_model_input_size_is_announced_once(tmp_path, monkeypatch):
    monkeypatch.setattr(_ResizeNotice, "announced", False)
    root = make_image_folder(tmp_path / "images", size=(64, 64))
    model = timm.create_model("lkd_convnet_s4", num_classes=2)  # 1x28x28 input
    splits = build_datasets(str(root), model, val_fraction=0.2, augment="light", cache_dir=str(tmp_path / "c"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_all(splits)
        read_all(splits)
    notices = [w for w in caught if "resized" in str(w.message)]
    assert len(notices) == 1, [str(w.message) for w in caught]
    message = str(notices[0].message)
    assert "64x64" in message and "28x28" in message
    assert "pretrained_cfg_overlay=dict(input_size=(1, 64, 64))" in message
    assert splits["test"][0]["pixel_values"].shape == (1, 28, 28)


def test_the_announced_overlay_keeps_the_image_size(monkeypatch):
    monkeypatch.setattr(_ResizeNotice, "announced", False)
    model = timm.create_model(
        "lkd_convnet_s4", num_classes=2, pretrained_cfg_overlay=dict(input_size=(1, 64, 64))
    )
    image = Image.fromarray(np.zeros((64, 64), dtype=np.uint8), mode="L")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = image_transform(model, is_training=False)(image)
    assert x.shape == (1, 64, 64)
    with torch.no_grad():
        assert model(x[None]).shape == (1, 2)


# ----------------------------------------------------------------------------------------------------------------------
# Columns the Trainer needs
# ----------------------------------------------------------------------------------------------------------------------


def tensor_dataset(**columns):
    return datasets.Dataset.from_dict(columns).with_format("torch")


def test_check_columns_names_the_split_and_the_columns_without_labels():
    ds = tensor_dataset(pixel_values=[np.zeros((1, 4, 4))] * 2, target=[0, 1])
    with pytest.raises(ValueError, match=r"train_dataset.*labels.*\['pixel_values', 'target'\]"):
        check_columns(ds, "train_dataset")


def test_check_columns_asks_for_a_transform_on_raw_images():
    raw = load_image_splits("digits")["validation"]
    with pytest.raises(ValueError, match=r"eval_dataset.*pixel_values.*with_transform.*\['image', 'label'\]"):
        check_columns(raw, "eval_dataset")


def test_check_columns_sees_through_with_transform():
    splits = load_image_splits("digits")
    transform = image_transform({"input_size": (1, 8, 8)}, is_training=False)
    check_columns(with_transform(splits["train"], transform), "train_dataset")
    unlabelled = with_transform(splits["test"].remove_columns("label"), transform)
    with pytest.raises(ValueError, match=r"test.*no 'labels'.*\['pixel_values'\]"):
        check_columns(unlabelled, "test")


def test_check_columns_accepts_ready_datasets_and_checks_each_of_a_mapping():
    ready = build_datasets("digits", {"input_size": (1, 8, 8)}, augment="none")
    check_columns(ready["train"], "train_dataset")
    check_columns(tensor_dataset(pixel_values=[np.zeros((1, 4, 4))], label=[0]), "train_dataset")
    check_columns(torch.utils.data.TensorDataset(torch.zeros(2, 1, 4, 4)), "train_dataset")  # unknown: unchecked
    bad = tensor_dataset(pixel_values=[np.zeros((1, 4, 4))])
    with pytest.raises(ValueError, match=r"eval_dataset/extra"):
        check_columns({"test": ready["test"], "extra": bad}, "eval_dataset")
    with pytest.raises(ValueError, match=r"train_dataset split is empty"):
        check_columns(ready["train"].select([]), "train_dataset")
