"""Samplers (sharding, determinism, resume) and the train/test loaders."""

import itertools
import os
import shutil

import numpy as np
import pytest
import torch

from detectron_res.data.catalog import get_dataset
from detectron_res.data.coco import load_coco_json
from detectron_res.data.loader import (
    Batch,
    GroupedBatchSampler,
    InferenceSampler,
    TrainingSampler,
    build_test_loader,
    build_train_loader,
)
from detectron_res.data.shapes import generate_shapes_dataset
from detectron_res.data.transforms import get_resize_shape
from detectron_res.data.voc import load_voc

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "data")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    generate_shapes_dataset(str(root / "shapes"), num_train=10, num_val=5, image_size=(48, 96), seed=1)
    return get_dataset("shapes_train", root=str(root))


def _indices(it, n):
    return [i for i, _ in itertools.islice(it, n)]


# ---------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("size, world", [(10, 2), (11, 2), (7, 3), (5, 4)])
def test_training_sampler_shards_are_disjoint_and_cover_each_epoch(size, world):
    streams = [iter(TrainingSampler(size, seed=5, rank=r, world_size=world)) for r in range(world)]
    # interleaving the ranks' streams gives back the global stream: epoch after epoch,
    # every index exactly once
    per_rank = [_indices(s, 3 * size) for s in streams]
    merged = [per_rank[k % world][k // world] for k in range(3 * size)]
    for epoch in range(3):
        assert sorted(merged[epoch * size : (epoch + 1) * size]) == list(range(size))
    if size % world == 0:  # whole epochs per rank: strictly disjoint shares
        firsts = [set(p[: size // world]) for p in per_rank]
        assert set().union(*firsts) == set(range(size))
        assert sum(len(f) for f in firsts) == size


def test_training_sampler_seed_and_sample_seeds():
    a = list(itertools.islice(iter(TrainingSampler(20, seed=1)), 60))
    b = list(itertools.islice(iter(TrainingSampler(20, seed=1)), 60))
    c = list(itertools.islice(iter(TrainingSampler(20, seed=2)), 60))
    assert a == b and [i for i, _ in a] != [i for i, _ in c]
    assert [i for i, _ in a[:20]] != [i for i, _ in a[20:40]]  # a new permutation each epoch
    seeds = [s for _, s in a]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**32 for s in seeds)
    with pytest.raises(ValueError, match=r"rank=2, world_size=2"):
        TrainingSampler(5, rank=2, world_size=2)
    with pytest.raises(ValueError, match="dataset size is 0"):
        TrainingSampler(0)


def test_grouped_batch_sampler_groups_by_aspect():
    groups = [0, 1] * 10
    it = iter(GroupedBatchSampler(TrainingSampler(20, seed=0), groups, batch_size=3))
    for batch in itertools.islice(it, 30):
        assert len(batch) == 3 and len({groups[i] for i, _ in batch}) == 1


@pytest.mark.parametrize("size, world", [(10, 3), (2, 4), (9, 1), (0, 2)])
def test_inference_sampler_contiguous_no_duplicates(size, world):
    shares = [list(InferenceSampler(size, rank=r, world_size=world)) for r in range(world)]
    assert list(itertools.chain(*shares)) == list(range(size))  # contiguous, in order, no padding
    lens = [len(s) for s in shares]
    assert max(lens) - min(lens) <= 1


# ----------------------------------------------------------------------------- loaders
def _take(loader, n):
    return [next(loader) for _ in range(n)]


def _same(b1: Batch, b2: Batch):
    assert b1.image_ids == b2.image_ids and b1.image_sizes == b2.image_sizes
    assert torch.equal(b1.images, b2.images)
    for t1, t2 in zip(b1.targets, b2.targets):
        assert torch.equal(t1["boxes"], t2["boxes"]) and torch.equal(t1["labels"], t2["labels"])


KW = dict(images_per_batch=2, min_sizes=[64, 80], max_size=200, size_divisibility=32, num_workers=0)


def test_fixed_seed_gives_the_same_batches_and_resume_is_exact(shapes):
    run1 = _take(build_train_loader(shapes, seed=7, **KW), 8)
    run2 = _take(build_train_loader(shapes, seed=7, **KW), 8)
    for b1, b2 in zip(run1, run2):
        _same(b1, b2)
    other = _take(build_train_loader(shapes, seed=8, **KW), 8)
    assert [b.image_ids for b in other] != [b.image_ids for b in run1]
    # a run resumed at iteration 5 continues with batch 5, augmentation included
    resumed = _take(build_train_loader(shapes, seed=7, start_iter=5, **KW), 3)
    for b1, b2 in zip(run1[5:], resumed):
        _same(b1, b2)


def test_results_do_not_depend_on_num_workers(shapes):
    a = _take(build_train_loader(shapes, seed=3, **KW), 4)
    b = _take(build_train_loader(shapes, seed=3, **{**KW, "num_workers": 2}), 4)
    for b1, b2 in zip(a, b):
        _same(b1, b2)


def test_two_ranks_see_disjoint_images(shapes):
    kw = {**KW, "images_per_batch": 1, "aspect_ratio_grouping": False}
    r0 = [b.image_ids[0] for b in _take(build_train_loader(shapes, seed=1, rank=0, world_size=2, **kw), 5)]
    r1 = [b.image_ids[0] for b in _take(build_train_loader(shapes, seed=1, rank=1, world_size=2, **kw), 5)]
    assert not set(r0) & set(r1) and sorted(r0 + r1) == sorted(r.image_id for r in shapes.records)


def test_batch_contents_padding_and_box_scaling(shapes):
    by_id = {r.image_id: r for r in shapes.records}
    for batch in _take(build_train_loader(shapes, seed=0, hflip_prob=0.0, **KW), 5):
        n, c, hp, wp = batch.images.shape
        assert (n, c) == (2, 3) and hp % 32 == 0 and wp % 32 == 0 and batch.images.dtype == torch.float32
        groups = {by_id[i].width >= by_id[i].height for i in batch.image_ids}
        assert len(groups) == 1  # aspect-ratio grouping
        for k, image_id in enumerate(batch.image_ids):
            r = by_id[image_id]
            h, w = batch.image_sizes[k]
            assert batch.orig_sizes[k] == (r.height, r.width)
            assert (h, w) in {get_resize_shape(r.height, r.width, s, 200) for s in (64, 80)}
            assert batch.images[k, :, h:, :].abs().sum() == 0 and batch.images[k, :, :, w:].abs().sum() == 0
            assert 0 <= batch.images[k].min() and batch.images[k].max() <= 255
            keep = r.training_mask()
            expected = r.boxes[keep] * np.array([w / r.width, h / r.height] * 2)
            np.testing.assert_allclose(batch.targets[k]["boxes"].numpy(), expected, atol=1e-3)
            np.testing.assert_array_equal(batch.targets[k]["labels"].numpy(), r.labels[keep])
            assert batch.targets[k]["labels"].dtype == torch.int64


def test_crowd_and_difficult_are_not_training_targets(tmp_path):
    coco = load_coco_json(os.path.join(FIX, "coco", "instances.json"), os.path.join(FIX, "coco", "images"))
    kw = dict(images_per_batch=1, min_sizes=[48], max_size=1000, hflip_prob=0.0, num_workers=0, aspect_ratio_grouping=False)
    batches = {b.image_ids[0]: b for b in _take(build_train_loader(coco, seed=0, **kw), 3)}
    np.testing.assert_array_equal(batches[1].targets[0]["labels"].numpy(), [1])  # the crowd dog is gone
    assert len(batches[3].targets[0]["boxes"]) == 0 and batches[3].targets[0]["boxes"].shape == (0, 4)
    voc = load_voc(os.path.join(FIX, "voc", "VOC2007"), "train", class_names=["cat", "dog", "bird"])
    for use_difficult, expected in ((False, [1]), (True, [3, 1])):
        bs = {b.image_ids[0]: b for b in _take(build_train_loader(voc, seed=0, use_difficult=use_difficult, **kw), 3)}
        np.testing.assert_array_equal(bs["b"].targets[0]["labels"].numpy(), expected)


def test_input_format_channel_order(tmp_path):
    coco = load_coco_json(os.path.join(FIX, "coco", "instances.json"), os.path.join(FIX, "coco", "images"))
    kw = dict(images_per_batch=1, min_size=48, max_size=1000, num_workers=0)
    rgb = next(iter(build_test_loader(coco, input_format="RGB", **kw)))
    bgr = next(iter(build_test_loader(coco, input_format="BGR", **kw)))
    assert torch.equal(rgb.images, bgr.images.flip(1))
    from detectron_res.data.image_io import read_image

    ref = read_image(coco.records[0].file_name, format="BGR")  # 48 x 64: no resize at min_size 48
    np.testing.assert_array_equal(bgr.images[0, :, :48, :64].permute(1, 2, 0).numpy(), ref)
    with pytest.raises(ValueError, match=r"input_format='GBR'"):
        build_test_loader(coco, input_format="GBR", **kw)


def test_test_loader_shards_and_targets():
    voc = load_voc(os.path.join(FIX, "voc", "VOC2007"), "train", class_names=["cat", "dog", "bird"])
    seen = []
    for rank in range(2):
        loader = build_test_loader(voc, images_per_batch=2, min_size=60, max_size=1000, num_workers=0, rank=rank, world_size=2)
        batches = list(loader)
        assert len(loader) == len(batches)
        seen += [i for b in batches for i in b.image_ids]
        for b in batches:
            for k, image_id in enumerate(b.image_ids):
                if image_id == "b":  # test targets keep difficult boxes, flagged
                    assert b.targets[k]["difficult"].tolist() == [True, False]
                    assert b.targets[k]["iscrowd"].tolist() == [False, False]
                    # 30 x 40 -> 60 x 80: scale 2 on both axes
                    np.testing.assert_allclose(b.targets[k]["boxes"].numpy(), [[0, 0, 24, 20], [10, 10, 80, 50]], atol=1e-3)
    assert seen == ["a", "b", "c"]  # every image once over the ranks


def test_batch_to_and_errors(shapes, tmp_path):
    b = next(build_train_loader(shapes, seed=0, **KW))
    moved = b.to("cpu")
    assert torch.equal(moved.images, b.images) and len(moved) == 2 and moved.image_ids == b.image_ids
    if torch.cuda.is_available():
        assert b.pin_memory().images.is_pinned()
    with pytest.raises(ValueError, match=r"start_iter=-1"):
        build_train_loader(shapes, seed=0, start_iter=-1, **KW)
    with pytest.raises(ValueError, match=r"images_per_batch=0"):
        build_train_loader(shapes, seed=0, **{**KW, "images_per_batch": 0})
    with pytest.raises(TypeError, match="expected a DetectionDataset"):
        build_train_loader([1, 2], seed=0, **KW)


def test_image_changed_after_loading_is_an_error(tmp_path):
    shutil.copytree(os.path.join(FIX, "coco"), tmp_path / "coco")
    coco = load_coco_json(str(tmp_path / "coco" / "instances.json"), str(tmp_path / "coco" / "images"))
    shutil.copy(tmp_path / "coco" / "images" / "c.jpg", tmp_path / "coco" / "images" / "a.jpg")
    loader = build_test_loader(coco, images_per_batch=1, min_size=32, max_size=1000, num_workers=0)
    with pytest.raises(ValueError, match=r"a.jpg: image is 32x32 \(HxW\) but the dataset recorded 48x64"):
        next(iter(loader))


@pytest.mark.timeout(180)
def test_workers_do_not_deadlock_after_opencv_used_threads(tmp_path):
    # Regression: forking loader workers after OpenCV's thread pool had run (a large
    # cv2.resize in this process) used to hang the workers on their first OpenCV call.
    import cv2

    generate_shapes_dataset(str(tmp_path / "shapes"), num_train=6, num_val=0, image_size=(200, 256), seed=0)
    ds = get_dataset("shapes_train", root=str(tmp_path))
    previous = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        for trial in range(3):
            cv2.resize(np.zeros((1500, 2000, 3), np.uint8), (1200, 900))  # runs on the pool
            loader = build_train_loader(ds, images_per_batch=2, min_sizes=[600], max_size=1000, num_workers=2, seed=trial)
            assert len(next(loader)) == 2 and len(next(loader)) == 2
            assert cv2.getNumThreads() == 2  # the parent's setting is restored after the fork
            del loader
    finally:
        cv2.setNumThreads(previous)


class _ThreadsSeenByWorker(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        import cv2

        return cv2.getNumThreads()


def test_workers_are_forked_with_opencv_sequential():
    # The mechanism behind the test above, checked deterministically: workers inherit
    # setNumThreads(0), so they never touch the (dead) thread pool copied by fork.
    import cv2

    from detectron_res.data.loader import ForkSafeDataLoader

    previous = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        seen = list(ForkSafeDataLoader(_ThreadsSeenByWorker(), batch_size=None, num_workers=1))
        assert seen == [1, 1]  # OpenCV reports 1 thread when set to 0 (sequential); 2 without the fix
        assert cv2.getNumThreads() == 2
    finally:
        cv2.setNumThreads(previous)

