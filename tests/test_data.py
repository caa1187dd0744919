import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bnstudy.data.datasets import (
    DATASETS,
    Split,
    hold_out,
    load_dataset,
    read_cifar_batch,
    read_idx,
)
from bnstudy.data.loader import GpuLoader, random_crop
from bnstudy.errors import DatasetError
from tests.helpers import (
    CIFAR_FILES,
    FASHION_MNIST,
    write_cifar_batch,
    write_fashion_mnist,
    write_idx,
)

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_fashion_mnist_reads_the_installed_debian_files():
    # CI installs dataset-fashion-mnist, so this test must run there, never skip.
    train, test = load_dataset("fashion_mnist", FASHION_MNIST, False, None, None)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))
    # The documented normalization constants are those of these very images.
    pixels = train.images.float() / 255
    assert pixels.mean().item() == pytest.approx(DATASETS["fashion_mnist"].mean[0], abs=1e-3)
    assert pixels.std().item() == pytest.approx(DATASETS["fashion_mnist"].std[0], abs=1e-3)


def test_subsets_keep_the_first_images():
    train, test = load_dataset("fashion_mnist", FASHION_MNIST, False, 100, 30)
    full, _ = load_dataset("fashion_mnist", FASHION_MNIST, False, None, None)
    assert len(train.labels) == 100 and len(test.labels) == 30
    assert torch.equal(train.images, full.images[:100])


def test_idx_reader_returns_the_written_array(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), array)


def test_idx_reader_refuses_a_truncated_file(tmp_path):
    array = np.zeros((5, 2, 2), dtype=np.uint8)
    write_idx(tmp_path / "x.gz", array)
    data = gzip.decompress((tmp_path / "x.gz").read_bytes())[:-3]
    (tmp_path / "x.gz").write_bytes(gzip.compress(data))
    with pytest.raises(DatasetError, match="header says"):
        read_idx(tmp_path / "x.gz")


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", tmp_path, False, None, None)


def test_cifar10_reads_the_official_batch_format(tiny_cifar):
    train, test = load_dataset("cifar10", tiny_cifar, False, None, None)
    assert train.images.shape == (40, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (8, 3, 32, 32)
    with open(tiny_cifar / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    expected = torch.from_numpy(raw[b"data"].reshape(8, 3, 32, 32))
    assert torch.equal(train.images[8:16], expected)
    assert train.labels[8:16].tolist() == raw[b"labels"]


def test_cifar10_root_may_name_the_batches_folder_itself(tiny_cifar):
    train, _ = load_dataset("cifar10", tiny_cifar / "cifar-10-batches-py", False, None, None)
    assert len(train.labels) == 40


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_tampered_cifar_batch_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({b"data": _Exploit(), b"labels": [1]}, f, protocol=2)
    with pytest.raises(DatasetError, match="refusing to load posix.system"):
        read_cifar_batch(path)
    assert not (tmp_path / "pwned").exists()


def test_cifar_batch_with_wrong_shape_is_refused(tmp_path):
    path = tmp_path / "data_batch_1"
    write_cifar_batch(path, np.zeros((2, 3, 16, 16), dtype=np.uint8), [0, 1])
    with pytest.raises(DatasetError, match="do not match CIFAR-10"):
        read_cifar_batch(path)


def test_missing_cifar10_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(DatasetError, match=r"cifar-10-batches-py: data_batch_1.*dataset.root"):
        load_dataset("cifar10", tmp_path, False, None, None)


def test_cifar_file_names_are_the_official_ones():
    from torchvision.datasets import CIFAR10

    assert [n for n, _ in CIFAR10.train_list + CIFAR10.test_list] == CIFAR_FILES


# ----------------------------------------------------------------------------- the loader


def numbered_split(n: int = 10, size: int = 6) -> Split:
    """Image i is filled with the value i, so a batch tells which images it holds."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, size, size)
    return Split(images.contiguous(), torch.arange(n))


def loader(split: Split, seed: int = 0, augment: bool = False, batch_size: int = 4) -> GpuLoader:
    gen = torch.Generator().manual_seed(seed)
    return GpuLoader(
        split, DATASETS["fashion_mnist"], batch_size, torch.device("cpu"), True, augment, gen
    )


def test_training_epoch_is_a_seeded_permutation_without_the_last_partial_batch():
    batches = list(loader(numbered_split()))
    assert len(batches) == 2 and all(len(y) == 4 for _, y in batches)
    seen = torch.cat([y for _, y in batches])
    assert len(set(seen.tolist())) == 8
    again = torch.cat([y for _, y in loader(numbered_split())])
    assert torch.equal(seen, again)
    other = torch.cat([y for _, y in loader(numbered_split(), seed=1)])
    assert not torch.equal(seen, other)


def test_epochs_are_shuffled_differently():
    data = loader(numbered_split())
    first = torch.cat([y for _, y in data])
    second = torch.cat([y for _, y in data])
    assert not torch.equal(first, second)


def test_images_are_normalized_with_the_dataset_mean_and_std():
    spec = DATASETS["fashion_mnist"]
    x, y = next(iter(loader(numbered_split())))
    expected = (y.float().view(-1, 1, 1, 1) / 255 - spec.mean[0]) / spec.std[0]
    torch.testing.assert_close(x, expected.expand_as(x))


def test_evaluation_keeps_order_and_the_last_partial_batch():
    data = GpuLoader(numbered_split(), DATASETS["fashion_mnist"], 4, torch.device("cpu"), False)
    labels = [y.tolist() for _, y in data]
    assert labels == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_random_crop_offsets_move_the_image_inside_zero_padding():
    image = torch.arange(1, 17, dtype=torch.uint8).view(1, 1, 4, 4)
    images = image.expand(3, 1, 4, 4).contiguous()
    shifts = torch.tensor([[2, 2], [0, 0], [4, 1]])  # pad 2: (2, 2) is the original
    out = random_crop(images, shifts, pad=2)
    assert torch.equal(out[0], image[0])
    padded = torch.nn.functional.pad(image, (2, 2, 2, 2))[0]
    assert torch.equal(out[1], padded[:, 0:4, 0:4])
    assert torch.equal(out[2], padded[:, 4:8, 1:5])


def test_augmented_batches_are_crops_or_flips_of_their_images():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=g)
    split = Split(images, torch.arange(16))
    spec = DATASETS["cifar10"]
    data = GpuLoader(
        split, spec, 16, torch.device("cpu"), True, True, torch.Generator().manual_seed(3), pad=2
    )
    x, y = next(iter(data))
    std, mean = torch.tensor(spec.std).view(3, 1, 1), torch.tensor(spec.mean).view(3, 1, 1)
    pixels = ((x * std + mean) * 255).round().to(torch.uint8)
    flipped = 0
    for out, label in zip(pixels, y, strict=True):
        padded = torch.nn.functional.pad(images[label], (2, 2, 2, 2))
        crops = [padded[:, i : i + 8, j : j + 8] for i in range(5) for j in range(5)]
        if any(torch.equal(out, c) for c in crops):
            continue
        assert any(torch.equal(out.flip(2), c) for c in crops)
        flipped += 1
    assert 0 < flipped < 16


# ------------------------------------------------------------------ damaged files, one line each


def test_flipped_bytes_in_a_gzip_file_are_a_dataset_error(tmp_path):
    folder = write_fashion_mnist(tmp_path / "fm")
    path = folder / "train-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    for i in range(20, 60):  # inside the deflate stream, past the gzip header
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz: cannot read"):
        read_idx(path)


def test_an_idx_header_with_an_absurd_dimension_count_is_refused(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros((2, 3), dtype=np.uint8), ndim=200)
    with pytest.raises(DatasetError, match=r"x.gz: damaged idx header \(200 dimensions\)"):
        read_idx(tmp_path / "x.gz")


def test_labels_outside_the_class_range_are_refused(tmp_path):
    folder = write_fashion_mnist(tmp_path / "fm")
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.full(32, 12))
    with pytest.raises(DatasetError, match=r"test labels of fashion_mnist lie outside 0\.\.9"):
        load_dataset("fashion_mnist", folder, False, None, None)


def test_a_damaged_cifar_batch_is_one_dataset_error(tmp_path, tiny_cifar):
    path = tiny_cifar / "cifar-10-batches-py" / "data_batch_1"
    data = bytearray(path.read_bytes())
    data[10:40] = bytes(30)
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="data_batch_1: not a CIFAR-10 python batch"):
        read_cifar_batch(path)


def test_a_one_channel_batch_is_nchw_unless_channels_last_is_asked():
    # A crop of 1-channel images comes out with channels_last strides that count as contiguous;
    # the loader must still hand NCHW batches to the model (the AVX2 crash runs channels_last).
    split = Split(torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8), torch.zeros(8).long())
    spec = DATASETS["fashion_mnist"]
    for fmt, strides in [
        (torch.contiguous_format, (784, 784, 28, 1)),
        (torch.channels_last, (784, 1, 28, 1)),
    ]:
        generator = torch.Generator().manual_seed(0)
        loader = GpuLoader(
            split, spec, 4, torch.device("cpu"), train=True, generator=generator, memory_format=fmt
        )
        x, _ = next(iter(loader))
        assert x.stride() == strides


def test_the_validation_split_is_fixed_by_its_own_seed_and_disjoint_from_training():
    split = numbered_split(n=50)
    train, val = hold_out(split, 10, seed=0)
    again, val_again = hold_out(split, 10, seed=0)
    _, other = hold_out(split, 10, seed=1)
    assert torch.equal(val.labels, val_again.labels) and torch.equal(train.labels, again.labels)
    assert not torch.equal(val.labels, other.labels)
    assert len(train.labels) == 40 and len(val.labels) == 10
    assert set(train.labels.tolist()) | set(val.labels.tolist()) == set(range(50))
    assert not set(train.labels.tolist()) & set(val.labels.tolist())
    assert hold_out(split, 0, seed=0) == (split, None)
