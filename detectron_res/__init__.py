"""detectron_res: Faster R-CNN on residual backbones, as in the ResNet paper.

The package's parts, each usable on its own:

- ``detectron_res.config``      typed config schema, YAML + ``_base_`` + overrides
- ``detectron_res.modeling``    ResNet / VGG-16 backbones and the C4 Faster R-CNN (``build_model``)
- ``detectron_res.weights``     ImageNet weight import (torchvision, MSRA/Detectron, Detectron2)
- ``detectron_res.data``        COCO / VOC / YOLO readers, validation, transforms, loaders, demo data
- ``detectron_res.evaluation``  COCO (pycocotools) and PASCAL VOC (devkit rules) evaluators
- ``detectron_res.engine``      trainer, hooks, checkpoints, distributed launch
- ``Predictor``                 detections from a trained model in a few lines
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Imported lazily so that ``import detectron_res`` stays cheap (no torch import).
    if name == "Predictor":
        from .predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'detectron_res' has no attribute {name!r}")
