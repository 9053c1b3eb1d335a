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
import importlib.util
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detectron_res.exit_status import (  # noqa: E402
    EXIT_EXPORT_MISMATCH, EXIT_EXPORT_NOT_VERIFIED, EXIT_OK, EXIT_USER_ERROR, one_line,
)

# detectron_res.export.EXPORT_FORMATS, MIN_OPSET and MAX_OPSET, repeated here so that
# the options are checked before torch is imported (0.2 s instead of 6 s for a typo;
# tests/test_export.py checks that both agree).
FORMATS = ("onnx", "torchscript")
MIN_OPSET, MAX_OPSET = 16, 20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export a trained detector to ONNX or TorchScript and verify it against PyTorch.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[1] + "\n\n" + __doc__.strip().split("\n\n")[-1],
    )
    parser.add_argument("--weights",
                        help="checkpoint written by training (default: the most recent output/*/last_checkpoint)")
    parser.add_argument("--config", help="config file replacing the one stored in the checkpoint")
    parser.add_argument("--format", default=None,
                        help="onnx (default) or torchscript; with --verify: taken from the file's suffix")
    parser.add_argument("--output",
                        help="output file (default: next to the weights, <name>.onnx / <name>.torchscript.pt)")
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
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override config keys, e.g. input.min_size_test=800")
    return parser


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


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
        needed = ["onnx"] + (["onnxruntime"] if not args.no_check or args.verify else [])
        missing = [m for m in needed if importlib.util.find_spec(m) is None]
        if missing:
            return _usage(f"--format onnx needs the {' and '.join(missing)} package(s), not installed; install the "
                          "export extra: pip install -e '.[export]' (or pip install onnx onnxruntime onnxscript)")
    if args.verify and not Path(args.verify).is_file():
        return _usage(f"--verify {args.verify}: no such file")

    from detectron_res.export import default_export_path, export_predictor, sidecar_path
    from detectron_res.outputs import OutputError, check_output_file
    from detectron_res.predictor import USER_ERRORS, Predictor

    try:
        # score_thresh=1.0 keeps the config's own test threshold (the Predictor
        # lowers it only for smaller values); the exported graph applies it.
        predictor = Predictor(args.weights, config=args.config, overrides=args.overrides, device="cpu",
                              score_thresh=1.0, precision="fp32")  # the exported graph is float32
    except USER_ERRORS as e:
        return _usage(one_line(e))
    weights = Path(predictor.checkpoint_path)

    if args.verify:
        output = Path(args.verify)
    else:
        output = Path(args.output) if args.output else default_export_path(weights, fmt)
        sidecar = sidecar_path(output)
        inputs = [weights, args.config, *(args.check_images or [])]
        try:  # before exporting: the weights (or anything read) are never replaced
            check_output_file(output, inputs=inputs, overwrite=args.overwrite, flag="--output")
            check_output_file(sidecar, inputs=inputs, overwrite=args.overwrite, flag="--output's sidecar")
            metadata = export_predictor(predictor, output, fmt, opset=args.opset)
        except (ValueError, OSError) as e:  # OutputError is a ValueError
            return _usage(one_line(e))
        print(f"wrote {output} ({fmt}) and {sidecar} from {weights}")
        print(f"input: {metadata['input']}; input_format: {metadata['input_format']}")
        if args.no_check:
            print("check skipped (--no-check): the exported model was not compared with PyTorch")
            return EXIT_OK
    return check(predictor, output, fmt, args)


def check(predictor, exported_path: Path, fmt: str, args) -> int:
    """Compare the exported file with the PyTorch model on real images; print the report."""
    from detectron_res.export import compare_on_files, dataset_images, load_exported
    from detectron_res.inference_io import discover_inputs

    if args.check_images:
        paths, failures, _, _ = discover_inputs(args.check_images, videos=False, recursive_option=None)
        paths, problems, source = [i.path for i in paths], [f"{f.name}: {f.reason}" for f in failures], "--check-images"
        for problem in problems:
            print(f"check: skipped {problem}", file=sys.stderr)
    else:
        paths, source, problems = dataset_images(predictor.cfg)
        for problem in problems:
            print(f"check: {problem}")
    runner = "onnxruntime" if fmt == "onnx" else "torch.jit"
    if not paths:
        why = "; ".join(problems) or "no images"
        print(f"check: NOT VERIFIED ({fmt}): no images to compare on ({why}); pass --check-images with images the "
              "model detects objects on, or --no-check", file=sys.stderr)
        return EXIT_EXPORT_NOT_VERIFIED
    try:
        exported = load_exported(exported_path, fmt)
    except Exception as e:
        print(f"check FAILED ({fmt}): {exported_path} cannot be loaded by {runner}: {one_line(e)}", file=sys.stderr)
        return EXIT_EXPORT_MISMATCH
    try:
        report = compare_on_files(predictor, exported, paths, box_tol=args.box_tol, score_tol=args.score_tol,
                                  check_num=args.check_num)
    except Exception as e:  # the exported graph failed on an image
        print(f"check FAILED ({fmt}): running {exported_path} with {runner}: {one_line(e)}", file=sys.stderr)
        return EXIT_EXPORT_MISMATCH
    if report.unreadable:
        print(f"check: {len(report.unreadable)} image(s) could not be read, e.g. {report.unreadable[0]}",
              file=sys.stderr)
    print(f"check ({fmt}, {runner} vs PyTorch) on images from {source}: {report.summary()}")
    if not report.passed:
        for line in report.failures:
            print(f"  {line}", file=sys.stderr)
        print(f"check FAILED ({fmt}): the exported model disagrees with PyTorch (see above)", file=sys.stderr)
        return EXIT_EXPORT_MISMATCH
    if not report.verified:
        print(f"check: NOT VERIFIED ({fmt}): PyTorch detects nothing above the score threshold "
              f"{report.score_thresh:g} on the {report.images} image(s) tried from {source}, so there was nothing to "
              "compare; pass --check-images with images the model detects objects on, or --no-check",
              file=sys.stderr)
        return EXIT_EXPORT_NOT_VERIFIED
    print(f"check: verified ({fmt}): {report.compared} detection(s) on {report.images_with_detections} image(s) "
          "match PyTorch within tolerance")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
