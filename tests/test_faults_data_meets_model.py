"""Data meets the model before training: classes, labels, channels and image modes are checked when the trainer is
built (or when an image is converted), each mismatch an error naming the dataset and the fix."""

import io
import threading

import datasets
import numpy as np
import pytest
import timm
import torch
import torch.autograd.forward_ad as fwAD
from PIL import Image
from torch import nn

from lkd_hf import LKDTrainer
from lkd_hf.data import ConvertMode, ImageCollator, image_transform, with_transform


def _trainer(tmp_path, make_config, make_models, train, eval_dataset=None, num_classes=10, **fields):
    student, teacher = make_models(num_classes)
    return LKDTrainer(model=student, teacher=teacher, args=make_config(tmp_path, **{"loss": "kd", **fields}),
                      train_dataset=train, eval_dataset=eval_dataset)


# --- classes of the data vs the models' outputs ----------------------------------------------------------------------
@pytest.mark.parametrize("data_classes, model_classes", [(3, 10), (10, 12)])
def test_data_of_fewer_classes_than_the_models_is_an_error(tmp_path, make_config, make_dataset, make_models,
                                                           data_classes, model_classes):
    with pytest.raises(ValueError, match=rf"train_dataset has labels of {data_classes} classes .* predict "
                                         rf"{model_classes}: .*num_classes={data_classes}.*ClassLabel"):
        _trainer(tmp_path, make_config, make_models, make_dataset(64, num_classes=data_classes),
                 num_classes=model_classes)


def test_fewer_classes_declared_on_purpose_is_a_warning(tmp_path, make_config, make_dataset, make_models):
    train = make_dataset(64, num_classes=3).cast_column("labels", datasets.ClassLabel(num_classes=10))
    with pytest.warns(UserWarning, match="train_dataset has labels of 3 of the 10 classes"):
        _trainer(tmp_path, make_config, make_models, train)


def test_a_class_label_of_another_number_of_classes_is_an_error(tmp_path, make_config, make_dataset, make_models):
    train = make_dataset(64, num_classes=10).cast_column("labels", datasets.ClassLabel(num_classes=12))
    with pytest.raises(ValueError, match=r"train_dataset declares 12 classes .* predict 10. Create them with "
                                         "num_classes=12"):
        _trainer(tmp_path, make_config, make_models, train)


def test_labels_beyond_the_models_classes_are_an_error_at_construction(tmp_path, make_config, make_dataset,
                                                                       make_models):
    with pytest.raises(ValueError, match=r"eval_dataset has labels \[10, 11\] outside \[0, 10\)"):
        _trainer(tmp_path, make_config, make_models, make_dataset(64),
                 eval_dataset=make_dataset(32, num_classes=12))


# --- labels that are not class indices -------------------------------------------------------------------------------
def test_a_fractional_label_is_an_error_in_the_collator():
    example = {"pixel_values": torch.zeros(1, 2, 2)}
    with pytest.raises(ValueError, match=r"The label 3\.5 is not a class index"):
        ImageCollator(num_classes=10)([{**example, "labels": 2}, {**example, "labels": 3.5}])
    with pytest.raises(ValueError, match="The label tensor\\(3.5000\\) is not a class index"):
        ImageCollator()([{**example, "labels": torch.tensor(3.5)}])
    batch = ImageCollator(num_classes=10)([{**example, "labels": 3.0}, {**example, "labels": np.int64(2)}])
    assert batch["labels"].tolist() == [3, 2]


def test_a_fractional_label_column_is_an_error_at_construction(tmp_path, make_config, make_dataset, make_models):
    data = make_dataset(64)
    train = data.cast_column("labels", datasets.Value("float32")).map(
        lambda row, i: {"labels": 3.5 if i == 5 else row["labels"]}, with_indices=True)
    with pytest.raises(ValueError, match=r"train_dataset has labels that are not class indices \(\[3\.5\]\)"):
        _trainer(tmp_path, make_config, make_models, train.with_format("torch"))


def test_with_transform_refuses_a_fractional_label():
    raw = datasets.Dataset.from_dict({"image": [np.zeros((4, 4), np.uint8)], "label": [1.5]})
    data = with_transform(raw, image_transform({"input_size": (1, 4, 4)}, is_training=False))
    with pytest.raises(ValueError, match=r"The label 1\.5 is not a class index"):
        data[0]


# --- images of more than 8 bits ---------------------------------------------------------------------------------------
def _png_16_bit() -> Image.Image:
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_16_bit_grayscale_png_keeps_its_contrast(mode):
    image = _png_16_bit()
    assert image.mode == "I;16"
    converted = np.asarray(ConvertMode(mode)(image), dtype=np.float64)
    expected = np.round(np.asarray(image, dtype=np.float64) / 257)
    assert converted.min() == 0 and converted.max() == 255
    assert np.abs(converted - (expected[..., None] if mode == "RGB" else expected)).max() <= 1
    assert abs(converted.mean() / 255 - 0.5) < 0.01  # PIL's own convert("L") gives 0.998: almost white


@pytest.mark.parametrize("values, expected", [
    (np.array([[0, 65535]], np.uint16), [0, 255]),  # 16-bit array
    (np.array([[0.0, 0.5, 1.0]], np.float32), [0, 128, 255]),  # floats in 0..1
    (np.array([[0.0, 127.0, 255.0]], np.float32), [0, 127, 255]),  # floats in 0..255
    (np.array([[0, 200]], np.int32), [0, 200]),  # 32-bit integers in 0..255
    (np.array([[0, 1000, 65535]], np.int32), [0, 4, 255]),  # 32-bit integers of 16-bit data
])
def test_wide_images_convert_by_their_range(values, expected):
    assert np.asarray(ConvertMode("L")(values)).ravel().tolist() == expected
    assert np.asarray(ConvertMode("L")(Image.fromarray(values))).ravel().tolist() == expected


def test_values_outside_every_range_are_an_error():
    with pytest.raises(ValueError, match=r"Cannot convert a float64 array with values in \[-1, 2\] to 8 bits"):
        ConvertMode("L")(np.array([[-1.0, 2.0]]))


# --- the population's eval set, channels and shapes at construction ----------------------------------------------
def test_the_population_eval_set_of_other_channels_fails_at_construction(tmp_path, make_config, make_dataset):
    student = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    teacher = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    train = make_dataset(64).map(lambda row: {"pixel_values": row["pixel_values"][:1]}).with_format("torch")
    args = make_config(tmp_path, loss="lkd", population_temperature_factors=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"The student \(ResNet\) cannot take the examples of eval_dataset: "
                                         r"pixel_values of shape \(3, 32, 32\), and the student takes 1-channel "
                                         r"images.* in_chans=3"):
        LKDTrainer(model=student, teacher=teacher, args=args, train_dataset=train, eval_dataset=make_dataset(16))


def test_a_teacher_of_other_channels_is_named(tmp_path, make_config, make_dataset):
    student = timm.create_model("test_resnet", num_classes=10)
    teacher = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    with pytest.raises(ValueError, match=r"The teacher \(ResNet\) cannot take the examples of train_dataset"):
        LKDTrainer(model=student, teacher=teacher, args=make_config(tmp_path, loss="kd"),
                   train_dataset=make_dataset(64))


def test_two_dimensional_inputs_are_a_data_error_at_construction(tmp_path, make_config, make_dataset, make_models):
    flat = datasets.Dataset.from_dict({"pixel_values": np.zeros((8, 32, 32), np.float32),
                                       "labels": np.arange(8) % 10}).with_format("torch")
    with pytest.raises(ValueError, match=r"cannot take the examples of train_dataset: pixel_values of shape \(32, 32\)"
                                         r".* Examples must be images"):
        _trainer(tmp_path, make_config, make_models, flat)


# --- the unrolled dry run tells its causes apart ------------------------------------------------------------------
class NoDoubleBackwardNet(nn.Module):
    num_classes = 10

    def __init__(self, in_chans: int = 3) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(in_chans, 4, 3), nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.functional.hardsigmoid(self.conv(x)).mean((2, 3)))  # no double backward in torch


def test_unrolled_on_data_the_student_does_not_take_reports_the_data_not_double_backward(tmp_path, make_config):
    from lkd_hf.run_checks import check_unrolled_support

    with pytest.raises(ValueError, match=r"does not take inputs of shape \(2, 3, 8, 8\) .*a mismatch of the data and "
                                         "the model, not of hypergradient='unrolled'"):
        check_unrolled_support(NoDoubleBackwardNet(in_chans=1), (3, 8, 8))
    with pytest.raises(ValueError, match="does not support .*finite_difference"):
        check_unrolled_support(NoDoubleBackwardNet(in_chans=1), (1, 8, 8))


def test_unrolled_while_another_thread_uses_forward_mode_ad_says_so():
    from lkd_hf.run_checks import check_unrolled_support

    entered, release = threading.Event(), threading.Event()

    def hold_a_dual_level():
        with fwAD.dual_level():
            entered.set()
            release.wait(30)

    thread = threading.Thread(target=hold_a_dual_level)
    thread.start()
    entered.wait(30)
    try:
        with pytest.raises(RuntimeError, match="forward-mode AD is in use elsewhere in this process"):
            check_unrolled_support(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten()), (3, 8, 8))
    finally:
        release.set()
        thread.join()
    check_unrolled_support(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten()), (3, 8, 8))  # fine once it is done
