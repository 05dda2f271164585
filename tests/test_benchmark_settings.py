"""The accuracy benchmark's settings (``benchmarks/settings.py``) and ``letters`` arrays (``benchmarks/letters.py``)."""

import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import load_script

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def settings():
    return load_script(BENCHMARKS / "settings.py", "lkd_benchmark_settings")


@pytest.fixture(scope="module")
def letters():
    return load_script(BENCHMARKS / "letters.py", "lkd_benchmark_letters")


def _splits(n_train: int, num_classes: int = 4, seed: int = 0) -> datasets.DatasetDict:
    """Tiny image splits: ``n_train`` training images (class ``i % num_classes``), 8 validation and 8 test images."""
    rng = np.random.default_rng(seed)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[str(c) for c in range(num_classes)])})

    def split(n: int) -> datasets.Dataset:
        images = rng.integers(0, 256, size=(n, 6, 6), dtype=np.uint8)
        return datasets.Dataset.from_dict({"image": list(images), "label": [i % num_classes for i in range(n)]},
                                          features=features)

    return datasets.DatasetDict({"train": split(n_train), "validation": split(8), "test": split(8)})


@pytest.fixture(name="tiny")
def tiny_fixture(settings, monkeypatch):
    """``settings.load_splits`` answering a fresh copy of the same tiny splits (400 training images, 4 classes)."""
    monkeypatch.setattr(settings, "load_splits", lambda dataset, seed: _splits(400))
    return _splits(400)


def test_long_tail_counts_follow_the_exponential_profile(settings):
    counts = settings.long_tail_counts(10, 200, 10.0)
    assert counts[0] == 200 and counts[-1] == 20
    assert counts == sorted(counts, reverse=True)
    assert counts == [int(200 * 10.0 ** (-c / 9)) for c in range(10)]
    assert settings.long_tail_counts(10, 200, 50.0)[-1] == 4


def test_long_tail_keeps_the_first_images_of_each_class_in_order(settings):
    labels = np.array([0, 1, 0, 2, 1, 0, 2, 0])
    kept = settings.long_tail_indices(labels, [3, 1, 1])
    assert kept.tolist() == [0, 1, 2, 3, 5]
    with pytest.raises(ValueError, match="Class 2 has 2 images"):
        settings.long_tail_indices(labels, [1, 1, 3])


@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_symmetric_noise_flips_exactly_the_rate_never_to_the_same_class(settings, rate):
    labels = np.arange(1000) % 10
    noisy = settings.symmetric_noise(labels, rate, 10, seed=3)
    flipped = noisy != labels
    assert flipped.sum() == round(rate * 1000)
    assert ((noisy >= 0) & (noisy < 10)).all()
    offsets = (noisy[flipped] - labels[flipped]) % 10
    assert set(offsets.tolist()) == set(range(1, 10))  # every other class is drawn, the own class never
    assert np.array_equal(noisy, settings.symmetric_noise(labels, rate, 10, seed=3))
    assert not np.array_equal(noisy, settings.symmetric_noise(labels, rate, 10, seed=4))


def test_the_milder_noise_flips_a_subset_of_the_stronger_ones_to_the_same_classes(settings):
    labels = np.arange(500) % 10
    mild, strong = (settings.symmetric_noise(labels, rate, 10, seed=0) for rate in (0.2, 0.4))
    flipped = mild != labels
    assert np.array_equal(mild[flipped], strong[flipped])


def test_balanced_top1_weighs_every_class_alike(settings):
    labels = np.array([0] * 8 + [1] * 2)
    predicted = np.zeros(10, dtype=np.int64)  # right on the 8 of class 0, wrong on the 2 of class 1
    assert settings.balanced_top1(predicted, labels) == pytest.approx(0.5)
    assert settings.balanced_top1(labels, labels) == 1.0


def _same(a: datasets.Dataset, b: datasets.Dataset) -> bool:
    return a["label"] == b["label"] and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a["image"], b["image"]))


@pytest.mark.parametrize("setting", ["lt10", "lt50"])
def test_long_tailed_setting_changes_only_the_training_set(settings, tiny, setting):
    splits, info = settings.setting_splits(f"mnist-5k/{setting}", 0, 200)
    ratio = settings.IMBALANCE_RATIOS[setting]
    expected = settings.long_tail_counts(4, 50, ratio)
    assert np.bincount(splits["train"]["label"]).tolist() == expected == info["class_counts"]
    assert info["imbalance_ratio"] == ratio and info["train_images"] == sum(expected)
    assert info["balanced_images"] == 200
    assert _same(splits["validation"], tiny["validation"]) and _same(splits["test"], tiny["test"])


@pytest.mark.parametrize("setting", ["noise20", "noise40"])
def test_noisy_setting_flips_training_labels_only(settings, tiny, setting):
    splits, info = settings.setting_splits(f"animal-mnist/{setting}", 0, 200)
    clean = np.asarray(tiny["train"]["label"][:200])
    noisy = np.asarray(splits["train"]["label"])
    rate = settings.NOISE_RATES[setting]
    assert (noisy != clean).mean() == rate == info["flipped_fraction"] == info["noise_rate"]
    assert splits["train"].features["label"] == tiny["train"].features["label"]
    first = [np.asarray(image) for image in splits["train"]["image"][:5]]
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(first, tiny["train"]["image"][:5]))
    assert _same(splits["validation"], tiny["validation"]) and _same(splits["test"], tiny["test"])


@pytest.mark.parametrize("setting", ["clean", "weak"])
def test_clean_and_weak_settings_keep_the_first_training_images(settings, tiny, setting):
    splits, info = settings.setting_splits(f"letters/{setting}", 0, 120)
    assert _same(splits["train"], tiny["train"].select(range(120)))
    assert info == {"setting": setting, "train_images": 120, "class_counts": [30, 30, 30, 30]}


def test_the_weak_setting_uses_the_weak_teacher(settings):
    assert settings.teacher_dir("letters/weak") == settings.WEAK_TEACHER_DIRS["letters"]
    strong = settings.TEACHER_DIRS["letters"]
    assert settings.teacher_dir("letters/noise40") == settings.teacher_dir("letters/lt10") == strong
    with pytest.raises(KeyError):
        settings.teacher_dir("digits/weak")


@pytest.mark.parametrize("change", ["lt10", "lt50", "noise20", "noise40"])
def test_a_shared_setting_trains_students_on_its_corruptions_set_with_its_own_teacher(settings, tiny, change):
    plain, plain_info = settings.setting_splits(f"letters/{change}", 0, 200)
    shared, shared_info = settings.setting_splits(f"letters/{change}-shared", 0, 200)
    assert _same(shared["train"], plain["train"]) and shared["train"]["label"] == plain["train"]["label"]
    assert shared_info == {**plain_info, "setting": f"{change}-shared"}
    folder = settings.teacher_dir(f"mnist-5k/{change}-shared")
    assert Path(folder).name == f"teacher_shared_{change}_mnist-5k"
    assert folder not in (settings.teacher_dir(f"mnist-5k/{change}"), settings.teacher_dir("mnist-5k/weak"))
    with pytest.raises(KeyError, match="no committed teachers"):
        settings.teacher_dir(f"letters/{change}-shared")


def test_committed_shared_teachers_trained_on_their_settings_students_set():
    for key in ("mnist-5k", "animal-mnist"):
        for change in ("lt10", "lt50", "noise20", "noise40"):
            record = json.loads((BENCHMARKS / f"teacher_shared_{change}_{key}" / "teacher.json").read_text())
            assert (record["dataset"], record["setting"]) == (key, f"{change}-shared")
            images = 2000 if change.startswith("noise") else {"lt10": 812, "lt50": 556}[change]
            assert record["train_images"] == images
            assert f"--dataset {key} --shared {change}" in record["command"]


def test_letters_arrays_match_the_manifest_and_fonts_never_share_splits(letters):
    manifest = letters.load_manifest()
    arrays = letters.load_arrays()  # checks the SHA-256
    fonts = manifest["fonts"]
    groups = {}
    for split in letters.SPLITS:
        images, labels, font_ids = (arrays[f"{split}_{k}"] for k in ("images", "labels", "fonts"))
        assert images.shape == (len(labels), 28, 28) and images.dtype == np.uint8
        assert len(labels) == manifest["counts"][split]["images"] == 10 * manifest["counts"][split]["fonts"]
        assert np.bincount(labels).tolist() == [len(labels) // 10] * 10
        assert {fonts[i]["split"] for i in font_ids.tolist()} == {split}
        groups[split] = {fonts[i]["group"] for i in font_ids.tolist()}
    assert not (groups["train"] & groups["validation"] or groups["train"] & groups["test"]
                or groups["validation"] & groups["test"])
    assert len({(f["package"], f["file"]) for f in fonts}) == len(fonts)


def test_letters_refuses_arrays_whose_hash_is_not_the_manifests(letters, tmp_path):
    for name in (letters.ARRAYS_FILE, letters.MANIFEST_FILE):
        shutil.copy(Path(letters.DATA_DIR) / name, tmp_path / name)
    splits = letters.load_letters(seed=0, data_dir=str(tmp_path))
    assert splits["train"].features["label"].names == list("ABCDEFGHIJ")
    with open(tmp_path / letters.ARRAYS_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="SHA-256"):
        letters.load_arrays(str(tmp_path))


@pytest.mark.parametrize("key, option", [("mnist-5k/weak", "--weak"), ("mnist-5k/lt50-shared", "--shared lt50")])
def test_a_missing_weak_or_shared_teacher_is_refused_not_trained_as_a_strong_one(tmp_path, key, option):
    common = load_script(BENCHMARKS / "common.py", "lkd_benchmark_common")
    with pytest.raises(FileNotFoundError, match=option):
        common.Setting(dataset=key, teacher_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("key, epochs", [("mnist-5k/lt50", 6.0 * 2000 / 556), ("mnist-5k/noise40", 6.0),
                                         ("mnist-5k", 6.0), ("mnist-5k/lt50-shared", 6.0 * 2000 / 556)])
def test_a_long_tail_trains_the_steps_of_its_balanced_set(monkeypatch, key, epochs):
    common = load_script(BENCHMARKS / "common.py", "lkd_benchmark_common")
    monkeypatch.setattr(common.Setting, "load_teacher", lambda self: (None, 0.0))
    info = {"train_images": 556, "balanced_images": 2000} if "lt" in key else {"train_images": 2000}
    monkeypatch.setattr(common, "build_data", lambda *args: (None, dict(info)))
    setting = common.Setting(epochs=6.0, dataset=key)
    assert setting.epochs == pytest.approx(epochs)
    assert setting.setting_info.get("epochs", 6.0) == pytest.approx(epochs)
