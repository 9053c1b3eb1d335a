#!/usr/bin/env python
"""Export a trained detector to ONNX (onnxruntime) or TorchScript, pre- and post-processing included.

    python tools/export.py --weights output/voc_r101/model_final.pth --format onnx
    python tools/export.py --config configs/voc_r101.yaml --weights W.pth --format onnx --output model.onnx
    python tools/export.py --weights W.pth --format torchscript

The exported model takes ONE ``uint8 [H, W, 3]`` image of any size, channels in the
model's order (``input_format`` in the metadata: BGR for MSRA weights, as
``cv2.imread`` returns), and returns ``boxes [M, 4]`` (x1, y1, x2, y2 in the
image's pixels), ``scores [M]`` and ``labels [M]`` (1..K). Resizing,
normalization, padding, NMS and the mapping back to the original image happen
inside. The caller decodes the file (EXIF rotation, grayscale...), maps labels to
``class_names`` and applies its own score threshold; see detectron_res/export.py.

After writing, the tool runs the exported model and PyTorch on a test image and
prints how far apart they are (``--no-check`` skips this).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export a trained detector to ONNX or TorchScript.")
    parser.add_argument(
        "--weights", help="checkpoint written by training (default: the most recent output/*/last_checkpoint)"
    )
    parser.add_argument("--config", help="config file replacing the one stored in the checkpoint")
    parser.add_argument("--format", default="onnx", help="onnx (default) or torchscript")
    parser.add_argument(
        "--output", help="output file (default: next to the weights, <name>.onnx / <name>.torchscript.pt)"
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 16 (default 17)")
    parser.add_argument("--no-check", action="store_true", help="do not compare the exported model with PyTorch")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="override config keys, e.g. input.min_size_test=800"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from detectron_res.config import ConfigError
    from detectron_res.engine.checkpoint import CheckpointError
    from detectron_res.export import EXPORT_FORMATS, export_metadata, export_onnx, export_torchscript
    from detectron_res.predictor import NoCheckpointError, Predictor

    if args.format not in EXPORT_FORMATS:
        print(
            f"error: --format {args.format!r} is not supported; expected one of {', '.join(EXPORT_FORMATS)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        # score_thresh=1.0 keeps the config's own test threshold (the Predictor
        # lowers it only for smaller values); the exported graph applies it.
        predictor = Predictor(
            args.weights, config=args.config, overrides=args.overrides, device="cpu", score_thresh=1.0,
            precision="fp32",  # the exported graph is float32
        )
    except (NoCheckpointError, ConfigError, CheckpointError, FileNotFoundError, ValueError, TypeError) as e:
        text = str(e).strip().splitlines()
        print(f"error: {text[0] if text else type(e).__name__}", file=sys.stderr)
        return EXIT_USAGE
    weights = Path(predictor.checkpoint_path)
    suffix = ".onnx" if args.format == "onnx" else ".torchscript.pt"
    output = Path(args.output) if args.output else weights.with_name(weights.stem + suffix)
    model = predictor.model

    if args.format == "onnx":
        try:
            export_onnx(model, output, class_names=predictor.class_names, opset=args.opset)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
    else:
        export_torchscript(model, output)
    metadata = export_metadata(model, predictor.class_names)
    sidecar = output.with_name(output.name + ".json")
    sidecar.write_text(json.dumps(metadata, indent=1) + "\n")
    print(f"wrote {output} ({args.format}) and {sidecar} from {weights}")
    print(f"input: {metadata['input']}; input_format: {metadata['input_format']}")

    if args.no_check:
        return EXIT_OK
    return _check(model, output, args.format)


def _check(model, output: Path, fmt: str) -> int:
    """Run PyTorch and the exported model on one synthetic image; report the largest differences."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    # Smooth shapes on a gradient, at an aspect ratio unlike the tracing example.
    image = np.clip(np.linspace(0, 255, 160)[None, :, None] + rng.normal(0, 20, (120, 160, 3)), 0, 255).astype(np.uint8)
    with torch.no_grad():
        ref = model([torch.from_numpy(image).permute(2, 0, 1).float()])[0]
    if fmt == "onnx":
        from detectron_res.export import OnnxDetector

        boxes, scores, labels = OnnxDetector(output)(image)
    else:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            module = torch.jit.load(str(output))
        with torch.no_grad():
            boxes, scores, labels = (t.detach().numpy() for t in module(torch.from_numpy(image)))
    ref_boxes, ref_scores, ref_labels = (ref[k].numpy() for k in ("boxes", "scores", "labels"))
    if len(boxes) != len(ref_boxes) or not np.array_equal(labels, ref_labels):
        print(
            f"check FAILED: PyTorch gives {len(ref_boxes)} detections, the exported model {len(boxes)} "
            "(or different labels) on the test image",
            file=sys.stderr,
        )
        return EXIT_MISMATCH
    if len(boxes):
        print(
            f"check: {len(boxes)} detections match PyTorch on a 120x160 test image; largest differences: "
            f"boxes {np.abs(boxes - ref_boxes).max():.2e} px, scores {np.abs(scores - ref_scores).max():.2e}"
        )
    else:
        print("check: no detections on the test image from either PyTorch or the exported model")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
