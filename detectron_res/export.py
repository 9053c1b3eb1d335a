"""Exporting a trained detector to ONNX (and TorchScript) with pre- and post-processing inside.

The exported graph does, for ONE image of any size, everything
:class:`~detectron_res.modeling.faster_rcnn.FasterRCNN` does in evaluation:

    uint8 image [H, W, 3]  (channel order of the weights: model.input_format)
      -> float, subtract pixel mean, divide by std
      -> bilinear resize (shorter side to input.min_size_test, longer side at most
         input.max_size_test), zero padding to input.size_divisibility
      -> backbone -> RPN (anchors, top-k, decode, clip, min size, NMS, top-k)
      -> RoI pooling -> res5 / fc6-fc7 -> softmax, class-specific decode, clip,
         score threshold, per-class NMS, top detections_per_image
      -> boxes mapped back to the original image and clipped to it
    outputs: boxes [M, 4] float32 (x1, y1, x2, y2, original-image pixels, 0-based,
             continuous), scores [M] float32 (descending), labels [M] int64 (1..K)

What the caller must still do (the formats have no operators for it):

* decode the file (JPEG/PNG/...), apply its EXIF orientation, turn grayscale /
  RGBA / 16-bit into 3-channel uint8: ``detectron_res.data.image_io.read_image``
  does all of it (or ``cv2.imread`` for plain files);
* give the channels in the model's order (``input_format`` in the exported
  metadata; BGR for MSRA weights, which is what OpenCV returns);
* map labels to names (``class_names`` in the metadata; label ``i`` is
  ``class_names[i - 1]``) and drop scores below the threshold they want: the
  graph keeps scores above ``model.roi_heads.score_thresh_test`` (0.05).

Appendix B's options (Table 9): global context is exported (the whole image is
one more RoI of the same graph); box refinement, multi-scale and flip testing
(``model.roi_heads.box_refinement``, ``test.scales``, ``test.hflip``) are refused
with a ValueError naming the keys to turn off: their pyramids, mirrored views and
second pass are per-image Python loops that tracing would freeze.

One image per call: the padded batch of the PyTorch model would make the outputs
of one image depend on the size of the others, which a caller of an exported
graph never expects.

Why a separate module instead of tracing ``FasterRCNN`` itself: its evaluation
path turns tensor sizes into Python numbers (image sizes, per-image counts for
``split``), which tracing freezes to the sizes of the example image.
:class:`ExportableDetector` re-expresses that path with tensor-only size
arithmetic, calling the model's own submodules (backbone, RPN head, box coders,
pooler, res5 / fc head, predictor) for every learned or numerical step, so that
the weights and the numerics are shared; ``tests/test_export.py`` checks that
both give the same detections.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, nms

from .exit_status import one_line
from .outputs import atomic_write, atomic_write_text
from .structures import clip_boxes, nonempty_mask

__all__ = [
    "ExportableDetector", "export_onnx", "export_torchscript", "export_predictor", "EXPORT_FORMATS", "OnnxDetector",
    "load_exported", "ParityReport", "compare_with_pytorch", "compare_on_files", "dataset_images", "MIN_OPSET",
    "MAX_OPSET",
]

#: Formats of ``tools/export.py --format``.
EXPORT_FORMATS = ("onnx", "torchscript")
# ROIAlign(aligned=True) needs opset 16; 17 is supported by every onnxruntime >= 1.14.
DEFAULT_OPSET = 17
MIN_OPSET = 16
# The TorchScript-based exporter's newest opset in torch 2.x
# (torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET); a constant so that
# tools/export.py can check --opset before importing torch.
MAX_OPSET = 20


def _shape(x: Tensor) -> Tensor:
    """``x.shape`` as an int64 tensor: traced as a graph value, not a constant."""
    return torch._shape_as_tensor(x)


class ExportableDetector(nn.Module):
    """Single-image evaluation path of a ``FasterRCNN``, with tensor-only size arithmetic.

    Args:
        model: a ``FasterRCNN`` (``detectron_res.modeling.build.build_model``) with
            trained weights; it is used in evaluation mode and shares its modules
            (no copy).
    Input of ``forward``: ``uint8 [H, W, 3]`` image in ``model.input_format`` order.
    Outputs: ``boxes [M, 4]`` float32, ``scores [M]`` float32, ``labels [M]`` int64
    (see the module docstring).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        for attr in ("preprocessor", "backbone", "backbone_feature", "rpn", "roi_heads"):
            if not hasattr(model, attr):
                raise TypeError(
                    f"ExportableDetector: expected a detectron_res FasterRCNN, "
                    f"got {type(model).__name__} without '{attr}'"
                )
        options = getattr(model, "test_time_options", ())
        if options:
            # Pyramids, mirrored views and the refinement's second pass have
            # data-dependent shapes and per-image Python loops the tracer would freeze.
            raise ValueError(
                f"export: test-time option(s) {', '.join(options)} cannot be traced into one graph; export with "
                + " ".join(f"{k}={'[]' if k == 'test.scales' else 'false'}" for k in options)
                + " (model.roi_heads.global_context is supported)"
            )
        self.model = model.eval()
        pre = model.preprocessor
        self.min_size = float(pre.min_size[False])
        self.max_size = float(pre.max_size[False])
        self.size_divisibility = int(pre.size_divisibility)
        rpn = model.rpn
        self.pre_nms_topk = int(rpn.pre_nms_topk[False])
        self.post_nms_topk = int(rpn.post_nms_topk[False])

    # ------------------------------------------------------------------
    def preprocess(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``uint8 [H, W, 3]`` -> padded ``[1, 3, Hp, Wp]``, resized size ``(h, w)`` and
        original size ``(H, W)`` as int64 tensors."""
        pre = self.model.preprocessor
        orig_size = _shape(image)[:2]  # [2] (H, W)
        x = image.permute(2, 0, 1).to(torch.float32)
        x = (x - pre.pixel_mean) / pre.pixel_std
        # Same formula as preprocess.resized_size, in float64 like Python's floats,
        # with round-half-to-even like Python's round().
        size64 = orig_size.to(torch.float64)
        scale = torch.minimum(self.min_size / size64.min(), self.max_size / size64.max())
        new_size = torch.clamp(torch.round(size64 * scale), min=1).to(torch.int64)  # [2] (h, w)
        x = F.interpolate(x[None], size=(new_size[0], new_size[1]), mode="bilinear", align_corners=False)
        d = self.size_divisibility
        padded = torch.div(new_size + (d - 1), d, rounding_mode="floor") * d
        pad = padded - new_size
        x = F.pad(x, (0, pad[1], 0, pad[0]))  # bottom/right, zeros after normalization as the model does
        return x, new_size, orig_size

    def proposals(self, features: Tensor, new_size: Tensor, image_scale: Tensor) -> Tensor:
        """RPN on one image's ``[1, C, Hf, Wf]`` features -> ``[R, 4]`` proposals in input pixels."""
        rpn = self.model.rpn
        pred_logits, pred_deltas = rpn.head(features)
        # (1, A, Hf, Wf) -> (Hf, Wf, A) -> (P,); (1, A*4, Hf, Wf) -> (Hf, Wf, A*4) -> (P, 4):
        # the anchor order of AnchorGenerator (location-major, then anchor).
        pred_logits = pred_logits.permute(0, 2, 3, 1).reshape(-1)
        pred_deltas = pred_deltas.permute(0, 2, 3, 1).reshape(-1, 4)
        anchors = self.anchors(features)

        num_anchors = _shape(pred_logits)[0]
        k = torch.clamp(num_anchors, max=self.pre_nms_topk)
        scores, topk_idx = pred_logits.float().topk(k)
        boxes = rpn.box_coder.decode(pred_deltas[topk_idx], anchors[topk_idx])
        boxes = clip_boxes(boxes, new_size.to(torch.float32))
        keep = nonempty_mask(boxes, rpn.min_size * image_scale) & torch.isfinite(scores)
        boxes, scores = boxes[keep], scores[keep]
        kept = nms(boxes, scores, rpn.nms_thresh)[: self.post_nms_topk]
        return boxes[kept]

    def anchors(self, features: Tensor) -> Tensor:
        """``[Hf * Wf * A, 4]`` anchors, as ``AnchorGenerator.forward`` computes them."""
        gen = self.model.rpn.anchor_generator
        size = _shape(features)
        shift_x = (torch.arange(size[3], dtype=torch.float32, device=features.device) + gen.offset) * gen.stride
        shift_y = (torch.arange(size[2], dtype=torch.float32, device=features.device) + gen.offset) * gen.stride
        grid_y, grid_x = torch.meshgrid(shift_y, shift_x, indexing="ij")  # [Hf, Wf] each
        shifts = torch.stack((grid_x, grid_y, grid_x, grid_y), dim=-1).reshape(-1, 1, 4)  # [Hf*Wf, 1, 4]
        return (shifts + gen.cell_anchors[None]).reshape(-1, 4)

    def detections(self, features: Tensor, proposals: Tensor, new_size: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Fast R-CNN stage on one image, as ``ROIHeads.predict`` + ``ROIHeads.inference``."""
        heads = self.model.roi_heads
        num_classes = heads.num_classes
        rois = torch.cat((torch.zeros_like(proposals[:, :1]), proposals), dim=1)  # [R, 5], image 0
        region_features = self._region_features(features, rois)
        if heads.global_context:
            # Appendix B: the whole image (its valid region) as one more RoI, its feature
            # concatenated to every region's: [R, D] ++ [R, D] -> [R, 2D]
            zero = torch.zeros((), dtype=torch.float32, device=features.device)
            h, w = new_size.to(torch.float32).unbind(0)
            whole = torch.stack((zero, zero, zero, w, h))[None]  # [1, 5]
            context = self._region_features(features, whole)  # [1, D]
            region_features = torch.cat((region_features, context.expand(region_features.shape[0], -1)), dim=1)
        pred_logits, pred_deltas = heads.predictor(region_features)

        scores = F.softmax(pred_logits.float(), dim=1)[:, 1:]  # [R, K]
        boxes = heads.box_coder.decode(pred_deltas.reshape(-1, num_classes, 4), proposals[:, None, :])  # [R, K, 4]
        boxes = clip_boxes(boxes, new_size.to(torch.float32))
        labels = torch.arange(1, num_classes + 1, device=scores.device)[None].expand_as(scores)  # [R, K]
        keep = (scores > heads.score_thresh) & nonempty_mask(boxes)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        kept = batched_nms(boxes, scores, labels - 1, heads.nms_thresh)[: heads.detections_per_image]
        return boxes[kept], scores[kept], labels[kept]

    def _region_features(self, features: Tensor, rois: Tensor) -> Tensor:
        """RoI pooling and the per-region head: ``[R, 5]`` -> ``[R, D]``."""
        heads = self.model.roi_heads
        pooled = heads.pooler(features, rois)
        if hasattr(heads, "res5"):
            return heads.res5(pooled).mean(dim=(2, 3))
        return heads.box_head(pooled)

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        x, new_size, orig_size = self.preprocess(image)
        # Resize factor per axis and their geometric mean, in float64 like the
        # Preprocessor's Python arithmetic, then float32.
        ratio = new_size.to(torch.float64) / orig_size.to(torch.float64)  # (h / H, w / W)
        image_scale = torch.sqrt(ratio[0] * ratio[1]).to(torch.float32)
        features = self.model.backbone(x)[self.model.backbone_feature]
        proposals = self.proposals(features, new_size, image_scale)
        boxes, scores, labels = self.detections(features, proposals, new_size)
        # Back to the original image: x by W / w, y by H / h, then clip.
        back = (orig_size.to(torch.float64) / new_size.to(torch.float64)).to(torch.float32)  # (H/h, W/w)
        boxes = boxes * torch.stack((back[1], back[0], back[1], back[0]))
        boxes = clip_boxes(boxes, orig_size.to(torch.float32))
        return boxes, scores, labels


# ----------------------------------------------------------------------------
# Exporters
# ----------------------------------------------------------------------------
def _example_image(height: int = 75, width: int = 100) -> Tensor:
    # Any image works: the graph has no size-dependent branches. A textured one
    # keeps every stage populated while tracing (so no op is pruned as dead).
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)


def export_metadata(model: nn.Module, class_names: Sequence[str]) -> Dict[str, Any]:
    """What a caller needs besides the graph (stored in the ONNX file and a sidecar JSON)."""
    return {
        "input": "image: uint8 [H, W, 3], channels in input_format order, one image per call",
        "outputs": (
            "boxes float32 [M, 4] x1,y1,x2,y2 original-image pixels; scores float32 [M]; labels int64 [M] in 1..K"
        ),
        "input_format": str(model.input_format),
        "class_names": [str(n) for n in class_names],
        "score_thresh": float(model.roi_heads.score_thresh),
        "min_size_test": int(model.preprocessor.min_size[False]),
        "max_size_test": int(model.preprocessor.max_size[False]),
    }


def export_onnx(
    model: nn.Module,
    path: Union[str, os.PathLike],
    *,
    class_names: Sequence[str] = (),
    opset: int = DEFAULT_OPSET,
    example_size: Tuple[int, int] = (75, 100),
) -> Path:
    """Write ``model`` as an ONNX graph with a dynamic image size.

    Uses the TorchScript-based exporter (``dynamo=False``): it records the
    tensor size arithmetic of :class:`ExportableDetector` as graph operations and
    has the translations of torchvision's ``nms``, ``roi_align`` and ``roi_pool``.

    Args:
        model: a trained ``FasterRCNN`` (``prepare_for_inference()`` already
            called or not; the export runs it in evaluation mode).
        path: output ``.onnx`` file.
        class_names: stored in the metadata (``class_names[i]`` names label ``i + 1``).
        opset: ONNX opset, >= 16 (ROIAlign with ``aligned=True``).
        example_size: ``(H, W)`` of the image used for tracing.
    Returns:
        ``path``. The ONNX model has input ``image`` (``uint8 [H, W, 3]``, H and W
        dynamic) and outputs ``boxes``, ``scores``, ``labels``; its
        ``metadata_props`` hold :func:`export_metadata` as JSON under ``detectron_res``.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"ONNX opset {opset} is not supported; expected {MIN_OPSET} to {MAX_OPSET} "
                         f"(ROIAlign aligned=True needs {MIN_OPSET}; the exporter stops at {MAX_OPSET})")
    import onnx

    _require_float32_weights(model, "export_onnx", "the ONNX graph")
    path = Path(path)
    wrapper = ExportableDetector(model).eval()
    example = _example_image(*example_size).to(model.preprocessor.pixel_mean.device)
    with warnings.catch_warnings():
        # The tracer warns about every tensor->Python conversion it can see; the
        # size arithmetic above avoids them, and the parity test is the check.
        warnings.simplefilter("ignore")
        buffer = io.BytesIO()
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                (example,),
                buffer,
                dynamo=False,
                opset_version=int(opset),
                input_names=["image"],
                output_names=["boxes", "scores", "labels"],
                dynamic_axes={
                    "image": {0: "height", 1: "width"},
                    "boxes": {0: "num_detections"},
                    "scores": {0: "num_detections"},
                    "labels": {0: "num_detections"},
                },
                do_constant_folding=True,
            )
    onnx_model = onnx.load_from_string(buffer.getvalue())
    entry = onnx_model.metadata_props.add()
    entry.key = "detectron_res"
    entry.value = json.dumps(export_metadata(model, class_names))
    data = onnx_model.SerializeToString()
    return atomic_write(path, lambda f: f.write(data))  # never half a model under the final name


def _require_float32_weights(model: nn.Module, what: str, graph: str) -> None:
    """Both export formats are float32 graphs: refuse a model prepared for bf16 inference."""
    low = next((p.dtype for p in model.parameters() if p.is_floating_point() and p.dtype != torch.float32), None)
    if low is not None:
        raise ValueError(f"{what}: the model stores {low} weights (prepared for bf16 inference); {graph} "
                         "is float32: load it with precision='fp32' (Predictor(..., precision='fp32'), as "
                         "tools/export.py does)")


def export_torchscript(
    model: nn.Module, path: Union[str, os.PathLike], *, example_size: Tuple[int, int] = (75, 100)
) -> Path:
    """Write ``model`` as a traced TorchScript module (``torch.jit.load`` runs it without this package).

    Same input and outputs as the ONNX graph. Tracing records the tensor size
    arithmetic of :class:`ExportableDetector`, so other image sizes work too.
    TorchScript is deprecated in recent PyTorch releases; prefer ONNX for deployment.
    """
    _require_float32_weights(model, "export_torchscript", "the traced module")
    wrapper = ExportableDetector(model).eval()
    example = _example_image(*example_size).to(model.preprocessor.pixel_mean.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(wrapper, (example,), check_trace=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.save's deprecation notice
        return atomic_write(path, lambda f: torch.jit.save(traced, f))


def default_export_path(weights: Union[str, os.PathLike], fmt: str) -> Path:
    """Next to the weights: ``<name>.onnx`` or ``<name>.torchscript.pt``."""
    weights = Path(weights)
    return weights.with_name(weights.stem + (".onnx" if fmt == "onnx" else ".torchscript.pt"))


def sidecar_path(output: Union[str, os.PathLike]) -> Path:
    """The JSON file beside an export holding :func:`export_metadata`: ``<output>.json``."""
    output = Path(output)
    return output.with_name(output.name + ".json")


def export_predictor(predictor: Any, output: Union[str, os.PathLike], fmt: str, *,
                     opset: int = DEFAULT_OPSET) -> Dict[str, Any]:
    """Export a :class:`~detectron_res.predictor.Predictor`'s model to ``output`` in
    ``fmt`` (:data:`EXPORT_FORMATS`) and write :func:`sidecar_path` beside it, both
    atomically. Returns the metadata written to the sidecar."""
    if fmt == "onnx":
        export_onnx(predictor.model, output, class_names=predictor.class_names, opset=opset)
    elif fmt == "torchscript":
        export_torchscript(predictor.model, output)
    else:
        raise ValueError(f"format {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    metadata = export_metadata(predictor.model, predictor.class_names)
    atomic_write_text(sidecar_path(output), json.dumps(metadata, indent=1) + "\n")
    return metadata


class OnnxDetector:
    """Run an exported ``.onnx`` detector with onnxruntime (no PyTorch needed).

    Args:
        path: file written by :func:`export_onnx`.
        providers: onnxruntime execution providers (default: CPU).
    Call it with a ``uint8 [H, W, 3]`` array in ``input_format`` order; returns
    ``(boxes, scores, labels)`` numpy arrays.
    """

    def __init__(self, path: Union[str, os.PathLike], providers: Optional[Sequence[str]] = None) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=list(providers or ["CPUExecutionProvider"]))
        meta = self.session.get_modelmeta().custom_metadata_map.get("detectron_res")
        self.metadata: Dict[str, Any] = json.loads(meta) if meta else {}

    def __call__(self, image: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            what = (
                f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            )
            raise TypeError(f"OnnxDetector: expected a uint8 image [H, W, 3], got {what}")
        boxes, scores, labels = self.session.run(None, {"image": np.ascontiguousarray(image)})
        return boxes, scores, labels


# ----------------------------------------------------------------------------
# Parity check: the exported file against the PyTorch model, on real detections
# ----------------------------------------------------------------------------
Detections = Tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [M, 4], scores [M], labels [M]


def load_exported(path: Union[str, os.PathLike], fmt: str) -> Callable[[np.ndarray], Detections]:
    """A function running the exported file on one ``uint8 [H, W, 3]`` image:
    onnxruntime for ``onnx``, ``torch.jit.load`` for ``torchscript``."""
    if fmt == "onnx":
        return OnnxDetector(path)
    if fmt != "torchscript":
        raise ValueError(f"format {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        module = torch.jit.load(str(path), map_location="cpu")

    def run(image: np.ndarray) -> Detections:
        with torch.no_grad():
            boxes, scores, labels = module(torch.from_numpy(np.ascontiguousarray(image)))
        return boxes.numpy(), scores.numpy(), labels.numpy()

    return run


@dataclass
class ParityReport:
    """What :func:`compare_with_pytorch` compared and how far apart the two were.

    ``compared`` counts PyTorch detections matched with an exported one (same label,
    the closest box); ``unmatched`` those of either side without a partner, apart
    from ``borderline`` ones (a score within ``score_tol`` of the threshold, which
    rounding may put on either side of it).
    """

    images: int = 0
    images_with_detections: int = 0
    reference_detections: int = 0
    exported_detections: int = 0
    compared: int = 0
    labels_agree: int = 0
    unmatched: int = 0
    borderline: int = 0
    max_box_diff: float = 0.0
    max_score_diff: float = 0.0
    box_tol: float = 0.0
    score_tol: float = 0.0
    score_thresh: float = 0.0
    failures: List[str] = field(default_factory=list)  # one line per image that disagrees (first few)
    unreadable: List[str] = field(default_factory=list)  # "path (reason)" of images that could not be read

    @property
    def verified(self) -> bool:
        """At least one detection compared, and everything within tolerance."""
        return self.compared > 0 and self.passed

    @property
    def passed(self) -> bool:
        return (self.unmatched == 0 and self.labels_agree == self.compared and self.max_box_diff <= self.box_tol
                and self.max_score_diff <= self.score_tol)

    def summary(self) -> str:
        return (f"{self.images} image(s), {self.images_with_detections} with detections; "
                f"{self.compared} detection(s) compared (PyTorch {self.reference_detections}, exported "
                f"{self.exported_detections}, scores above {self.score_thresh:g}); max box difference "
                f"{self.max_box_diff:.2e} px, max score difference {self.max_score_diff:.2e}; labels agree "
                f"{self.labels_agree}/{self.compared}; unmatched {self.unmatched}"
                + (f" (+{self.borderline} within {self.score_tol:g} of the threshold, not counted)"
                   if self.borderline else "")
                + f"; tolerance: boxes {self.box_tol:g} px, scores {self.score_tol:g}")


def _pytorch_detections(model: nn.Module, image: np.ndarray) -> Detections:
    device = model.preprocessor.pixel_mean.device
    with torch.no_grad():
        out = model([torch.from_numpy(image).permute(2, 0, 1).float().to(device)])[0]
    return tuple(out[k].detach().cpu().numpy() for k in ("boxes", "scores", "labels"))


def compare_with_pytorch(
    model: nn.Module,
    exported: Callable[[np.ndarray], Detections],
    images: Iterable[Tuple[str, np.ndarray]],
    *,
    box_tol: float = 0.05,
    score_tol: float = 1e-3,
    stop_after: Optional[int] = None,
) -> ParityReport:
    """Run ``model`` (PyTorch, evaluation mode) and ``exported`` on each image and match
    their detections.

    Args:
        model: the ``FasterRCNN`` that was exported (its score threshold is the graph's).
        exported: from :func:`load_exported`.
        images: ``(name, uint8 [H, W, 3] in model.input_format)`` pairs (read lazily).
        box_tol: largest allowed coordinate difference of matched boxes, in pixels.
        score_tol: largest allowed score difference; also the margin around the score
            threshold inside which a detection present on one side only is not a mismatch.
        stop_after: stop once this many images had PyTorch detections (None: all images).
    Returns:
        a :class:`ParityReport`; ``report.verified`` is False when nothing was
        compared (no detections) as well as when the two disagree.

    Matching, per image: each PyTorch detection (highest score first) takes the free
    exported detection of the same label whose box differs least (largest coordinate
    difference). One without a same-label partner is matched to an exported box of
    another label within ``box_tol`` if there is one (counted as compared, but not in
    ``labels_agree``), else counted unmatched; exported detections left over are
    unmatched too. Borderline scores (see :class:`ParityReport`) are not counted.
    """
    model.eval()
    thresh = float(model.roi_heads.score_thresh)
    report = ParityReport(box_tol=float(box_tol), score_tol=float(score_tol), score_thresh=thresh)
    for name, image in images:
        ref_boxes, ref_scores, ref_labels = _pytorch_detections(model, image)
        boxes, scores, labels = (np.asarray(a) for a in exported(image))
        report.images += 1
        report.images_with_detections += int(len(ref_boxes) > 0)
        report.reference_detections += len(ref_boxes)
        report.exported_detections += len(boxes)
        free = np.ones(len(boxes), dtype=bool)
        problems = []
        for i in np.argsort(-ref_scores, kind="stable"):
            same_label = np.flatnonzero(free & (labels == ref_labels[i]))
            if len(same_label) == 0:
                if ref_scores[i] < thresh + score_tol:
                    report.borderline += 1
                    continue
                other = np.flatnonzero(free)
                # The box found under another label: a label disagreement, else a missing detection.
                if len(other) and np.abs(boxes[other] - ref_boxes[i]).max(axis=1).min() <= box_tol:
                    report.compared += 1
                    j = other[np.abs(boxes[other] - ref_boxes[i]).max(axis=1).argmin()]
                    free[j] = False
                    problems.append(f"label {int(labels[j])} where PyTorch has {int(ref_labels[i])}")
                else:
                    report.unmatched += 1
                    problems.append(f"PyTorch detection (label {int(ref_labels[i])}, score {ref_scores[i]:.3f}) "
                                    "missing")
                continue
            diffs = np.abs(boxes[same_label] - ref_boxes[i]).max(axis=1)
            j = same_label[diffs.argmin()]
            free[j] = False
            report.compared += 1
            report.labels_agree += 1
            box_diff, score_diff = float(diffs.min()), float(abs(scores[j] - ref_scores[i]))
            report.max_box_diff = max(report.max_box_diff, box_diff if math.isfinite(box_diff) else math.inf)
            report.max_score_diff = max(report.max_score_diff, score_diff if math.isfinite(score_diff) else math.inf)
            if box_diff > box_tol or score_diff > score_tol:
                problems.append(f"box differs by {box_diff:.3g} px, score by {score_diff:.3g}")
        for j in np.flatnonzero(free):
            if scores[j] < thresh + score_tol:
                report.borderline += 1
            else:
                report.unmatched += 1
                problems.append(f"exported detection (label {int(labels[j])}, score {scores[j]:.3f}) not in PyTorch's")
        if problems and len(report.failures) < 5:
            report.failures.append(f"{name}: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1
                                                                else ""))
        if stop_after is not None and report.images_with_detections >= stop_after:
            break
    return report


def dataset_images(cfg: Any) -> Tuple[List[Path], str, List[str]]:
    """Images to check an export on when the user names none: those of the config's
    test datasets, else of its training datasets.

    Returns:
        ``(paths, where they come from, why the other sources could not be used)``;
        ``paths`` is empty when no source could be read.
    """
    from .data.catalog import get_datasets

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
            problems.append(f"data.{key} {names} cannot be read ({one_line(e)})")
            continue
        paths = [Path(r.file_name) for r in dataset.records]
        if paths:
            return paths, f"data.{key} {names}", problems
        problems.append(f"data.{key} {names} has no images")
    return [], "", problems


def compare_on_files(
    predictor: Any,
    exported: Callable[[np.ndarray], Detections],
    paths: Sequence[Union[str, os.PathLike]],
    *,
    box_tol: float = 0.05,
    score_tol: float = 1e-3,
    check_num: int = 20,
) -> ParityReport:
    """:func:`compare_with_pytorch` on image files: ``predictor.model`` against
    ``exported`` on up to ``5 * check_num`` of ``paths`` (read as the predictor reads
    them), stopping once ``check_num`` had PyTorch detections. A file that cannot be
    read is listed in ``report.unreadable`` and the others are still compared."""
    unreadable: List[str] = []

    def images() -> Iterable[Tuple[str, np.ndarray]]:
        for path in paths[: 5 * check_num]:
            try:
                yield str(path), predictor.read_image(path)
            except Exception as e:  # a broken file is named, the check goes on with the others
                unreadable.append(f"{path} ({one_line(e)})")

    report = compare_with_pytorch(predictor.model, exported, images(), box_tol=box_tol, score_tol=score_tol,
                                  stop_after=check_num)
    report.unreadable = unreadable
    return report
