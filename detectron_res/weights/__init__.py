"""ImageNet weights for the backbones: import, conversion and loading.

The package, by topic (import every public name from here):

* ``keys``: the key tables of each format, the architecture read from the keys;
* ``safe_load``: reading files without running their code, refusing non-finite weights;
* ``download``: ``torchvision://`` / ``msra://`` names, their URLs and the hub cache;
* ``imagenet``: :func:`load_imagenet_weights` and :class:`ImageNetWeights`;
* ``loading``: :func:`load_into`, copying them into a model;
* ``detectron2``: whole Detectron2 C4 detector checkpoints;
* ``errors``: the exceptions.

The detector is initialized from an ImageNet classifier (ResNet paper, Appendix A).
Three families of files are read, each through an explicit key table (never by
matching names heuristically):

======================  ==========================================  ==========================
format (``fmt``)        file                                        example key
======================  ==========================================  ==========================
``"torchvision"``       ``resnet18..152-*.pth``, ``vgg16-*.pth``    ``layer1.0.bn1.weight``
``"msra"``              Detectron's ``R-50.pkl``, ``R-101.pkl``     ``res2_0_branch2a_bn_s``
                        (Caffe2 blob names, MSRA Caffe models)
``"detectron2"``        Detectron2 ``.pkl`` (``{"model": ...}``)      ``res2.0.conv1.norm.weight``
``"detectron_res"``     this toolkit's converted ``.pth``           (canonical names)
======================  ==========================================  ==========================

When no ``arch`` is given, :func:`infer_arch` reads it from the keys (ResNet depth
from the number of blocks per stage, Table 1; VGG-16 from its layers).

Detectron2 DETECTOR checkpoints of the C4 family (``model_final_*.pkl`` / ``.pth``
of ``faster_rcnn_R_50_C4_1x`` and the like) convert whole through
:func:`convert_detectron2_detector`: backbone, RPN and res5 head, with the class
layout changed from Detectron2's (background LAST) to this toolkit's (background
FIRST).

The canonical key space is the ``state_dict`` of ``ResNet(depth, num_classes=1000)``
/ ``VGG16(num_classes=1000)`` (``stem.conv1.weight``,
``res2.0.conv1.norm.running_mean``, ``fc.weight``; ``conv1_1.weight``, ``fc6.weight``).

Weights are only meaningful with the input preprocessing and layout they were
trained with, so those travel with them (:class:`ImageNetWeights`):

* torchvision: RGB, mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375),
  stride on the bottleneck's 3x3 (``stride_in_1x1=False``).
* MSRA Caffe models: BGR, mean (103.53, 116.28, 123.675), std 1,
  ``stride_in_1x1=True`` (PAPER_FACTS, Table 1 notes).

:func:`load_into` refuses a model whose bottleneck stride placement differs, and
:meth:`ImageNetWeights.check_input_settings` refuses a config whose channel order
or normalization differs.

Safety: ``.pth`` files are read with ``torch.load(..., weights_only=True)``;
``.pkl`` files with :class:`RestrictedUnpickler`, which only rebuilds numpy arrays
and plain containers. A file that would run code when loaded raises
:class:`UnsafeWeightsError`.

Names ``torchvision://resnet50`` and ``msra://R-101`` are downloaded once into the
torch hub cache (``$TORCH_HOME/hub/checkpoints``); offline, the error names the
URL to fetch by hand and the path to save it at.
"""
from __future__ import annotations

from ..engine.checkpoint import LoadReport
from .detectron2 import convert_detectron2_detector, detectron2_detector_checkpoint
from .download import MSRA_URLS, TORCHVISION_URLS, resolve_weights_uri
from .errors import (
    NotADetectorError,
    UnsafeWeightsError,
    WeightsDownloadError,
    WeightsFormatError,
    WeightsMismatchError,
)
# The header of the files ImageNetWeights.save writes; the classifier's checkpoints
# read the same header (classification/checkpoint.py).
from .imagenet import _SAVED_FORMAT_TAG, _SAVED_FORMAT_VERSION, ImageNetWeights, load_imagenet_weights  # noqa: F401
from .keys import (
    ARCHS,
    DETECTRON2_DETECTOR_PREFIXES,
    FORMATS,
    infer_arch,
    is_detectron2_detector,
    key_table,
    torchvision_resnet_key,
)
from .loading import load_into
from .safe_load import RestrictedUnpickler, refuse_non_finite, refused_pickle_reason, torch_error_line

__all__ = [
    "ImageNetWeights",
    "LoadReport",
    "load_imagenet_weights",
    "load_into",
    "key_table",
    "torchvision_resnet_key",
    "resolve_weights_uri",
    "infer_arch",
    "is_detectron2_detector",
    "convert_detectron2_detector",
    "DETECTRON2_DETECTOR_PREFIXES",
    "detectron2_detector_checkpoint",
    "NotADetectorError",
    "UnsafeWeightsError",
    "WeightsFormatError",
    "WeightsDownloadError",
    "WeightsMismatchError",
    "RestrictedUnpickler",
    "refuse_non_finite",
    "refused_pickle_reason",
    "torch_error_line",
    "ARCHS",
    "FORMATS",
    "TORCHVISION_URLS",
    "MSRA_URLS",
]
