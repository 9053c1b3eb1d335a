#!/usr/bin/env python
"""Export a trained detector to ONNX (onnxruntime) or TorchScript, pre- and post-processing included.

    python tools/export.py --weights output/voc_r101/model_final.pth --format onnx
    python tools/export.py --config configs/voc_r101.yaml --weights W.pth --format onnx --output model.onnx
    python tools/export.py --weights W.pth --format torchscript
    python tools/export.py --weights W.pth --check-images photos/       # check on your own images
    python tools/export.py --weights W.pth --verify model.onnx          # check an existing export, write nothing

The exported model takes ONE ``uint8 [H, W, 3]`` image of any size, channels in the
model's order (``input_format`` in the metadata: BGR for MSRA weights, as
``cv2.imread`` returns), and returns ``boxes [M, 4]`` (x1, y1, x2, y2 in the
image's pixels), ``scores [M]`` and ``labels [M]`` (1..K). Resizing,
normalization, padding, NMS and the mapping back to the original image happen
inside. The caller decodes the file (EXIF rotation, grayscale...), maps labels to
``class_names`` and applies its own score threshold; see detectron_res/export.py.
ONNX needs the ``export`` extra: ``pip install -e ".[export]"`` (onnx, onnxruntime).

After writing, the tool runs the exported file (onnxruntime / torch.jit) and the
PyTorch model on real images and compares their detections above the exported
score threshold: images from ``--check-images`` if given, else from the config's
``data.test`` datasets (or ``data.train``), up to ``--check-num`` images on which
PyTorch detects something. It prints the images and detections compared, the
largest box and score differences, label agreement and the tolerance. Without a
single detection to compare it says "not verified" and why. ``--no-check`` skips it.

Nothing is overwritten: ``--output`` (and its ``.json`` sidecar) must not be the
weights, the config or an image, and an existing file is replaced only with
``--overwrite``.

Exit status: 0 exported and verified; 1 the exported model disagrees with PyTorch;
2 usage error (one line on stderr); 3 exported but not verified (no image with a
detection; pass --check-images, or --no-check to skip the check).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_NOT_VERIFIED = 0, 1, 2, 3
FORMATS = ("onnx", "torchscript")  # detectron_res.export.EXPORT_FORMATS, without importing torch
# detectron_res.export.MIN_OPSET / MAX_OPSET (checked before anything heavy is imported)
MIN_OPSET, MAX_OPSET = 16, 20
_IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm", ".gif"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export a trained detector to ONNX or TorchScript and verify it against PyTorch.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[1] + "\n\n" + __doc__.strip().split("\n\n")[-1],
    )
    parser.add_argument(
        "--weights", help="checkpoint written by training (default: the most recent output/*/last_checkpoint)"
    )
    parser.add_argument("--config", help="config file replacing the one stored in the checkpoint")
    parser.add_argument("--format", default=None,
                        help="onnx (default) or torchscript; with --verify: taken from the file's suffix")
    parser.add_argument(
        "--output", help="output file (default: next to the weights, <name>.onnx / <name>.torchscript.pt)"
    )
    parser.add_argument("--opset", type=int, default=17, help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default 17)")
    parser.add_argument("--no-check", action="store_true", help="do not compare the exported model with PyTorch")
    parser.add_argument("--check-images", nargs="+", metavar="PATH",
                        help="images (files or folders) for the check, instead of the config's datasets")
    parser.add_argument("--check-num", type=int, default=20,
                        help="images with detections to compare (default 20; at most 5x as many are tried)")
    parser.add_argument("--box-tol", type=float, default=0.05,
                        help="largest allowed box coordinate difference, pixels (default 0.05)")
    parser.add_argument("--score-tol", type=float, default=1e-3, help="largest allowed score difference (default 1e-3)")
    parser.add_argument("--verify", metavar="EXPORTED",
                        help="check an existing exported file against the weights instead of exporting")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output file (never the weights, config or an image)")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="override config keys, e.g. input.min_size_test=800"
    )
    return parser


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # Cheap checks first: nothing heavy (torch, onnx) is imported before the arguments are valid.
    fmt = args.format
    if fmt is None:
        fmt = "torchscript" if args.verify and not args.verify.endswith(".onnx") else "onnx"
    if fmt not in FORMATS:
        return _usage(f"--format {fmt!r} is not supported; expected one of {', '.join(FORMATS)}")
    if fmt == "onnx" and not MIN_OPSET <= args.opset <= MAX_OPSET:
        return _usage(f"--opset {args.opset} is out of range; expected {MIN_OPSET} to {MAX_OPSET} (ROIAlign "
                      f"aligned=True needs opset {MIN_OPSET}; the exporter stops at {MAX_OPSET})")
    if args.check_num < 1:
        return _usage(f"--check-num must be >= 1, got {args.check_num}")
    if not (args.box_tol >= 0 and args.score_tol >= 0):
        return _usage(f"--box-tol and --score-tol must be >= 0, got {args.box_tol} and {args.score_tol}")
    if fmt == "onnx":
        import importlib.util

        needed = ["onnx"] + (["onnxruntime"] if not args.no_check or args.verify else [])
        missing = [m for m in needed if importlib.util.find_spec(m) is None]
        if missing:
            return _usage(f"--format onnx needs the {' and '.join(missing)} package(s), not installed; install the "
                          "export extra: pip install -e '.[export]' (or pip install onnx onnxruntime onnxscript)")
    if args.verify and not Path(args.verify).is_file():
        return _usage(f"--verify {args.verify}: no such file")

    from detectron_res.config import ConfigError
    from detectron_res.engine.checkpoint import CheckpointError
    from detectron_res.export import export_metadata, export_onnx, export_torchscript
    from detectron_res.outputs import OutputError, atomic_write_text, check_output_file
    from detectron_res.predictor import NoCheckpointError, Predictor

    try:
        # score_thresh=1.0 keeps the config's own test threshold (the Predictor
        # lowers it only for smaller values); the exported graph applies it.
        predictor = Predictor(
            args.weights, config=args.config, overrides=args.overrides, device="cpu", score_thresh=1.0,
            precision="fp32",  # the exported graph is float32
        )
    except (NoCheckpointError, ConfigError, CheckpointError, FileNotFoundError, ValueError, TypeError) as e:
        return _usage(_one_line(e))
    weights = Path(predictor.checkpoint_path)
    model = predictor.model

    if args.verify:
        output = Path(args.verify)
    else:
        suffix = ".onnx" if fmt == "onnx" else ".torchscript.pt"
        output = Path(args.output) if args.output else weights.with_name(weights.stem + suffix)
        sidecar = output.with_name(output.name + ".json")
        inputs = [weights, args.config, *(args.check_images or [])]
        try:  # before exporting: the weights (or anything read) are never replaced
            check_output_file(output, inputs=inputs, overwrite=args.overwrite, flag="--output")
            check_output_file(sidecar, inputs=inputs, overwrite=args.overwrite, flag="--output's sidecar")
        except OutputError as e:
            return _usage(str(e))
        try:
            if fmt == "onnx":
                export_onnx(model, output, class_names=predictor.class_names, opset=args.opset)
            else:
                export_torchscript(model, output)
        except (ValueError, OSError) as e:
            return _usage(_one_line(e))
        metadata = export_metadata(model, predictor.class_names)
        atomic_write_text(sidecar, json.dumps(metadata, indent=1) + "\n")
        print(f"wrote {output} ({fmt}) and {sidecar} from {weights}")
        print(f"input: {metadata['input']}; input_format: {metadata['input_format']}")
        if args.no_check:
            print("check skipped (--no-check): the exported model was not compared with PyTorch")
            return EXIT_OK
    return check(predictor, output, fmt, args)


# ----------------------------------------------------------------------------
# The parity check
# ----------------------------------------------------------------------------
def _user_images(paths: Sequence[str]) -> Tuple[List[Path], List[str]]:
    """Files, folders (their image files, sorted) and glob patterns -> image paths; and problems."""
    found, problems = [], []
    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            files = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in _IMAGE_EXTENSIONS)
            if not files:
                problems.append(f"{arg}: folder without image files")
            found += files
        elif p.is_file():
            found.append(p)
        elif any(c in arg for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(arg, recursive=True) if Path(m).is_file())
            if not matches:
                problems.append(f"{arg}: pattern matches no files")
            found += matches
        else:
            problems.append(f"{arg}: no such file or folder")
    return found, problems


def _dataset_images(cfg) -> Tuple[List[Path], str, List[str]]:
    """Image paths of the config's test datasets, else its training datasets;
    ``(paths, where they come from, why the others could not be used)``."""
    from detectron_res.data.catalog import get_datasets

    problems = []
    for key in ("test", "train"):
        names = list(getattr(cfg.data, key))
        if not names:
            problems.append(f"data.{key} is empty")
            continue
        try:
            dataset = get_datasets(names, custom=cfg.data.datasets, check_images="none",
                                   max_pixels=int(cfg.data.max_pixels))
        except Exception as e:  # unreadable for any reason: say which and why, try the next source
            problems.append(f"data.{key} {names} cannot be read ({_one_line(e)})")
            continue
        paths = [Path(r.file_name) for r in dataset.records]
        if paths:
            return paths, f"data.{key} {names}", problems
        problems.append(f"data.{key} {names} has no images")
    return [], "", problems


def check(predictor, exported_path: Path, fmt: str, args) -> int:
    """Compare the exported file with the PyTorch model on real images; print the report."""
    from detectron_res.data.image_io import read_image
    from detectron_res.export import compare_with_pytorch, load_exported

    model, cfg = predictor.model, predictor.cfg
    if args.check_images:
        paths, problems = _user_images(args.check_images)
        source = "--check-images"
        for problem in problems:
            print(f"check: skipped {problem}", file=sys.stderr)
    else:
        paths, source, problems = _dataset_images(cfg)
        for problem in problems:
            print(f"check: {problem}")
    runner = "onnxruntime" if fmt == "onnx" else "torch.jit"
    if not paths:
        why = "; ".join(problems) or "no images"
        print(f"check: NOT VERIFIED ({fmt}): no images to compare on ({why}); pass --check-images with images the "
              "model detects objects on, or --no-check", file=sys.stderr)
        return EXIT_NOT_VERIFIED

    unreadable = []

    def images() -> Iterator[Tuple[str, "object"]]:
        for path in paths[: 5 * args.check_num]:
            try:
                yield str(path), read_image(path, format=model.input_format, max_pixels=int(cfg.data.max_pixels))
            except Exception as e:  # a broken file is named, the check goes on with the others
                unreadable.append(f"{path} ({_one_line(e)})")

    try:
        exported = load_exported(exported_path, fmt)
    except Exception as e:
        print(f"check FAILED ({fmt}): {exported_path} cannot be loaded by {runner}: {_one_line(e)}", file=sys.stderr)
        return EXIT_MISMATCH
    try:
        report = compare_with_pytorch(model, exported, images(), box_tol=args.box_tol, score_tol=args.score_tol,
                                      stop_after=args.check_num)
    except Exception as e:  # the exported graph failed on an image
        print(f"check FAILED ({fmt}): running {exported_path} with {runner}: {_one_line(e)}", file=sys.stderr)
        return EXIT_MISMATCH
    if unreadable:
        print(f"check: {len(unreadable)} image(s) could not be read, e.g. {unreadable[0]}", file=sys.stderr)
    print(f"check ({fmt}, {runner} vs PyTorch) on images from {source}: {report.summary()}")
    if not report.passed:
        for line in report.failures:
            print(f"  {line}", file=sys.stderr)
        print(f"check FAILED ({fmt}): the exported model disagrees with PyTorch (see above)", file=sys.stderr)
        return EXIT_MISMATCH
    if not report.verified:
        print(f"check: NOT VERIFIED ({fmt}): PyTorch detects nothing above the score threshold "
              f"{report.score_thresh:g} on the {report.images} image(s) tried from {source}, so there was nothing to "
              "compare; pass --check-images with images the model detects objects on, or --no-check",
              file=sys.stderr)
        return EXIT_NOT_VERIFIED
    print(f"check: verified ({fmt}): {report.compared} detection(s) on {report.images_with_detections} image(s) "
          "match PyTorch within tolerance")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
