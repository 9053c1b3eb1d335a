"""Run a trained detector on images from Python.

Five lines from a checkpoint to boxes::

    from detectron_res import Predictor
    predictor = Predictor("output/demo/model_final.pth")      # or Predictor() for the latest trained model
    detections = predictor("street.jpg")                      # a path, a BGR numpy array, or a list of them
    for box, name, score in zip(detections.boxes, detections.class_names, detections.scores):
        print(name, score, box)                               # box = x1, y1, x2, y2 in the image's pixels

Everything the model needs to run (config, class names, input channel order) is
stored in the checkpoint written by training (:mod:`detectron_res.engine.checkpoint`);
a config file can be given to override it.

Files, folders and videos, with annotated copies and JSON written for each (what
``tools/infer.py`` does): :func:`detectron_res.inference_io.predict_files`.

Conventions: boxes are float32 ``x1, y1, x2, y2`` in absolute, 0-based continuous
pixel coordinates of the ORIGINAL image (pixel ``i`` spans ``[i, i+1)``); labels
are contiguous ids ``1..K`` and ``class_names[i]`` names label ``i + 1``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .config import ConfigError
from .engine.checkpoint import CheckpointError
from .engine.distributed import resolve_device
from .precision import autocast, resolve_precision

logger = logging.getLogger(__name__)

__all__ = [
    "Detections",
    "Predictor",
    "NoCheckpointError",
    "USER_ERRORS",
    "find_latest_checkpoint",
    "output_roots",
    "resolve_device",
    "prepare_image",
]

#: Environment variable naming the root under which training writes its runs
#: (``<root>/<config stem>/last_checkpoint``), in addition to ``./output``.
OUTPUT_ENV_VAR = "DETECTRON_RES_OUTPUT"

ImageLike = Union[str, os.PathLike, np.ndarray]


class NoCheckpointError(FileNotFoundError):
    """No trained model was found where training writes them (one-line message)."""


#: What ``Predictor(...)`` raises for a user's mistake: no trained model, a checkpoint
#: that cannot be read or does not match the config, a bad config key or override, a
#: bad argument. The message names the file or key; the tools print its first line
#: and exit with status 2.
USER_ERRORS = (NoCheckpointError, ConfigError, CheckpointError, FileNotFoundError, ValueError, TypeError)


# ----------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------
@dataclass
class Detections:
    """The detections of one image.

    Attributes:
        boxes: ``float32 [N, 4]`` ``x1, y1, x2, y2`` in absolute pixel coordinates
            of the original image (0-based, continuous).
        scores: ``float32 [N]`` class confidence in [0, 1], descending.
        labels: ``int64 [N]`` contiguous class ids ``1..K``.
        class_names: ``N`` names, ``class_names[j]`` is the name of ``labels[j]``.
        image_size: ``(height, width)`` of the original image in pixels.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: List[str]
    image_size: Tuple[int, int]

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to_list(self) -> List[Dict[str, Any]]:
        """One JSON-ready dict per detection: ``box``, ``score``, ``label``, ``class_name``.

        Boxes are rounded to 1/1000 pixel and scores to 1e-6, which keeps the JSON
        readable and loses nothing a float32 model produces meaningfully.
        """
        return [
            {
                "box": [round(float(v), 3) for v in box],
                "score": round(float(score), 6),
                "label": int(label),
                "class_name": name,
            }
            for box, score, label, name in zip(self.boxes, self.scores, self.labels, self.class_names)
        ]

    @classmethod
    def empty(cls, image_size: Tuple[int, int]) -> "Detections":
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            labels=np.zeros((0,), np.int64),
            class_names=[],
            image_size=(int(image_size[0]), int(image_size[1])),
        )


# ----------------------------------------------------------------------------
# Locating a model and a device
# ----------------------------------------------------------------------------
def output_roots() -> List[Path]:
    """Where training writes its runs: ``$DETECTRON_RES_OUTPUT`` (if set), then ``./output``."""
    roots = []
    env = os.environ.get(OUTPUT_ENV_VAR, "").strip()
    if env:
        roots.append(Path(env))
    roots.append(Path("output"))
    unique: List[Path] = []
    for root in roots:
        if root.resolve() not in [r.resolve() for r in unique]:
            unique.append(root)
    return unique


def find_latest_checkpoint(roots: Optional[Sequence[Union[str, os.PathLike]]] = None) -> Optional[Path]:
    """The checkpoint of the most recently updated training run, or None.

    A run is a directory holding a ``last_checkpoint`` pointer (written by the
    training engine after each save), directly under one of ``roots`` or being a
    root itself. The pointer with the newest modification time wins; pointers to
    missing files are skipped with a warning.

    Args:
        roots: directories to search; default :func:`output_roots`.
    """
    from detectron_res.engine.checkpoint import LAST_CHECKPOINT_FILE, CheckpointError, find_last_checkpoint

    pointers: List[Path] = []
    for root in (output_roots() if roots is None else [Path(r) for r in roots]):
        if not root.is_dir():
            continue
        pointers += [p for p in [root / LAST_CHECKPOINT_FILE] if p.is_file()]
        pointers += sorted(root.glob(f"*/{LAST_CHECKPOINT_FILE}"))
    for pointer in sorted(pointers, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            found = find_last_checkpoint(pointer.parent)
        except CheckpointError as e:
            logger.warning("skipping run %s: %s", pointer.parent, e)
            continue
        if found is not None:
            return found
    return None




# ----------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------
def prepare_image(image: np.ndarray, *, format: str = "BGR", model_format: str = "BGR") -> np.ndarray:
    """Check a decoded image and put it in the model's channel order.

    Args:
        image: ``uint8`` array ``[H, W, 3]`` (colour), ``[H, W]`` or ``[H, W, 1]``
            (grayscale, replicated to 3 channels) or ``[H, W, 4]`` (alpha dropped).
        format: channel order of ``image``: ``"BGR"`` (OpenCV) or ``"RGB"`` (PIL, matplotlib).
        model_format: channel order the model's weights expect.
    Returns:
        A C-contiguous ``uint8 [H, W, 3]`` array in ``model_format`` order.
    """
    if format not in ("BGR", "RGB"):
        raise ValueError(f"image format {format!r} is not supported; expected 'BGR' or 'RGB'")
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected an image as a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(
            f"expected a uint8 image (0..255), got dtype {image.dtype}; "
            "convert first, e.g. (img16 >> 8).astype(np.uint8) for 16-bit images"
        )
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(
            f"expected an image of shape [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {tuple(image.shape)}"
        )
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]  # BGRA / RGBA: the colour channels keep their order
    if format != model_format:
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


# ----------------------------------------------------------------------------
# Predictor
# ----------------------------------------------------------------------------
class Predictor:
    """A trained detector ready to run on images.

    Args:
        weights: a checkpoint file written by training (or a run directory holding
            a ``last_checkpoint`` pointer); None uses the most recently trained
            model under ``$DETECTRON_RES_OUTPUT`` / ``./output``
            (:func:`find_latest_checkpoint`).
        config: a config file / name, or an already loaded config, replacing the
            one stored in the checkpoint (for example to change test-time settings).
        overrides: ``section.key=value`` strings applied on top of the config.
        device: ``"auto"`` (GPU if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        score_thresh: detections with a lower score are dropped. Lower than the
            config's ``model.roi_heads.score_thresh_test``, it also lowers that one
            so that the low-scoring boxes are produced at all.
        batch_size: images per forward pass when called on a list.
        precision: ``"fp32"``, ``"bf16"`` (the network under bf16 autocast; box
            decoding, NMS and the score threshold stay float32) or ``"auto"``: bf16
            on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX), fp32 elsewhere
            (:func:`detectron_res.precision.resolve_precision`). The choice is logged.

    Attributes:
        cfg: the resolved config the model was built from.
        model: the ``FasterRCNN`` module, in eval mode on ``device``.
        class_names: ``class_names[i]`` is the name of label ``i + 1``.
        input_format: channel order the model expects (``"BGR"`` or ``"RGB"``).
        checkpoint_path: the checkpoint file the weights came from.
        precision: the resolved precision (``precision.name`` is ``"fp32"`` or ``"bf16"``).
    """

    def __init__(
        self,
        weights: Optional[Union[str, os.PathLike]] = None,
        *,
        config: Any = None,
        overrides: Sequence[str] = (),
        device: Union[str, torch.device] = "auto",
        score_thresh: float = 0.5,
        batch_size: int = 1,
        precision: str = "auto",
    ) -> None:
        from detectron_res.config import apply_overrides, config_from_dict, load_config
        from detectron_res.engine.checkpoint import find_last_checkpoint, load_all_weights, load_checkpoint
        from detectron_res.modeling.build import build_model
        from omegaconf import DictConfig

        if not 0.0 <= float(score_thresh) <= 1.0:
            raise ValueError(f"score_thresh must be in [0, 1], got {score_thresh}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.score_thresh = float(score_thresh)
        self.batch_size = int(batch_size)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        logger.info("inference precision: %s", self.precision)

        if weights is None:
            found = find_latest_checkpoint()
            if found is None:
                roots = " or ".join(f"{r}/*/last_checkpoint" for r in output_roots())
                raise NoCheckpointError(
                    f"no trained model found (looked for {roots}); train the demo model with `make demo` "
                    "(or tools/train_net.py --config ...), or name a trained checkpoint "
                    "(--weights PATH; Predictor(PATH))"
                )
            weights = found
            logger.info("using the most recent trained model: %s", found)
        checkpoint = load_checkpoint(weights, map_location="cpu")
        path = Path(weights)
        if path.is_dir():  # a run folder: load_checkpoint followed its last_checkpoint pointer
            path = find_last_checkpoint(path) or path
        self.checkpoint_path = path

        if config is None:
            if not isinstance(checkpoint.get("config"), dict):
                raise ValueError(f"{path}: the checkpoint stores no config; pass the training config (--config)")
            cfg = config_from_dict(checkpoint["config"], source=f"{path} (stored config)")
            if overrides:
                cfg = apply_overrides(cfg, overrides)
        elif isinstance(config, DictConfig):
            cfg = apply_overrides(config, overrides) if overrides else config
        else:
            cfg = load_config(config, overrides)
        if self.score_thresh < cfg.model.roi_heads.score_thresh_test:
            cfg = apply_overrides(cfg, [f"model.roi_heads.score_thresh_test={self.score_thresh}"])
        self.cfg = cfg
        self.input_format = str(cfg.model.input_format)

        num_classes = int(cfg.model.roi_heads.num_classes)
        names = checkpoint.get("class_names")
        if names is None:
            names = [f"class_{i}" for i in range(1, num_classes + 1)]
        if len(names) != num_classes:
            raise ValueError(
                f"{path}: the checkpoint names {len(names)} classes but config key "
                f"'model.roi_heads.num_classes' is {num_classes}"
            )
        self.class_names = [str(n) for n in names]

        model = build_model(cfg)
        report = load_all_weights(
            model, checkpoint["model"], source=str(path), hint="the config does not match the checkpoint"
        )
        if report.unexpected:
            logger.warning(
                "%s: %d checkpoint weights are not used by the model (first: %s)",
                path,
                len(report.unexpected),
                report.unexpected[0],
            )
        # eval(), with model.fold_frozen_bn FrozenBN folded into the convolutions, and
        # in bf16 the weights stored in bf16 once instead of converted at every call.
        model.prepare_for_inference(precision=self.precision.name)
        self.model = model.to(self.device)

    # ------------------------------------------------------------------
    def __call__(
        self, images: Union[ImageLike, Sequence[ImageLike]], *, format: str = "BGR"
    ) -> Union[Detections, List[Detections]]:
        """Detect objects in one image or a list of images.

        Args:
            images: a file path, a decoded ``uint8`` array (see :func:`prepare_image`),
                or a list/tuple of them.
            format: channel order of numpy arrays, ``"BGR"`` (OpenCV, default) or
                ``"RGB"``. Files are decoded in the right order automatically.
        Returns:
            :class:`Detections` for a single image, a list of them for a list.
        """
        if isinstance(images, (list, tuple)):
            return self.predict_batch(images, format=format)
        return self.predict_batch([images], format=format)[0]

    def read_image(self, path: Union[str, os.PathLike], *, format: Optional[str] = None) -> np.ndarray:
        """Decode an image file as the predictor does for a path: EXIF orientation
        applied, grayscale / alpha / 16-bit turned into ``uint8 [H, W, 3]``, images over
        the config's ``data.max_pixels`` refused (``ImageReadError`` naming the file).

        Args:
            format: channel order of the result, ``"BGR"`` or ``"RGB"``; default the
                model's ``input_format`` (what :meth:`predict_arrays` takes).
        """
        from detectron_res.data.image_io import read_image

        return read_image(path, format=format or self.input_format, max_pixels=int(self.cfg.data.max_pixels))

    def predict_batch(self, images: Sequence[ImageLike], *, format: str = "BGR") -> List[Detections]:
        """Like ``__call__`` on a list; runs ``batch_size`` images per forward pass."""
        results: List[Detections] = []
        for start in range(0, len(images), self.batch_size):
            arrays = []
            for item in images[start : start + self.batch_size]:
                if isinstance(item, (str, os.PathLike)):
                    arrays.append(self.read_image(item))
                else:
                    arrays.append(prepare_image(item, format=format, model_format=self.input_format))
            results += self.predict_arrays(arrays)
        return results

    @torch.inference_mode()
    def predict_arrays(self, arrays: Sequence[np.ndarray]) -> List[Detections]:
        """One forward pass over ``uint8 [H, W, 3]`` arrays already in ``input_format`` order."""
        # np.require copies read-only arrays (decoders often return them), which
        # torch.from_numpy would otherwise share with a warning.
        tensors = [
            torch.from_numpy(np.require(a, requirements=["C", "W"])).to(self.device).permute(2, 0, 1).float()
            for a in arrays
        ]
        with autocast(self.precision.name, self.device):
            outputs = self.model(tensors)
        return [self._to_detections(out, a.shape[:2]) for out, a in zip(outputs, arrays)]

    def _to_detections(self, output: Dict[str, torch.Tensor], image_size: Tuple[int, int]) -> Detections:
        scores = output["scores"].detach().float().cpu()
        keep = scores >= self.score_thresh
        order = torch.argsort(scores[keep], descending=True, stable=True)
        boxes = output["boxes"].detach().float().cpu()[keep][order].numpy().astype(np.float32)
        labels = output["labels"].detach().cpu()[keep][order].numpy().astype(np.int64)
        scores = scores[keep][order].numpy().astype(np.float32)
        names = [
            self.class_names[int(l) - 1] if 1 <= int(l) <= len(self.class_names) else f"class_{int(l)}" for l in labels
        ]
        return Detections(
            boxes=boxes,
            scores=scores,
            labels=labels,
            class_names=names,
            image_size=(int(image_size[0]), int(image_size[1])),
        )
