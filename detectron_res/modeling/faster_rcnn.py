"""Faster R-CNN in the ResNet paper's "C4" form (Appendix A).

    images -> Preprocessor -> backbone (stem..res4, or VGG-16 conv1_1..conv5_3; stride 16)
           -> RegionProposalNetwork (anchors on the conv4 map)      -> proposals
           -> ROIHeads (RoI pool -> res5 + average pool, or fc6/fc7 -> cls / box)
           -> detections in original-image coordinates

Inputs: a loader ``Batch`` or a list of ``[3, H, W]`` images (+ targets); see
``preprocess.py``. Training returns ``{"loss_rpn_cls", "loss_rpn_loc", "loss_cls",
"loss_box_reg"}``; evaluation returns one dict per image with ``boxes`` ``[M, 4]``
float32 ``(x1, y1, x2, y2)`` in that image's original pixels, ``scores`` ``[M]`` and
``labels`` ``[M]`` int64 in 1..K. Evaluation runs under ``torch.inference_mode()``.

Test-time options (Appendix B, Table 9, and flip): with ``test_scales`` the Fast
R-CNN step pools each RoI from two levels of an image pyramid (the RPN runs on the
model input alone, as in the paper: "multi-scale testing only for the Fast R-CNN
step, not yet for the RPN step"); with ``test_hflip`` the mirrored image is
detected too and both sets of candidates are merged by NMS and box voting. Box
refinement and global context are ``ROIHeads`` options; all four compose.

Build one from a config with :func:`detectron_res.modeling.build.build_model`.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..precision import cast_for_autocast, precision_dtype
from ..weights import ImageNetWeights, LoadReport, load_into
from .backbone import fold_frozen_batchnorm
from .graph_capture import exporting_or_compiling
from .packed_conv import pack_conv_weights, packing_available
from .preprocess import PreparedInputs, Preprocessor
from .roi_heads import ROIHeads
from .rpn import RegionProposalNetwork
from .test_time import FeatureLevel, hflip_batch, hflip_boxes, level_scale_xy, pyramid_size, resize_batch

__all__ = ["FasterRCNN"]


class FasterRCNN(nn.Module):
    """The two-stage detector; parameters named ``backbone.*``, ``rpn.*``, ``roi_heads.*``."""

    def __init__(
        self,
        *,
        preprocessor: Preprocessor,
        backbone: nn.Module,
        backbone_feature: str,
        rpn: RegionProposalNetwork,
        roi_heads: ROIHeads,
        input_format: str,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        stride_in_1x1: Optional[bool] = None,
        fold_frozen_bn: bool = True,
        channels_last: bool = True,
        packed_conv_weights: bool = True,
        test_scales: Sequence[int] = (),
        test_hflip: bool = False,
        test_proposal_scale: int = 0,
    ):
        """
        Args:
            preprocessor: input resizing / normalization / padding and the way back.
            backbone: returns a dict of feature maps; ``backbone_feature`` is used.
            backbone_feature: ``"res4"`` (ResNet) or ``"conv5_3"`` (VGG-16), stride 16.
            rpn: the region proposal network.
            roi_heads: the per-region stage.
            input_format: channel order the model expects (``"BGR"`` or ``"RGB"``),
                checked against ImageNet weights when they are loaded.
            pixel_mean, pixel_std: the normalization, 0..255 scale, checked likewise.
            stride_in_1x1: ResNet bottleneck layout (None for VGG-16), checked likewise.
            fold_frozen_bn: whether :meth:`prepare_for_inference` folds FrozenBN
                into the convolutions (``model.fold_frozen_bn``).
            channels_last: whether :meth:`prepare_for_inference` stores the weights
                channels-last (``model.speed.channels_last``).
            packed_conv_weights: whether :meth:`prepare_for_inference` lets the
                convolutions keep oneDNN-packed weights for CPU inference
                (``model.speed.packed_conv_weights``, :mod:`.packed_conv`).
            test_scales: multi-scale testing: shorter sides of the image pyramid the
                Fast R-CNN step pools from (``test.scales``, Appendix B: 200..1000);
                empty = the single input scale.
            test_hflip: also detect on the mirrored image and merge (``test.hflip``).
            test_proposal_scale: with ``test_scales``, the pyramid level (one of them)
                whose features the RPN runs on (``test.proposal_scale``); 0 = the input
                (``input.min_size_test``). Lets the input be the largest level, so that
                every other level is a downsampling of it, while proposals come from
                another scale (the paper's 600).
        """
        super().__init__()
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"model.input_format must be BGR or RGB, got {input_format!r}")
        self.preprocessor = preprocessor
        self.backbone = backbone
        self.backbone_feature = backbone_feature
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.input_format = input_format
        self.pixel_mean = tuple(float(v) for v in pixel_mean)
        self.pixel_std = tuple(float(v) for v in pixel_std)
        self.stride_in_1x1 = stride_in_1x1
        self._fold_frozen_bn = bool(fold_frozen_bn)
        self._channels_last = bool(channels_last)
        self._packed_conv_weights = bool(packed_conv_weights)
        self._folded = False
        # The dtype prepare_for_inference(precision=) stored the weights in; None = as trained.
        self._weights_dtype: Optional[torch.dtype] = None
        scales = [int(s) for s in test_scales]
        if any(s < 1 for s in scales) or len(set(scales)) != len(scales):
            raise ValueError(f"test.scales must be distinct positive shorter sides (pixels), got {list(test_scales)}")
        self.test_scales = tuple(sorted(scales))  # increasing: adjacent levels are neighbours
        self.test_hflip = bool(test_hflip)
        if test_proposal_scale and test_proposal_scale not in self.test_scales:
            raise ValueError(
                f"test.proposal_scale={test_proposal_scale} must be 0 (the input scale) or one of "
                f"test.scales={list(self.test_scales)}"
            )
        self.test_proposal_scale = int(test_proposal_scale)

    @property
    def test_time_options(self) -> Tuple[str, ...]:
        """Config keys of the test-time options that are on (tracing cannot follow them)."""
        on = [
            ("model.roi_heads.box_refinement", self.roi_heads.box_refinement),
            ("test.scales", bool(self.test_scales)),
            ("test.hflip", self.test_hflip),
        ]
        return tuple(key for key, value in on if value)

    @property
    def device(self) -> torch.device:
        return self.preprocessor.pixel_mean.device

    # ---------------------------------------------------------------- forward
    def forward(self, inputs: Any, targets: Optional[Sequence[Dict[str, Tensor]]] = None):
        """
        Args:
            inputs: a loader ``Batch`` (its own targets are used in training), or a
                list of ``[3, H, W]`` images in 0..255 in ``input_format`` order.
            targets: with a list of images, in training: one dict per image with
                ``boxes`` ``[G, 4]`` float32 ``(x1, y1, x2, y2)`` in that image's
                pixels and ``labels`` ``[G]`` int64 in 1..K (``G`` may be 0).
        Returns:
            training: dict of the four scalar losses; evaluation: one dict per image
            with ``boxes``, ``scores``, ``labels`` (see module doc).
        """
        if self.training:
            return self._forward(inputs, targets)
        # Evaluation needs no autograd bookkeeping at all. Weights stored in bf16
        # (prepare_for_inference) need autocast to meet the float32 images.
        with torch.inference_mode(not exporting_or_compiling()), self._weights_autocast():
            return self._forward(inputs, targets)

    def _weights_autocast(self):
        """Autocast to the stored weights' dtype, or nothing for float32 weights."""
        if self._weights_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._weights_dtype)

    def _forward(self, inputs: Any, targets: Optional[Sequence[Dict[str, Tensor]]]):
        prepared = self.preprocessor(inputs, targets)
        if not self.training and (self.test_scales or self.test_hflip):
            return self._forward_augmented(prepared)
        image_sizes = prepared.images.image_sizes
        features = self.backbone(prepared.images.tensor)[self.backbone_feature]  # [N, C, H/16, W/16]
        proposals, rpn_losses = self.rpn(features, image_sizes, prepared.gt_boxes, prepared.image_scales)
        detections, head_losses = self.roi_heads(
            features, proposals, image_sizes, prepared.gt_boxes, prepared.gt_labels
        )
        if self.training:
            return {**rpn_losses, **head_losses}
        return self.preprocessor.postprocess(detections, image_sizes, prepared.orig_sizes)

    def _forward_augmented(self, prepared: PreparedInputs) -> List[Dict[str, Tensor]]:
        """Evaluation with an image pyramid and/or the mirrored image.

        Each view (the input, and its mirror with ``test_hflip``) runs the RPN on its
        own input-scale features, then the Fast R-CNN step on the pyramid's levels
        (or the input alone); the mirror's candidates are mirrored back and the union
        goes through one threshold / NMS / box voting (``ROIHeads.select``).
        """
        images = prepared.images.tensor
        image_sizes = prepared.images.image_sizes
        num_images = len(image_sizes)
        views = [False, True] if self.test_hflip else [False]
        all_scores, all_boxes, all_image = [], [], []
        for flipped in views:
            view = hflip_batch(images, image_sizes) if flipped else images
            features = self.backbone(view)[self.backbone_feature]  # [N, C, H/16, W/16]
            levels = self._pyramid(view, features, image_sizes, prepared.orig_sizes)
            proposals = self._proposals(features, levels, image_sizes, prepared.image_scales)
            scores, boxes, roi_image = self.roi_heads.candidates(levels, proposals, image_sizes)
            if flipped:
                widths = torch.tensor([float(w) for _, w in image_sizes], device=boxes.device)
                boxes = hflip_boxes(boxes, widths[roi_image][:, None])  # [R, K, 4] back to the input
            all_scores.append(scores)
            all_boxes.append(boxes)
            all_image.append(roi_image)
        # A union of predictions (mirror, refinement) is merged by NMS and box voting.
        vote = self.test_hflip or self.roi_heads.box_refinement
        detections = self.roi_heads.select(
            torch.cat(all_scores), torch.cat(all_boxes), torch.cat(all_image), num_images, vote=vote
        )
        return self.preprocessor.postprocess(detections, image_sizes, prepared.orig_sizes)

    def _proposals(
        self,
        features: Tensor,
        levels: Tensor | List[FeatureLevel],
        image_sizes: Sequence[Tuple[int, int]],
        image_scales: Sequence[float],
    ) -> List[Tensor]:
        """RPN proposals in input pixels: from the input's features, or from the level
        of ``test_proposal_scale``, mapped back to the input."""
        if not self.test_proposal_scale:
            return self.rpn(features, image_sizes, None, image_scales)[0]
        level = levels[self.test_scales.index(self.test_proposal_scale)]
        sxy = level.scale_xy  # [N, 2] level pixels per input pixel
        sizes = [(int(round(h * sy)), int(round(w * sx))) for (h, w), (sx, sy) in zip(image_sizes, sxy.tolist())]
        # the RPN's minimum box side is in original pixels times the level's resize factor
        scales = [s * float(v) for s, v in zip(image_scales, sxy.prod(dim=1).sqrt().tolist())]
        proposals, _ = self.rpn(level.features, sizes, None, scales)
        return [p / sxy[i].repeat(2) for i, p in enumerate(proposals)]  # level -> input pixels

    def _pyramid(
        self,
        images: Tensor,
        features: Tensor,
        image_sizes: Sequence[Tuple[int, int]],
        orig_sizes: Sequence[Tuple[int, int]],
    ) -> Tensor | List[FeatureLevel]:
        """The levels the Fast R-CNN step pools from: the input's features alone, or
        one level per ``test_scales`` entry, each resampled from the input (a level of
        the input's own size reuses its features)."""
        if not self.test_scales:
            return features
        pre = self.preprocessor
        levels = []
        for scale in self.test_scales:
            sizes = [pyramid_size(o, scale, pre.min_size[False], pre.max_size[False]) for o in orig_sizes]
            if list(sizes) == list(image_sizes):
                level_features = features
            else:
                resized = resize_batch(images, image_sizes, sizes, pre.size_divisibility)
                level_features = self.backbone(resized)[self.backbone_feature]
            levels.append(FeatureLevel(level_features, level_scale_xy(image_sizes, sizes, features.device)))
        return levels

    # -------------------------------------------------------------- inference
    def train(self, mode: bool = True) -> "FasterRCNN":
        if mode and self._weights_dtype is not None:
            raise RuntimeError(
                f"this FasterRCNN stores {self._weights_dtype} weights (prepare_for_inference(precision=...)) and "
                "cannot be trained again; build a new model (build_model(cfg)) and load the checkpoint into it"
            )
        if mode and self._folded:
            raise RuntimeError(
                "this FasterRCNN had FrozenBN folded into its convolutions by prepare_for_inference() and cannot be "
                "trained again; build a new model (build_model(cfg)) and load the checkpoint into it"
            )
        return super().train(mode)

    def prepare_for_inference(self, precision: str = "fp32") -> "FasterRCNN":
        """Switch to evaluation for good: ``eval()`` and, if ``model.fold_frozen_bn``,
        fold every FrozenBN into its convolution (outputs equal within float rounding,
        one elementwise pass per conv saved); if ``model.speed.channels_last``, store
        the 4-D weights channels-last (NHWC), the layout oneDNN (CPU) and cuDNN's
        tensor-core kernels compute in, so that activations stay NHWC from the first
        convolution on instead of being converted at every layer.

        If ``model.speed.packed_conv_weights``, every convolution without a norm left
        after it then runs CPU inference with oneDNN-packed weights, converted once
        per input shape instead of on every call (:mod:`.packed_conv`; the dense path
        runs on CUDA, with autograd, and while exporting).

        ``precision="bf16"`` also stores the convolution and linear weights in bf16
        once (:func:`detectron_res.precision.cast_for_autocast`), after folding: bf16
        autocast would otherwise convert every fp32 weight on every call (R-50-C4:
        ~100 MB read and 50 MB written per image, ~9% of a bf16 call at the quick
        benchmark scale). The model then runs its network under bf16 autocast
        whatever the caller's context (see :meth:`forward`); the results are those
        of the fp32 model under bf16 autocast exactly, since autocast rounds the
        same weights to bf16 the same way. Post-processing stays float32.

        Folding changes the weights in place (``W * scale``, ``b * scale + shift``),
        so a folded model must not be trained again (``train()`` then raises) nor
        saved as a training checkpoint. Use it in inference tools, not in the
        evaluation hook of a training run. Calling it twice folds once; a model
        prepared for bf16 cannot be prepared for fp32 again (its weights were rounded).

        Args:
            precision: ``"fp32"`` or ``"bf16"``, a resolved precision
                (:func:`detectron_res.precision.resolve_precision`).
        """
        dtype = precision_dtype(precision)
        if self._weights_dtype is not None and dtype != self._weights_dtype:
            raise ValueError(
                f"prepare_for_inference(precision={precision!r}): this FasterRCNN already stores "
                f"{self._weights_dtype} weights; build a new model (build_model(cfg)) and load the checkpoint into it"
            )
        self.eval()
        if self._fold_frozen_bn and not self._folded:
            fold_frozen_batchnorm(self)
            self._folded = True
        if self._channels_last:
            self.to(memory_format=torch.channels_last)
        if dtype is not None and self._weights_dtype is None:
            cast_for_autocast(self, dtype)
            self._weights_dtype = dtype
        if self._packed_conv_weights and packing_available():
            pack_conv_weights(self)
        return self

    # ---------------------------------------------------------------- weights
    def load_imagenet_backbone(self, weights: ImageNetWeights) -> LoadReport:
        """Initialize the trunk and the per-region head from an ImageNet classifier.

        ResNet: ``stem, res2..res4 -> backbone.*`` and ``res5 -> roi_heads.res5.*``
        (Appendix A: conv5_x runs per region). VGG-16: ``conv*_* -> backbone.*`` and
        ``fc6, fc7 -> roi_heads.box_head.*``. The classifier (``fc`` / ``fc8``) is
        not used. RPN and predictor keep their initialization.

        Args:
            weights: a ``detectron_res.weights.ImageNetWeights``.
        Returns:
            the ``LoadReport`` of ``detectron_res.weights.load_into``.
        Raises:
            detectron_res.weights.WeightsMismatchError (a ValueError): if the
                weights were made for another bottleneck layout, channel order or
                normalization than the config builds; the message names the config
                keys to change.
        """
        # Weights trained with another bottleneck layout, channel order or
        # normalization would load without error and compute something else.
        weights.check_input_settings(
            input_format=self.input_format,
            pixel_mean=self.pixel_mean,
            pixel_std=self.pixel_std,
            stride_in_1x1=self.stride_in_1x1,
        )
        if hasattr(self.roi_heads, "res5"):
            prefix_map = {f"{s}.": f"backbone.{s}." for s in ("stem", "res2", "res3", "res4")}
            prefix_map["res5."] = "roi_heads.res5."
        else:
            convs = [n for n, m in self.backbone.named_children() if isinstance(m, nn.Conv2d)]
            prefix_map = {f"{n}.": f"backbone.{n}." for n in convs}
            prefix_map.update({"fc6.": "roi_heads.box_head.fc6.", "fc7.": "roi_heads.box_head.fc7."})
        return load_into(self, weights, prefix_map=prefix_map)
