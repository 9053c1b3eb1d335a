"""Classification data: the CIFAR-10 pickle reader, the ImageNet folder reader, the
augmentations, the loaders, and 10-crop evaluation against hand-assembled crops."""
import os
import pickle

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detectron_res.classification.datasets import (
    Cifar10Dataset,
    ClassificationDataset,
    ImageFolderDataset,
    read_cifar10_batch,
)
from detectron_res.classification.evaluation import evaluate_classifier, topk_errors
from detectron_res.classification.loader import (
    build_classification_test_loader,
    build_classification_train_loader,
)
from detectron_res.classification.model import ImageClassifier
from detectron_res.classification.transforms import (
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    EvalTransform,
    TrainTransform,
    pca_lighting,
    resize_short_side,
)
from detectron_res.modeling.backbone import CifarResNet
from detectron_res.weights import UnsafeWeightsError


# ---------------------------------------------------------------------------
# CIFAR-10, official python pickles
# ---------------------------------------------------------------------------
def _cifar_image(k: int) -> np.ndarray:
    """A 32x32 RGB image whose every pixel says where it is: R = row, G = column, B = image id."""
    rows, cols = np.mgrid[0:32, 0:32]
    return np.stack([rows * 7 % 256, cols * 5 % 256, np.full((32, 32), k % 256)], axis=-1).astype(np.uint8)


def _write_official_cifar(root, n_per_batch=4, n_test=6):
    """Write the layout byte-for-byte as the official Python-2 files decode in Python 3:
    bytes keys, a row = 1024 R values, then 1024 G, then 1024 B, each row-major."""
    root.mkdir(parents=True, exist_ok=True)
    k = 0
    expected = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else n_per_batch
        rows, labels = [], []
        for _ in range(n):
            img = _cifar_image(k)
            rows.append(np.concatenate([img[:, :, 0].ravel(), img[:, :, 1].ravel(), img[:, :, 2].ravel()]))
            labels.append(k % 10)
            expected.setdefault(name, []).append((img, k % 10))
            k += 1
        obj = {b"batch_label": name.encode(), b"labels": labels, b"data": np.stack(rows).astype(np.uint8),
               b"filenames": [f"{i}.png".encode() for i in range(n)]}
        with open(root / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": n_per_batch, b"num_vis": 3072}, f, protocol=2)
    return expected


def test_cifar_reader_decodes_the_official_row_layout(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    expected = _write_official_cifar(root)
    images, labels = read_cifar10_batch(root / "data_batch_2")
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    for (img, label), got, got_label in zip(expected["data_batch_2"], images, labels):
        np.testing.assert_array_equal(got, img)  # (row, col, channel) order recovered
        assert got_label == label
    train = Cifar10Dataset(root, "train")
    test = Cifar10Dataset(root, "test")
    assert len(train) == 20 and len(test) == 6
    assert train.class_names[0] == "airplane" and train.num_classes == 10
    np.testing.assert_array_equal(test.image(5), expected["test_batch"][5][0])
    assert test.labels.tolist() == [lab for _, lab in expected["test_batch"]]
    # Order of the training images: data_batch_1 then 2 ... 5.
    np.testing.assert_array_equal(train.image(4), expected["data_batch_2"][0][0])


def test_cifar_holdout_split_is_disjoint_and_fixed(tmp_path):
    root = tmp_path / "c"
    _write_official_cifar(root)
    train = Cifar10Dataset(root, "train", holdout=5)
    held = Cifar10Dataset(root, "holdout", holdout=5)
    assert len(train) == 15 and len(held) == 5
    ids = lambda ds: {int(ds.image(i)[0, 0, 2]) for i in range(len(ds))}  # noqa: E731  (B channel = image id)
    assert ids(train).isdisjoint(ids(held)) and len(ids(train) | ids(held)) == 20
    assert ids(Cifar10Dataset(root, "holdout", holdout=5)) == ids(held)  # same subset every time


def test_cifar_reader_errors(tmp_path):
    root = tmp_path / "c"
    _write_official_cifar(root)
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        os.remove(root / "data_batch_1")
        Cifar10Dataset(root, "train")
    with pytest.raises(ValueError, match="split 'valid'"):
        Cifar10Dataset(root, "valid")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(root / "test_batch", "wb") as f:
        pickle.dump({"data": Evil(), "labels": []}, f)
    with pytest.raises(UnsafeWeightsError, match="refusing to unpickle"):
        Cifar10Dataset(root, "test")


# ---------------------------------------------------------------------------
# ImageNet folder layout
# ---------------------------------------------------------------------------
def test_image_folder_layout(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("n02", "n01"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                cv2.imwrite(str(d / f"{cls}_{i}.JPEG"), rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
            (d / "notes.txt").write_text("not an image")
    train = ImageFolderDataset(tmp_path, "train")
    assert train.class_names == ["n01", "n02"]  # sorted folder names
    assert len(train) == 6 and train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    val = ImageFolderDataset(tmp_path, "val", class_names=train.class_names)
    assert len(val) == 4 and val.image(0).shape == (20, 30, 3)
    (tmp_path / "val" / "n99").mkdir()
    with pytest.raises(ValueError, match=r"\['n99'\] are not in the training split"):
        ImageFolderDataset(tmp_path, "val", class_names=train.class_names)
    with pytest.raises(FileNotFoundError, match="data.root"):
        ImageFolderDataset(tmp_path, "test")


# ---------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------
def test_train_transform_scale_crop_flip():
    image = np.random.default_rng(1).integers(0, 255, (60, 90, 3), dtype=np.uint8)
    t = TrainTransform(short_side_range=(40, 56), crop_size=32, hflip=True, lighting_std=0.0)
    outs = [t(image, np.random.default_rng(s)) for s in range(20)]
    assert all(o.shape == (32, 32, 3) and o.dtype == np.uint8 for o in outs)
    assert len({o.tobytes() for o in outs}) == 20  # different crops per seed
    np.testing.assert_array_equal(t(image, np.random.default_rng(3)), outs[3])  # a function of the seed
    # Every output is a crop of the image resized to some short side in [40, 56], maybe flipped.
    out = outs[0]
    found = False
    for s in range(40, 57):
        r = resize_short_side(image, s)
        for img in (r, r[:, ::-1]):
            windows = np.lib.stride_tricks.sliding_window_view(img, (32, 32, 3))[:, :, 0]
            if (windows == out).all(axis=(2, 3, 4)).any():
                found = True
    assert found


def test_cifar_pad_crop_is_a_window_of_the_zero_padded_image():
    image = np.random.default_rng(2).integers(1, 255, (32, 32, 3), dtype=np.uint8)
    t = TrainTransform(short_side_range=None, crop_size=32, pad=4, hflip=False)
    padded = np.zeros((40, 40, 3), np.uint8)
    padded[4:36, 4:36] = image
    seen = set()
    for s in range(30):
        out = t(image, np.random.default_rng(s))
        hits = [(y, x) for y in range(9) for x in range(9) if (padded[y:y + 32, x:x + 32] == out).all()]
        assert hits
        seen.add(hits[0])
    assert len(seen) > 10  # offsets 0..8 in both directions are drawn


def test_pca_lighting_adds_the_principal_component_shift():
    image = np.full((4, 4, 3), 128, np.uint8)
    out = pca_lighting(image, 0.1, np.random.default_rng(7))
    alpha = np.random.default_rng(7).normal(0.0, 0.1, size=3)
    # by hand: shift_c = 255 * sum_j eigvec[c, j] * alpha_j * eigval_j
    shift = [255 * sum(IMAGENET_EIGVEC[c, j] * alpha[j] * IMAGENET_EIGVAL[j] for j in range(3)) for c in range(3)]
    np.testing.assert_array_equal(out[0, 0], np.clip(np.rint(128 + np.array(shift)), 0, 255))
    assert (out == out[0, 0]).all()  # the same shift at every pixel
    np.testing.assert_array_equal(pca_lighting(image, 0.0, np.random.default_rng(7)), image)


def _hand_ten_crops(img: np.ndarray, c: int) -> list:
    h, w = img.shape[:2]
    top, left = (h - c) // 2, (w - c) // 2
    crops = [img[:c, :c], img[:c, w - c:], img[h - c:, :c], img[h - c:, w - c:], img[top:top + c, left:left + c]]
    flipped = img[:, ::-1]
    crops += [flipped[:c, :c], flipped[:c, w - c:], flipped[h - c:, :c], flipped[h - c:, w - c:],
              flipped[top:top + c, left:left + c]]
    return crops


def test_ten_crop_view_equals_hand_assembled_crops():
    image = np.random.default_rng(3).integers(0, 255, (50, 60, 3), dtype=np.uint8)
    views = EvalTransform(short_side=40, crop_size=32, view="ten_crop")(image)
    resized = cv2.resize(image, (48, 40), interpolation=cv2.INTER_AREA)  # 50x60 -> short side 40: 40x48
    assert views.shape == (10, 32, 32, 3)
    hand = _hand_ten_crops(resized, 32)
    # As a set (the order within the 10 does not change the average).
    assert sorted(v.tobytes() for v in views) == sorted(c.tobytes() for c in hand)
    center = EvalTransform(short_side=40, crop_size=32, view="center")(image)
    np.testing.assert_array_equal(center[0], resized[4:36, 8:40])


# ---------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------
class _ArrayDataset(ClassificationDataset):
    def __init__(self, images, labels, num_classes):
        self.name = "arrays"
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = [f"c{k}" for k in range(num_classes)]

    def image(self, index):
        return self.images[index]


def test_train_loader_is_seeded_sharded_and_resumable():
    rng = np.random.default_rng(0)
    ds = _ArrayDataset([rng.integers(0, 255, (36, 36, 3), dtype=np.uint8) for _ in range(10)], list(range(10)), 10)
    t = TrainTransform(short_side_range=None, crop_size=32, pad=2, hflip=True)

    def batches(start=0, rank=0, world=1, n=4):
        it = iter(build_classification_train_loader(ds, transform=t, images_per_batch=3, input_format="RGB", seed=5,
                                                    rank=rank, world_size=world, start_iter=start, num_workers=0))
        return [next(it) for _ in range(n)]

    a, b = batches(), batches()
    for x, y in zip(a, b):
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
    assert a[0].images.shape == (3, 3, 32, 32) and a[0].images.dtype == torch.uint8
    resumed = batches(start=2, n=2)
    assert torch.equal(resumed[0].images, a[2].images) and torch.equal(resumed[1].labels, a[3].labels)
    # Two ranks see disjoint images within an epoch.
    r0, r1 = batches(rank=0, world=2, n=1)[0], batches(rank=1, world=2, n=1)[0]
    assert set(r0.indices.tolist()).isdisjoint(r1.indices.tolist())
    # BGR output is the RGB output with the channels reversed.
    bgr = next(iter(build_classification_train_loader(ds, transform=t, images_per_batch=3, input_format="BGR",
                                                      seed=5, num_workers=0)))
    assert torch.equal(bgr.images, a[0].images.flip(1))


def test_test_loader_shards_cover_the_dataset_once():
    ds = _ArrayDataset([np.zeros((32, 32, 3), np.uint8)] * 7, [0] * 7, 1)
    t = EvalTransform(short_side=0, crop_size=32)
    seen = []
    for rank in range(3):
        for batch in build_classification_test_loader(ds, transform=t, images_per_batch=2, input_format="RGB",
                                                      rank=rank, world_size=3, num_workers=0):
            assert batch.images.shape[1:] == (1, 3, 32, 32)
            seen += batch.indices.tolist()
    assert sorted(seen) == list(range(7))


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------
def test_topk_errors_by_hand():
    probs = torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2], [0.2, 0.5, 0.3]])
    labels = torch.tensor([2, 2, 0])
    # image 0: top-1 hit; image 1: label 2 ranked 3rd; image 2: label 0 ranked 3rd.
    assert topk_errors(probs, labels, ks=(1, 2, 5)) == {1: 2, 2: 2, 5: 0}


def test_ten_crop_evaluation_against_hand_assembled_batch():
    torch.manual_seed(0)
    backbone = CifarResNet(8, num_classes=6)
    model = ImageClassifier(backbone=backbone, pixel_mean=[120.0, 110.0, 100.0], pixel_std=[60.0, 61.0, 62.0],
                            input_format="BGR", arch="cifar_resnet8").eval()
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 255, (50, 60, 3), dtype=np.uint8) for _ in range(5)]
    labels = [0, 1, 2, 3, 4]
    ds = _ArrayDataset(images, labels, 6)

    # By hand: resize to short side 40, the 10 crops, BGR, normalize, average the softmax.
    hand_probs = []
    for img in images:
        resized = cv2.resize(img, (48, 40), interpolation=cv2.INTER_AREA)
        crops = np.stack(_hand_ten_crops(resized, 32))[..., ::-1]  # RGB -> BGR
        x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float()
        mean, std = torch.tensor([120.0, 110.0, 100.0]), torch.tensor([60.0, 61.0, 62.0])
        x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        with torch.no_grad():
            hand_probs.append(F.softmax(backbone(x), dim=1).mean(dim=0))
    hand_probs = torch.stack(hand_probs)

    loader = build_classification_test_loader(ds, transform=EvalTransform(short_side=40, crop_size=32, view="ten_crop"),
                                              images_per_batch=2, input_format="BGR", num_workers=0)
    with torch.no_grad():
        got = torch.cat([model(b.images) for b in loader])
    torch.testing.assert_close(got, hand_probs, rtol=1e-5, atol=1e-6)

    metrics = evaluate_classifier(model, ds, views=["center", "ten_crop"], short_side=40, crop_size=32,
                                  images_per_batch=2, device=torch.device("cpu"), num_workers=0)
    lab = torch.tensor(labels)
    top1 = 100.0 * float((hand_probs.argmax(1) != lab).sum()) / 5
    top5 = 100.0 * float((~(hand_probs.topk(5, dim=1).indices == lab[:, None]).any(1)).sum()) / 5
    assert metrics["top1_err_10crop"] == pytest.approx(top1)
    assert metrics["top5_err_10crop"] == pytest.approx(top5)
    assert metrics["num_images"] == 5 and 0.0 <= metrics["top1_err"] <= 100.0
