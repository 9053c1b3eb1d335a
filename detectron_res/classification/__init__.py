"""ImageNet pretraining of the backbones and the CIFAR-10 plain-versus-residual experiments.

The detector starts from an ImageNet classifier (ResNet paper, Appendix A); this
subpackage trains that classifier (Sec 3.4) with the detection engine
(``detectron_res/engine``) and runs the CIFAR-10 study of Sec 4.2 (Table 6,
Figs. 6 and 7) with its diagnostics.

- ``config``       the classifier's typed config schema and loader
- ``datasets``     ImageNet folder layout, CIFAR-10 python pickles
- ``transforms``   scale / crop / flip / PCA-lighting augmentation, centre and 10-crop views
- ``loader``       seeded, sharded, resumable batches
- ``model``        ``ImageClassifier`` (normalization + backbone + loss), ``build_classifier``
- ``evaluation``   top-1 / top-5 error, single crop and 10-crop
- ``checkpoint``   checkpoints that are also ImageNet weights for ``train_net --weights``
- ``diagnostics``  stage gradient norms, layer response stds (Fig. 7), training error
- ``task``         ``ClassificationTask``, the classifier's pieces for the engine's run skeleton
                   (``detectron_res/engine/run.py``); ``train_classifier`` / ``evaluate_classifier_checkpoint``
                   (tools/train_classifier.py)
- ``plotting``     the figures of ``tools/plot_curves.py``
- ``synthetic``    small generated datasets in the real layouts
"""
from .config import ClassifierConfig, load_classifier_config
from .model import ImageClassifier, build_classifier
from .task import ClassificationTask, evaluate_classifier_checkpoint, train_classifier

__all__ = [
    "ClassifierConfig",
    "load_classifier_config",
    "ClassificationTask",
    "ImageClassifier",
    "build_classifier",
    "train_classifier",
    "evaluate_classifier_checkpoint",
]
