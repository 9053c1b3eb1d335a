#!/usr/bin/env python
"""Detect objects in images, folders, glob patterns and videos with a trained model.

    python tools/infer.py photo.jpg                        # the most recently trained model
    python tools/infer.py images/ "more/*.png" clip.mp4 --weights output/voc_r101/model_final.pth
    python tools/infer.py photo.jpg --score-thresh 0.3 --device cpu --output results/
    python tools/infer.py photo.jpg --config configs/voc_r101.yaml --weights W.pth input.min_size_test=800
    python tools/infer.py photo.jpg --precision fp32       # default auto: bf16 where the CPU (or a GPU) has it

For every input ``<name>.<ext>`` it writes, under ``--output`` (default ``output/infer``),
two files named ``<name>_<ext>`` (the extension is kept, so ``coffee.png`` and
``coffee.tiff`` never share outputs):

* ``<name>_<ext>.<ext>``: the image with boxes, class names and scores drawn on it
  (``.png`` for formats OpenCV does not write; videos: ``<name>_<ext>.mp4`` with
  every frame annotated);
* ``<name>_<ext>.json``: the detections (file name, image size, boxes as ``x1, y1, x2, y2``
  in the original image's pixels, class ids and names, scores; per frame for videos);

and ``predictions.json`` gathering all of them. Nothing is overwritten silently:
if any of these files exists already (an earlier run into the same folder), the
tool stops before running the model and names it; ``--overwrite`` replaces them
and deletes the other outputs of the earlier run listed in its ``predictions.json``,
so the folder holds one run's results. JSON files are written atomically, and a
run that processed nothing keeps the earlier ``predictions.json``. Files that cannot be read (corrupt,
empty, not an image) are reported by name and skipped; the others are still
processed, and the exit status is 1 when anything failed (2 for a usage error such
as a missing model, 0 when all went well).

Trailing ``section.key=value`` arguments override config keys (told apart from
input files by the ``=`` after a dotted key; an existing file with such a name
is still read as an input).

The work is done by :mod:`detectron_res.inference_io` (inputs, output names, the
run over images and videos) and :class:`detectron_res.predictor.Predictor`; this
file is the command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

# Runnable as `python tools/infer.py` from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detectron_res.exit_status import EXIT_INPUTS_FAILED, EXIT_OK, EXIT_USER_ERROR, one_line  # noqa: E402

_EXAMPLES = """examples:
  python tools/infer.py photo.jpg                       # the most recently trained model
  python tools/infer.py photos/ --recursive             # a folder and all its sub-folders
  python tools/infer.py "shots/*.png" clip.mp4 --weights output/voc07_r101/model_final.pth
  python tools/infer.py photo.jpg --score-thresh 0.3 --device cpu --output results/
  python tools/infer.py photo.jpg --config voc07_r101.yaml --weights W.pth input.min_size_test=800
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/infer.py",
        description="Detect objects in images, folders, glob patterns and videos; write annotated copies and JSON.",
        epilog=_EXAMPLES + "\nExit status: 0 all inputs processed, 1 some inputs failed (named on stderr), 2 usage error.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders, glob patterns (quote them) or video files; "
        "trailing section.key=value arguments override config keys",
    )
    parser.add_argument(
        "--weights",
        help="a checkpoint written by training (or its run folder); default: the most recent "
        "output/*/last_checkpoint (and $DETECTRON_RES_OUTPUT/*/last_checkpoint)",
    )
    parser.add_argument("--config", help="config file replacing the one stored in the checkpoint")
    parser.add_argument("--score-thresh", type=float, default=0.5, help="drop detections scoring lower (default 0.5)")
    parser.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda or cuda:N (default auto)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="images or frames per forward pass (default 1). Images of different sizes are padded to a "
        "common size in a batch, which can change their detections slightly; 1 gives exactly the "
        "single-image results",
    )
    parser.add_argument("-r", "--recursive", action="store_true",
                        help="search the given folders' sub-folders too (default: only the folder itself; "
                        "skipped sub-folders are counted in the output)")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="network precision: bf16 autocast, fp32, or auto (default) = bf16 on CUDA GPUs with native bf16 "
        "(Ampere or later) and on CPUs with native bf16 (AVX512-BF16, AMX), fp32 elsewhere; box decoding and NMS "
        "run in fp32 either way",
    )
    parser.add_argument("--output", default=None, help="output folder (default output/infer)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the outputs of an earlier run in --output (its other outputs listed in its "
                             "predictions.json are deleted; inputs never are); without it existing outputs are an error")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    # Intermixed: inputs and key=value overrides may come before or after options.
    args = parser.parse_intermixed_args(argv)
    # Warnings only: the tool prints which model it uses and a summary itself.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0.0 <= args.score_thresh <= 1.0:
        parser.error(f"--score-thresh must be in [0, 1], got {args.score_thresh}")

    # Imported after the cheap checks: they import torch.
    from detectron_res.inference_io import default_output_dir, discover_inputs, num_items, plan_outputs, \
        predict_files, split_overrides
    from detectron_res.outputs import OutputError
    from detectron_res.predictor import USER_ERRORS, Predictor
    from omegaconf import OmegaConf

    input_args, overrides = split_overrides(args.inputs)
    if not input_args and not args.print_config:
        parser.error("no input given (only config overrides)")
    inputs, failures, ignored, skipped_folders = discover_inputs(input_args, recursive=args.recursive)
    for failure in failures:
        print(f"skipped {failure.name}: {failure.reason}", file=sys.stderr)
    if ignored:
        print(f"ignored {ignored} file(s) in the given folders without an image or video extension")
    if skipped_folders:
        print(f"skipped {skipped_folders} sub-folder(s) of the given folders (pass --recursive to search them)")
    if not inputs and not args.print_config:
        print("error: none of the inputs could be found; nothing to do", file=sys.stderr)
        return EXIT_INPUTS_FAILED

    # Every output is named and checked before the model is loaded: an earlier run's
    # files (or a file where the folder should be) stop the run with one line.
    output_dir = Path(args.output) if args.output else default_output_dir()
    plan = plan_outputs(output_dir, inputs)
    try:
        if not args.print_config:
            plan.check(overwrite=args.overwrite, flag="--output")
        predictor = Predictor(args.weights, config=args.config, overrides=overrides, device=args.device,
                              score_thresh=args.score_thresh, batch_size=args.batch_size, precision=args.precision)
    except (OutputError, *USER_ERRORS) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    if args.print_config:
        print(OmegaConf.to_yaml(predictor.cfg), end="")
        return EXIT_OK

    source = "the most recent trained model" if args.weights is None else "--weights"
    print(f"model: {predictor.checkpoint_path} ({source}); config: {args.config or 'stored in the checkpoint'}; "
          f"{len(predictor.class_names)} classes; device: {predictor.device}; precision: {predictor.precision}; "
          f"score threshold: {predictor.score_thresh}")

    bar = None
    if (len(inputs) > 1 or any(i.kind == "video" for i in inputs)) and not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=num_items(inputs), unit="img", dynamic_ncols=True, file=sys.stderr)

    def skipped(failure) -> None:  # through the bar, which would otherwise draw over the line
        (bar.write if bar is not None else print)(f"skipped {failure.name}: {failure.reason}", file=sys.stderr)

    try:
        result = predict_files(predictor, plan, overwrite=args.overwrite, failures=failures,
                               on_progress=bar.update if bar is not None else None, on_skip=skipped)
    finally:
        if bar is not None:
            bar.close()
    if result.deleted:
        print(f"--overwrite: deleted {len(result.deleted)} output file(s) of the earlier run in {output_dir}/")
    if not result.summary_written:
        print(f"no input was processed: {plan.summary_path} of the earlier run is kept", file=sys.stderr)

    stats = result.stats
    rate = (stats.images + stats.frames) / result.elapsed if result.elapsed > 0 else float("inf")
    parts = [f"{stats.images} image(s)"]
    if stats.videos or any(i.kind == "video" for i in inputs):
        parts.append(f"{stats.videos} video(s) ({stats.frames} frames)")
    print(f"done: {', '.join(parts)}, {stats.detections} detection(s) in {result.elapsed:.1f} s "
          f"({rate:.2f} images/s); outputs in {output_dir}/")
    if stats.failures:
        print(f"{len(stats.failures)} input(s) failed:", file=sys.stderr)
        for f in stats.failures:
            print(f"  {f.name}: {f.reason}", file=sys.stderr)
        return EXIT_INPUTS_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
