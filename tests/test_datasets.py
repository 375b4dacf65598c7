"""The dataset plugins: shapes, ranges, seeded stratified splits, file parsing and its errors."""

from __future__ import annotations

import gzip
import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import diffcore
from diffcore import plugins
from diffcore.data import DiffusionDataset, load_dataset
from diffcore.data.images import digits, read_idx

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-t10k"
MNIST_IMAGES = MNIST / "t10k-images-idx3-ubyte.gz"
MNIST_LABELS = MNIST / "t10k-labels-idx1-ubyte.gz"
MNIST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
needs_mnist = pytest.mark.skipif(not MNIST_LABELS.is_file(), reason=f"{MNIST} is absent")


@pytest.fixture(scope="module")
def digits0() -> DiffusionDataset:
    return load_dataset("digits")


def assert_stratified(ds: DiffusionDataset, holdout: float) -> None:
    """Every class is held out in proportion, to within one sample."""
    assert ds.train_labels is not None and ds.test_labels is not None
    train = torch.bincount(ds.train_labels, minlength=ds.num_classes)
    test = torch.bincount(ds.test_labels, minlength=ds.num_classes)
    assert ((test - holdout * (train + test)).abs() <= 1.0).all(), (train.tolist(), test.tolist())


def assert_json(ds: DiffusionDataset) -> None:
    assert json.loads(json.dumps(ds.meta)) == ds.meta


# --------------------------------------------------------------------------- registry, common options


def test_builtins_are_registered_by_the_datasets_plugin() -> None:
    assert diffcore.get("datasets", "digits") is digits
    assert {"digits", "mnist-idx", "image-folder", "tabular"} <= set(diffcore.available("datasets"))
    assert plugins.registered_by("datasets", "tabular") == "datasets"


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="no-such-set.*digits.*image-folder.*mnist-idx.*tabular"):
        load_dataset("no-such-set")


@pytest.mark.parametrize(
    ("option", "value"),
    [("holdout", 0), ("holdout", 1.0), ("holdout", -0.1), ("holdout", "0.2"), ("limit", 1), ("seed", "a")],
)
def test_bad_common_options_raise_naming_the_value(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"{option}.*{value!r}"):
        load_dataset("digits", **{option: value})


# --------------------------------------------------------------------------- digits


def test_digits_shapes_range_split_and_meta(digits0: DiffusionDataset) -> None:
    ds = digits0
    assert (ds.name, ds.kind, ds.shape, ds.num_classes) == ("digits", "image", (1, 8, 8), 10)
    assert ds.class_names == [str(k) for k in range(10)]
    assert len(ds.train) + len(ds.test) == 1797 and len(ds.test) == round(0.2 * 1797)
    assert ds.train.dtype == torch.float32 and ds.train_labels.dtype == torch.int64
    for x in (ds.train, ds.test):
        assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert torch.allclose((ds.train + 1) * 8, ((ds.train + 1) * 8).round(), atol=1e-5)  # 0..16 steps
    assert_stratified(ds, 0.2)
    assert {"channels": 1, "height": 8, "width": 8, "value_range": [-1, 1]}.items() <= ds.meta.items()
    assert ds.meta["options"] == {"seed": 0, "holdout": 0.2, "limit": None}
    assert_json(ds)


def test_digits_is_deterministic_per_seed(digits0: DiffusionDataset) -> None:
    again, other = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(again.train, digits0.train) and torch.equal(again.test_labels, digits0.test_labels)
    assert not torch.equal(other.train[:50], digits0.train[:50])
    # Same data, just split differently: the sorted pixel sums match.
    total = lambda d: torch.cat([d.train, d.test]).sum(dim=(1, 2, 3)).sort().values  # noqa: E731
    assert torch.equal(total(other), total(digits0))


def test_holdout_and_limit(digits0: DiffusionDataset) -> None:
    ds = load_dataset("digits", holdout=0.5, limit=200, seed=3)
    assert (len(ds.train), len(ds.test)) == (100, 100)
    assert_stratified(ds, 0.5)


def test_image_round_trip(digits0: DiffusionDataset) -> None:
    raw = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    x = digits0.to_model_space(raw)
    assert x.dtype == torch.float32 and float(x.min()) >= -1 and float(x.max()) <= 1
    assert torch.equal(digits0.from_model_space(x), raw)
    assert torch.allclose(digits0.to_model_space(raw.float() / 255), x, atol=1e-6)  # [0, 1] floats
    assert torch.allclose(digits0.from_model_space(x, uint8=False), raw.float() / 255, atol=1e-6)
    back = digits0.to_model_space(digits0.from_model_space(digits0.train[:10]))
    assert (back - digits0.train[:10]).abs().max() <= 1 / 255 + 1e-6
    assert digits0.from_model_space(torch.full((1, 8, 8), 3.0)).max() == 255  # clamped, one sample
    with pytest.raises(ValueError, match=r"\(8, 8, 1\)"):
        digits0.to_model_space(torch.zeros(8, 8, 1))


def test_subset_is_small_stratified_and_seeded(digits0: DiffusionDataset) -> None:
    small = digits0.subset(200, seed=1)
    assert (len(small.train), len(small.test)) == (200, 50)
    assert small.meta["subset"] == {"n": 200, "seed": 1} and "subset" not in digits0.meta
    train = torch.bincount(small.train_labels, minlength=10)
    assert ((train - 20).abs() <= 2).all()
    assert torch.equal(digits0.subset(200, seed=1).train, small.train)
    assert not torch.equal(digits0.subset(200, seed=2).train, small.train)
    assert len(digits0.subset(10**6).train) == len(digits0.train)
    with pytest.raises(ValueError, match="n must be"):
        digits0.subset(0)


def test_dataclass_validates_its_fields() -> None:
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="kind"):
        DiffusionDataset("t", "audio", x, None, x, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="float32"):
        DiffusionDataset("t", "tabular", x.double(), None, x, None)
    with pytest.raises(ValueError, match="outside"):
        labels = torch.tensor([0, 1, 2, 3])
        DiffusionDataset("t", "tabular", x, labels, x, labels, 2, ["a", "b"])


# --------------------------------------------------------------------------- mnist-idx


def write_idx(path: Path, array: np.ndarray, type_byte: int = 0x08) -> Path:
    header = bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())
    return path


@pytest.fixture(scope="module")
def mnist() -> DiffusionDataset:
    return load_dataset("mnist-idx", images=MNIST_IMAGES, labels=MNIST_LABELS)


@needs_mnist
def test_mnist_full_file(mnist: DiffusionDataset) -> None:
    assert (mnist.shape, mnist.num_classes, len(mnist.train), len(mnist.test)) == ((1, 28, 28), 10, 8000, 2000)
    counts = torch.bincount(torch.cat([mnist.train_labels, mnist.test_labels]), minlength=10)
    assert counts.tolist() == MNIST_COUNTS
    assert_stratified(mnist, 0.2)
    assert float(mnist.train.min()) == -1.0 and float(mnist.train.max()) == 1.0
    assert mnist.meta["options"]["images"] == str(MNIST_IMAGES)
    assert_json(mnist)


@needs_mnist
def test_mnist_plain_copy_resize_and_seed(tmp_path: Path) -> None:
    plain = tmp_path / "images-idx3-ubyte"
    plain.write_bytes(gzip.decompress(MNIST_IMAGES.read_bytes()))
    a = load_dataset("mnist-idx", images=plain, limit=300, seed=5)
    b = load_dataset("mnist-idx", images=MNIST_IMAGES, limit=300, seed=5)
    assert torch.equal(a.train, b.train) and a.train_labels is None and a.num_classes == 0
    assert not torch.equal(load_dataset("mnist-idx", images=plain, limit=300, seed=6).train, a.train)
    small = load_dataset("mnist-idx", images=plain, labels=MNIST_LABELS, size=14, limit=300)
    assert small.shape == (1, 14, 14) and small.meta["height"] == 14
    assert float(small.train.min()) >= -1 and float(small.train.max()) <= 1
    assert_stratified(small, 0.2)


@needs_mnist
def test_mnist_truncated_files_raise_naming_them(tmp_path: Path) -> None:
    raw = gzip.decompress(MNIST_IMAGES.read_bytes())
    cut = tmp_path / "cut-idx3-ubyte"
    cut.write_bytes(raw[:-100])
    with pytest.raises(ValueError, match="cut-idx3-ubyte.*truncated"):
        load_dataset("mnist-idx", images=cut)
    cut_gz = tmp_path / "cut.gz"
    cut_gz.write_bytes(MNIST_IMAGES.read_bytes()[:5000])
    with pytest.raises(ValueError, match="cut.gz"):
        load_dataset("mnist-idx", images=cut_gz)
    with pytest.raises(ValueError, match="t10k-labels.*expected unsigned bytes of shape \\(100,\\)"):
        few = write_idx(tmp_path / "few", np.zeros((100, 4, 4), np.uint8))
        load_dataset("mnist-idx", images=few, labels=MNIST_LABELS)


def test_idx_parsing_and_its_errors(tmp_path: Path) -> None:
    values = np.arange(-6, 6, dtype=">i2").reshape(3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "short", values, 0x0B)), values)
    bad = tmp_path / "bad-magic"
    bad.write_bytes(b"\x08\x03\x00\x00" + bytes(20))
    with pytest.raises(ValueError, match="bad-magic.*not an IDX file"):
        read_idx(bad)
    long = tmp_path / "long"
    long.write_bytes(write_idx(tmp_path / "x", np.zeros(3, np.uint8)).read_bytes() + b"\x00")
    with pytest.raises(ValueError, match="long.*1 bytes past"):
        read_idx(long)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_dataset("mnist-idx", images=tmp_path / "missing")
    with pytest.raises(ValueError, match="expected unsigned bytes of shape \\(N, height, width\\)"):
        load_dataset("mnist-idx", images=tmp_path / "short")
    images = write_idx(tmp_path / "img", np.full((10, 3, 3), 255, np.uint8))
    with pytest.raises(ValueError, match="size.*0"):
        load_dataset("mnist-idx", images=images, size=0)
    ds = load_dataset("mnist-idx", images=images, labels=write_idx(tmp_path / "lab", np.arange(10, dtype=np.uint8) % 2))
    assert (ds.num_classes, len(ds.test), float(ds.train.min())) == (2, 2, 1.0)


# --------------------------------------------------------------------------- image-folder

COLORS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}


def write_classes(root: Path, per_class: int = 10, suffix: str = ".png", mode: str = "RGB") -> Path:
    from PIL import Image

    for name, color in COLORS.items():
        (root / name).mkdir(parents=True)
        value = color if mode == "RGB" else sum(color) // 3
        for i in range(per_class):
            Image.new(mode, (8, 8), value).save(root / name / f"{i}{suffix}")
    return root


def test_image_folder_classes_rgb(tmp_path: Path) -> None:
    ds = load_dataset("image-folder", root=write_classes(tmp_path / "imgs"))
    assert (ds.shape, ds.num_classes, ds.class_names) == ((3, 8, 8), 3, ["blue", "green", "red"])
    assert (len(ds.train), len(ds.test)) == (24, 6)
    assert torch.bincount(ds.test_labels).tolist() == [2, 2, 2]
    for x, labels in ((ds.train, ds.train_labels), (ds.test, ds.test_labels)):
        for k, name in enumerate(ds.class_names):  # each label sits on its own class's pixels
            expected = torch.tensor(COLORS[name], dtype=torch.float32) / 127.5 - 1
            assert torch.equal(x[labels == k].mean(dim=(0, 2, 3)), expected)
    assert ds.meta["skipped"] == 0 and ds.meta["options"]["channels"] == 3
    assert_json(ds)
    again, other = (load_dataset("image-folder", root=tmp_path / "imgs", seed=s) for s in (0, 1))
    assert torch.equal(again.train_labels, ds.train_labels) and not torch.equal(other.train_labels, ds.train_labels)


def test_image_folder_grayscale_and_channel_choice(tmp_path: Path) -> None:
    root = write_classes(tmp_path / "gray", per_class=4, mode="L")
    gray = load_dataset("image-folder", root=root, holdout=0.25)
    assert gray.shape == (1, 8, 8) and gray.meta["channels"] == 1
    assert_stratified(gray, 0.25)
    assert float(gray.train[gray.train_labels == 0].max()) == pytest.approx(85 / 127.5 - 1)
    as_rgb = load_dataset("image-folder", root=root, channels=3, holdout=0.25)
    assert as_rgb.shape == (3, 8, 8) and torch.equal(as_rgb.train[:, 0], as_rgb.train[:, 2])
    to_gray = load_dataset("image-folder", root=write_classes(tmp_path / "rgb", per_class=4), channels=1)
    assert to_gray.shape == (1, 8, 8)
    with pytest.raises(ValueError, match="channels.*2"):
        load_dataset("image-folder", root=root, channels=2)


def test_image_folder_jpeg_flat_folder_and_limit(tmp_path: Path) -> None:
    from PIL import Image

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(12):
        Image.new("RGB", (8, 8), (20 * i, 100, 200)).save(flat / f"{i}.JPG", quality=95)
    ds = load_dataset("image-folder", root=flat, limit=10)
    assert ds.train_labels is None and ds.num_classes == 0 and (len(ds.train), len(ds.test)) == (8, 2)
    assert abs(float(ds.train[:, 2].mean()) - (200 / 127.5 - 1)) < 0.05  # JPEG is lossy
    jpeg_classes = load_dataset("image-folder", root=write_classes(tmp_path / "jpg", per_class=3, suffix=".jpeg"))
    assert jpeg_classes.num_classes == 3 and len(jpeg_classes.train) + len(jpeg_classes.test) == 9


def test_image_folder_sizes_crop_and_resize(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "sizes"
    root.mkdir()
    wide = Image.new("RGB", (12, 8), (255, 0, 0))
    wide.paste((0, 0, 255), (2, 0, 10, 8))  # a blue square in the middle, red margins
    wide.save(root / "wide.png")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(root / "square.png")
    with pytest.raises(ValueError, match="differ in size.*size=N"):
        load_dataset("image-folder", root=root)
    cropped = load_dataset("image-folder", root=root, size=8, holdout=0.5)
    blue = torch.tensor([-1.0, -1.0, 1.0])[:, None, None]
    assert torch.equal(cropped.train[0], blue.expand(3, 8, 8)) and torch.equal(cropped.test[0], blue.expand(3, 8, 8))
    resized = load_dataset("image-folder", root=root, size=4, holdout=0.5)
    assert resized.shape == (3, 4, 4) and resized.meta["height"] == 4


def test_image_folder_bad_files(tmp_path: Path) -> None:
    root = write_classes(tmp_path / "imgs", per_class=5)
    (root / "green" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="broken.png"):
        load_dataset("image-folder", root=root)
    with pytest.warns(UserWarning, match="skipped 1 .*broken.png"):
        ds = load_dataset("image-folder", root=root, skip_bad=True)
    assert ds.meta["skipped"] == 1 and ds.meta["skipped_files"] == ["green/broken.png"]
    assert len(ds.train) + len(ds.test) == 15
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset("image-folder", root=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no PNG or JPEG"):
        load_dataset("image-folder", root=tmp_path / "empty")


# --------------------------------------------------------------------------- tabular


def write_csv(path: Path, rows: list[list[object]], header: str = "a,b,label") -> Path:
    path.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


@pytest.fixture
def table() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.column_stack([rng.normal(5, 2, 100), rng.exponential(3, 100)])


def test_tabular_csv_with_labels_standardizes_with_train_stats(tmp_path: Path, table: np.ndarray) -> None:
    labels = ["cat" if i % 4 else "dog" for i in range(100)]
    path = write_csv(tmp_path / "t.csv", [[*row, lab] for row, lab in zip(table.tolist(), labels)])
    ds = load_dataset("tabular", path=path, label_column="label", scaling="standard")  # the default is robust
    assert (ds.kind, ds.shape, ds.class_names, len(ds.test)) == ("tabular", (2,), ["cat", "dog"], 20)
    assert ds.meta["columns"] == ["a", "b"] and ds.meta["label_column"] == "label"
    assert_stratified(ds, 0.2)
    assert torch.bincount(ds.test_labels).tolist() == [15, 5]
    raw_train = ds.from_model_space(ds.train).double()
    assert torch.cdist(raw_train, torch.from_numpy(table)).min(dim=1).values.max() < 1e-4  # real rows
    assert np.allclose(ds.meta["mean"], raw_train.mean(0).numpy()) and not np.allclose(ds.meta["mean"], table.mean(0))
    assert np.allclose(ds.meta["std"], raw_train.std(0, correction=0).numpy())
    assert torch.allclose(ds.train.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(ds.train.std(0, correction=0), torch.ones(2), atol=1e-5)
    raw = torch.from_numpy(table[:7])
    assert torch.allclose(ds.from_model_space(ds.to_model_space(raw).double()), raw, atol=1e-5)
    assert_json(ds)
    other = load_dataset("tabular", path=path, label_column="label", seed=1, scaling="standard")
    assert not torch.equal(other.train, ds.train)
    assert torch.equal(load_dataset("tabular", path=path, label_column="label", scaling="standard").train, ds.train)


def test_tabular_csv_columns_int_labels_and_constant(tmp_path: Path) -> None:
    rows = [[i, 7, i % 3 * 2 + 1] for i in range(30)]
    path = write_csv(tmp_path / "c.csv", rows, header="x, const ,y")
    ds = load_dataset("tabular", path=path, label_column="y", holdout=0.3, scaling="standard")
    assert ds.class_names == ["1", "3", "5"] and len(ds.test) == 9
    assert torch.bincount(ds.test_labels).tolist() == [3, 3, 3]
    assert ds.meta["constant_columns"] == ["const"] and ds.meta["std"][1] == 1.0
    assert torch.equal(ds.train[:, 1], torch.zeros(len(ds.train)))
    only = load_dataset("tabular", path=path, columns=["x"])
    assert only.shape == (1,) and only.meta["columns"] == ["x"] and only.train_labels is None
    with pytest.raises(ValueError, match="no feature column 'z'.*'const'"):
        load_dataset("tabular", path=path, columns=["z"])
    with pytest.raises(ValueError, match="no label column 'lab'"):
        load_dataset("tabular", path=path, label_column="lab")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a,b\n1,2\n3,4\n5,oops\n", r"'b'.*row 3.*'oops'"),
        ("a,b\n1,2\nnan,4\n", r"'a'.*row 2.*NaN"),
        ("a,b\n1,inf\n", r"'b'.*row 1"),
        ("a,b\n1,2\n3\n", r"row 2: 1 fields"),
        ("", "empty"),
        ("a,b\n", "no data rows"),
        ("1,2\n3,4\n", "no header"),
    ],
)
def test_tabular_csv_errors_name_file_column_and_row(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"bad.csv.*{match}"):
        load_dataset("tabular", path=path)


def test_tabular_npy_and_npz(tmp_path: Path, table: np.ndarray) -> None:
    np.save(tmp_path / "t.npy", table.astype(np.float32))
    ds = load_dataset("tabular", path=tmp_path / "t.npy", columns=[1])
    assert ds.shape == (1,) and ds.meta["columns"] == ["x1"] and ds.train_labels is None
    y = np.arange(100) % 5
    np.savez(tmp_path / "xy.npz", x=table, y=y)
    labeled = load_dataset("tabular", path=tmp_path / "xy.npz")
    assert labeled.meta["label_column"] == "y" and labeled.num_classes == 5
    assert_stratified(labeled, 0.2)
    np.savez(tmp_path / "first.npz", data=table, groups=y.astype(np.float64))
    first = load_dataset("tabular", path=tmp_path / "first.npz", label_column="groups", limit=50)
    assert first.shape == (2,) and len(first.train) + len(first.test) == 50 and first.num_classes == 5
    raw = first.from_model_space(first.test).double()
    assert torch.cdist(raw, torch.from_numpy(table)).min(dim=1).values.max() < 1e-5


def test_tabular_array_errors(tmp_path: Path) -> None:
    bad = np.ones((5, 3))
    bad[3, 2] = np.inf
    np.save(tmp_path / "inf.npy", bad)
    with pytest.raises(ValueError, match=r"inf.npy.*'x2', row 4"):
        load_dataset("tabular", path=tmp_path / "inf.npy")
    np.save(tmp_path / "flat.npy", np.ones(5))
    with pytest.raises(ValueError, match="flat.npy.*2-D"):
        load_dataset("tabular", path=tmp_path / "flat.npy")
    np.savez(tmp_path / "frac.npz", x=np.ones((4, 2)), y=np.array([0, 1, 0.5, 1]))
    with pytest.raises(ValueError, match="frac.npz.*row 3.*not an integer"):
        load_dataset("tabular", path=tmp_path / "frac.npz")
    (tmp_path / "t.txt").write_text("a\n1\n")
    with pytest.raises(ValueError, match="t.txt.*expected .csv"):
        load_dataset("tabular", path=tmp_path / "t.txt")
    with pytest.raises(FileNotFoundError, match="gone.csv"):
        load_dataset("tabular", path=tmp_path / "gone.csv")
    with pytest.raises(ValueError, match="holdout"):
        load_dataset("tabular", path=tmp_path / "inf.npy", holdout=0)


def test_no_warnings_on_clean_builds(digits0: DiffusionDataset, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset("image-folder", root=write_classes(tmp_path / "ok", per_class=2), holdout=0.5)


def test_tabular_unknown_scaling_is_named(tmp_path: Path, table: np.ndarray) -> None:
    path = write_csv(tmp_path / "t.csv", [[*row, 0] for row in table.tolist()])
    with pytest.raises(ValueError, match="scaling='bogus'"):
        load_dataset("tabular", path=path, label_column="label", scaling="bogus")
