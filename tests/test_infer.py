"""Command-line tests of tools/infer.py: every input kind, broken files, model discovery.

Inputs are generated in a temporary folder; the model is the tiny random
detector of helpers.py. References: the model called directly on pixels
decoded independently (OpenCV / Pillow), and the files' known sizes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from detectron_res.visualize import MIN_DRAWN_SIDE
from helpers import CLASS_NAMES, load_tool, make_tiny_checkpoint, reference_detections, synthetic_image

ROOT = Path(__file__).resolve().parent.parent
INFER = ROOT / "tools" / "infer.py"


infer = load_tool("infer")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "model_final.pth")


@pytest.fixture(scope="module")
def model(checkpoint):
    from detectron_res.predictor import Predictor

    # The Predictor's model: eval mode, FrozenBN folded; score threshold of the config (0.05).
    # fp32, as _run asks infer for: a bf16 Predictor's model stores bf16 weights and runs in bf16.
    return Predictor(checkpoint, device="cpu", score_thresh=0.05, precision="fp32").model


def _jpeg_bytes(image):
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Every kind of input, good and bad. Returns (folder, {name: (path, (H, W)) or None for bad})."""
    d = tmp_path_factory.mktemp("inputs")
    good = {}

    def put(name, size):
        good[name] = (d / name, size)

    img = synthetic_image(90, 120, seed=1)
    cv2.imwrite(str(d / "photo.jpg"), img), put("photo.jpg", (90, 120))
    cv2.imwrite(str(d / "drawing.png"), synthetic_image(70, 100, seed=2)), put("drawing.png", (70, 100))
    cv2.imwrite(str(d / "bitmap.bmp"), synthetic_image(64, 80, seed=3)), put("bitmap.bmp", (64, 80))
    cv2.imwrite(str(d / "web.webp"), synthetic_image(60, 90, seed=4)), put("web.webp", (60, 90))
    cv2.imwrite(str(d / "gray.png"), synthetic_image(75, 75, seed=5)[:, :, 0]), put("gray.png", (75, 75))
    rgba = np.dstack(
        [synthetic_image(66, 88, seed=6)[:, :, ::-1], np.linspace(0, 255, 88, dtype=np.uint8)[None].repeat(66, 0)]
    )
    Image.fromarray(rgba, "RGBA").save(d / "alpha.png"), put("alpha.png", (66, 88))
    deep = synthetic_image(50, 70, seed=7)[:, :, 1].astype(np.uint16) * 257
    cv2.imwrite(str(d / "deep16.png"), deep), put("deep16.png", (50, 70))
    deep_color = synthetic_image(52, 72, seed=8).astype(np.uint16) * 257
    cv2.imwrite(str(d / "deep16_color.png"), deep_color), put("deep16_color.png", (52, 72))
    # Stored as 48 wide x 32 high with EXIF orientation 6 (rotate 90 clockwise to view):
    # the viewer, and the detector, see 32 wide x 48 high.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(synthetic_image(32, 48, seed=9)[:, :, ::-1]).save(d / "rotated.jpg", exif=exif.tobytes())
    put("rotated.jpg", (48, 32))
    cv2.imwrite(str(d / "dot.png"), np.full((1, 1, 3), 200, np.uint8)), put("dot.png", (1, 1))
    cv2.imwrite(str(d / "tiny.bmp"), synthetic_image(2, 3, seed=10)), put("tiny.bmp", (2, 3))
    large = cv2.resize(synthetic_image(60, 80, seed=11), (4000, 3000), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(d / "large.jpg"), large), put("large.jpg", (3000, 4000))
    writer = cv2.VideoWriter(str(d / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 64))
    for i in range(4):
        writer.write(synthetic_image(64, 96, seed=20 + i))
    writer.release()
    put("clip.avi", (64, 96))

    bad = d / "bad"
    bad.mkdir()
    full = _jpeg_bytes(synthetic_image(80, 80, seed=12))
    (bad / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (bad / "empty.png").write_bytes(b"")
    (bad / "notes.jpg").write_text("this is not an image\n")
    (bad / "junk.webp").write_bytes(np.random.default_rng(0).integers(0, 255, 300, dtype=np.uint8).tobytes())
    (bad / "broken.mp4").write_text("not a video either\n")
    (bad / "readme.txt").write_text("a text file in a folder is ignored, not an error\n")
    return d, good


def _run(argv, capsys):
    # The tests compare with the fp32 model (``model``); bf16 has its own test.
    argv = [str(a) for a in argv]
    if "--precision" not in argv:
        argv += ["--precision", "fp32"]
    code = infer.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_all_input_kinds_and_broken_files(inputs, checkpoint, model, tmp_path, capsys):
    folder, good = inputs
    out_dir = tmp_path / "out"
    bad = folder / "bad"
    args = [folder, str(bad), str(bad / "readme.txt"), str(folder / "missing.jpg"), str(folder / "*.nomatch")]
    code, stdout, stderr = _run(
        args + ["--weights", checkpoint, "--output", out_dir, "--score-thresh", "0.05", "-q"], capsys
    )

    # Something failed -> exit status 1, and every broken input is named on stderr.
    assert code == 1, stderr
    broken = {"truncated.jpg", "empty.png", "notes.jpg", "junk.webp", "broken.mp4"}
    broken |= {"readme.txt", "missing.jpg", "*.nomatch"}  # not images, or not there
    for name in sorted(broken):
        assert name in stderr, f"{name} not reported:\n{stderr}"
    summary = json.loads((out_dir / "predictions.json").read_text())
    failed = {Path(f["file_name"]).name for f in summary["failed"]}
    assert failed == broken

    # The summary line: images, video frames, detections, throughput.
    assert "12 image(s)" in stdout and "1 video(s) (4 frames)" in stdout and "images/s" in stdout

    records = {Path(r["file_name"]).name: r for r in summary["images"]}
    total = 0
    for name, (path, (height, width)) in good.items():
        if name == "clip.avi":
            continue
        record = json.loads((out_dir / f"{path.stem}_{path.suffix[1:]}.json").read_text())
        assert record == records[name]
        assert record["image_size"] == {"height": height, "width": width}, name
        annotated = cv2.imread(record["annotated_image"], cv2.IMREAD_UNCHANGED)
        # Thumbnails are drawn enlarged by an integer factor (labels stay readable).
        k = -(-MIN_DRAWN_SIDE // max(height, width)) if max(height, width) < MIN_DRAWN_SIDE else 1
        assert annotated is not None and annotated.shape == (k * height, k * width, 3), name
        for det in record["detections"]:
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, (name, det)
            assert det["class_name"] == CLASS_NAMES[det["label"] - 1] and det["score"] >= 0.05
        total += len(record["detections"])
    assert total > 0  # the tiny model does detect things on these images

    video = json.loads((out_dir / "clip_avi.json").read_text())
    assert video["num_frames"] == 4 and [f["frame"] for f in video["frames"]] == [0, 1, 2, 3]
    assert video["image_size"] == {"height": 64, "width": 96}
    capture = cv2.VideoCapture(video["annotated_video"])
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames == 4


def test_boxes_are_in_original_image_pixels(inputs, checkpoint, model, tmp_path, capsys):
    """JSON boxes equal the model's output on independently decoded pixels (EXIF applied by hand)."""
    folder, good = inputs
    out_dir = tmp_path / "out"
    names = ["large.jpg", "rotated.jpg", "gray.png"]
    code, _, stderr = _run(
        [good[n][0] for n in names] + ["--weights", checkpoint, "--output", out_dir, "--score-thresh", "0.05"], capsys
    )
    assert code == 0, stderr
    decoded = {
        "large.jpg": cv2.imread(str(good["large.jpg"][0]), cv2.IMREAD_COLOR),
        # EXIF orientation 6: rotate the stored pixels 90 degrees clockwise.
        "rotated.jpg": np.asarray(Image.open(good["rotated.jpg"][0]).convert("RGB"))[:, :, ::-1].transpose(1, 0, 2)[
            :, ::-1
        ],
        "gray.png": cv2.cvtColor(cv2.imread(str(good["gray.png"][0]), cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2BGR),
    }
    for name in names:
        record = json.loads((out_dir / f"{name.replace('.', '_')}.json").read_text())
        boxes, scores, labels = reference_detections(model, decoded[name], 0.05)
        assert len(record["detections"]) == len(boxes) > 0, name
        np.testing.assert_allclose([d["box"] for d in record["detections"]], boxes, atol=2e-3)
        np.testing.assert_allclose([d["score"] for d in record["detections"]], scores, atol=2e-6)
        assert [d["label"] for d in record["detections"]] == labels.tolist()
    # The large image's boxes are in its 4000 x 3000 pixels, not the 96 x 72 the model ran at.
    large = json.loads((out_dir / "large_jpg.json").read_text())
    assert max(d["box"][2] for d in large["detections"]) > 500


def test_annotated_image_shows_boxes_in_class_colors(inputs, checkpoint, tmp_path, capsys):
    from detectron_res.visualize import class_color

    path = inputs[1]["drawing.png"][0]
    code, _, _ = _run([path, "--weights", checkpoint, "--output", tmp_path, "--score-thresh", "0.3"], capsys)
    assert code == 0
    record = json.loads((tmp_path / "drawing_png.json").read_text())
    annotated = cv2.imread(record["annotated_image"])
    original = cv2.imread(str(path))
    assert record["detections"], "expected detections above 0.3"
    best = record["detections"][0]  # drawn last, so fully visible
    k = annotated.shape[0] // original.shape[0]  # thumbnails are drawn enlarged
    x1, y1, x2, y2 = (k * v for v in best["box"])
    left, mid_y = int(np.floor(x1)), int((y1 + y2) / 2)
    assert tuple(int(v) for v in annotated[mid_y, left]) == class_color(best["label"])
    assert not np.array_equal(annotated, original)


def test_batch_size_gives_same_detections_for_same_size_images(inputs, checkpoint, tmp_path, capsys):
    folder = tmp_path / "same"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"im{i}.png"), synthetic_image(64, 96, seed=30 + i))
    results = {}
    for batch in (1, 2):
        code, _, _ = _run(
            [folder, "--weights", checkpoint, "--output", tmp_path / f"b{batch}", "--batch-size", batch, "-q"], capsys
        )
        assert code == 0
        results[batch] = json.loads((tmp_path / f"b{batch}" / "predictions.json").read_text())["images"]
    for a, b in zip(results[1], results[2]):
        assert [d["label"] for d in a["detections"]] == [d["label"] for d in b["detections"]]
        np.testing.assert_allclose([d["box"] for d in a["detections"]], [d["box"] for d in b["detections"]], atol=1e-2)


def test_precision_option(inputs, checkpoint, tmp_path, capsys):
    """--precision bf16 runs (and says so, in stdout and predictions.json); a bad value is a usage error."""
    folder, _ = inputs
    photo = folder / "photo.jpg"
    code, stdout, stderr = _run([photo, "--weights", checkpoint, "--output", tmp_path / "bf16", "--precision", "bf16",
                                 "--score-thresh", "0.05"], capsys)
    assert code == 0, stderr
    assert "precision: bf16 (precision=bf16)" in stdout
    summary = json.loads((tmp_path / "bf16" / "predictions.json").read_text())
    assert summary["precision"] == "bf16" and summary["images"][0]["detections"]
    with pytest.raises(SystemExit) as exit_info:
        infer.main([str(photo), "--precision", "fp16"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def test_name_collisions_get_unique_outputs(checkpoint, tmp_path, capsys):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        cv2.imwrite(str(tmp_path / sub / "same.png"), synthetic_image(64, 64, seed=ord(sub)))
    out = tmp_path / "out"
    code, _, _ = _run(
        [tmp_path / "a" / "same.png", tmp_path / "b" / "same.png", "--weights", checkpoint, "--output", out, "-q"],
        capsys,
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "predictions.json",
        "same_png.json",
        "same_png.png",
        "same_png_2.json",
        "same_png_2.png",
    ]
    # Writing the results next to the inputs never overwrites an input.
    code, _, _ = _run([tmp_path / "a" / "same.png", "--weights", checkpoint, "--output", tmp_path / "a", "-q"], capsys)
    assert code == 0 and (tmp_path / "a" / "same_png.png").is_file()
    assert np.array_equal(cv2.imread(str(tmp_path / "a" / "same.png")), synthetic_image(64, 64, seed=ord("a")))


def test_usage_errors(inputs, checkpoint, tmp_path, capsys, monkeypatch):
    photo = inputs[1]["photo.jpg"][0]
    # No trained model anywhere: exit 2 with a message that says how to get one.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DETECTRON_RES_OUTPUT", raising=False)
    code, _, stderr = _run([photo], capsys)
    assert code == 2 and "no trained model found" in stderr and "make demo" in stderr and "--weights" in stderr
    # Config overrides after the inputs; a wrong key is named.
    code, stdout, _ = _run([photo, "--weights", checkpoint, "--print-config", "input.min_size_test=48"], capsys)
    assert code == 0 and "min_size_test: 48" in stdout
    code, _, stderr = _run([photo, "--weights", checkpoint, "input.min_size_tst=48"], capsys)
    assert code == 2 and "input.min_size_tst" in stderr
    if not torch.cuda.is_available():
        code, _, stderr = _run([photo, "--weights", checkpoint, "--device", "cuda"], capsys)
        assert code == 2 and "no CUDA GPU" in stderr
    code, _, stderr = _run([tmp_path / "nothing_here.jpg", "--weights", checkpoint], capsys)
    assert code == 1 and "nothing_here.jpg" in stderr
    with pytest.raises(SystemExit):
        infer.main([str(photo), "--batch-size", "0"])


def test_command_line_uses_latest_trained_model(inputs, checkpoint, tmp_path):
    """The real entry point, as a user runs it: no --weights, newest output/*/last_checkpoint."""
    photo = inputs[1]["photo.jpg"][0]
    for name, age in (("older_run", 100), ("newer_run", 0)):
        run = tmp_path / "output" / name
        run.mkdir(parents=True)
        (run / "model_final.pth").write_bytes(checkpoint.read_bytes())
        (run / "last_checkpoint").write_text("model_final.pth")
        mtime = (run / "last_checkpoint").stat().st_mtime - age
        os.utime(run / "last_checkpoint", (mtime, mtime))
    env = {k: v for k, v in os.environ.items() if k != "DETECTRON_RES_OUTPUT"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, str(INFER), str(photo)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert str(Path("output") / "newer_run" / "model_final.pth") in proc.stdout
    assert "most recent" in proc.stdout
    record = json.loads((tmp_path / "output" / "infer" / "photo_jpg.json").read_text())
    assert record["image_size"] == {"height": 90, "width": 120}
    assert (tmp_path / "output" / "infer" / "photo_jpg.jpg").is_file()


def test_same_stem_other_extension_and_reruns_never_overwrite(checkpoint, tmp_path, capsys):
    """coffee.png and coffee.tiff (clip.mp4 / clip.avi) keep separate outputs; a second run
    into the same folder is refused before the model runs (nothing changes); --overwrite
    replaces the earlier run and deletes its other outputs; a run in which every input
    fails keeps the earlier predictions.json."""
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "coffee.png"), synthetic_image(64, 96, seed=1))
    cv2.imwrite(str(folder / "coffee.tiff"), synthetic_image(64, 96, seed=2))
    cv2.imwrite(str(folder / "tea.png"), synthetic_image(64, 96, seed=3))
    out = tmp_path / "out"
    code, _, err = _run([folder / "coffee.png", folder / "coffee.tiff", folder / "tea.png", "--weights", checkpoint,
                         "--output", out, "-q", "--score-thresh", "0.05"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "coffee_png.json", "coffee_png.png", "coffee_tiff.json", "coffee_tiff.png", "predictions.json",
        "tea_png.json", "tea_png.png"]
    assert json.loads((out / "coffee_tiff.json").read_text())["file_name"].endswith("coffee.tiff")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    # The same command again: refused with one line, exit 2, nothing touched.
    code, _, err = _run([folder / "coffee.png", "--weights", checkpoint, "--output", out, "-q"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: {out / 'predictions.json'} already exists (and 2 more of the files this run writes); "
        "pass --overwrite to replace, or choose another --output"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # A run in which every input fails, with --overwrite: the earlier record and files stay.
    (folder / "broken.png").write_bytes(b"not an image")
    code, _, err = _run([folder / "broken.png", "--weights", checkpoint, "--output", out, "-q", "--overwrite"], capsys)
    assert code == 1 and "predictions.json of the earlier run is kept" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # --overwrite with one input: its outputs are replaced, the earlier run's others deleted.
    code, stdout, err = _run([folder / "coffee.png", "--weights", checkpoint, "--output", out, "-q", "--overwrite"],
                             capsys)
    assert code == 0, err
    assert "deleted 4 output file(s) of the earlier run" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["coffee_png.json", "coffee_png.png", "predictions.json"]
    summary = json.loads((out / "predictions.json").read_text())
    assert [Path(r["file_name"]).name for r in summary["images"]] == ["coffee.png"]
    assert sorted(p.name for p in folder.iterdir()) == ["broken.png", "coffee.png", "coffee.tiff", "tea.png"]


def test_output_is_a_file_and_umask(checkpoint, tmp_path, capsys):
    """--output naming an existing file: one line, exit 2. Outputs get the umask's
    permissions (0644 under umask 022, 0640 under 027), not mkstemp's 0600."""
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), synthetic_image(64, 96, seed=4))
    not_a_folder = tmp_path / "results.txt"
    not_a_folder.write_text("mine\n")
    code, _, err = _run([image, "--weights", checkpoint, "--output", not_a_folder, "-q"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"error: --output {not_a_folder} is a file, expected a folder (it is created if missing)"]
    assert not_a_folder.read_text() == "mine\n"
    for umask, mode in ((0o022, 0o644), (0o027, 0o640)):
        old = os.umask(umask)
        try:
            code, _, err = _run([image, "--weights", checkpoint, "--output", tmp_path / f"u{umask:o}", "-q"], capsys)
        finally:
            os.umask(old)
        assert code == 0, err
        modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / f"u{umask:o}").iterdir()}
        assert modes == {"photo_png.png": mode, "photo_png.json": mode, "predictions.json": mode}
