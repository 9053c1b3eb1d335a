"""Installs the detectron_res package: ``pip install -e .`` (add ``[dev]`` for the tests).

Dependencies are declared here once, with the oldest versions we rely on.

OpenCV: we depend on ``opencv-python-headless`` and NOT on ``opencv-python``.
albumentations (our augmentation library) itself requires the headless wheel;
installing ``opencv-python`` beside it would put two copies of the ``cv2`` module
in site-packages, and whichever was installed last silently wins. The toolkit
never opens a window (images and videos are written to files), so the headless
build is all we need. If your environment already has ``opencv-python``, uninstall
one of the two.
"""
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent

setup(
    name="detectron_res",
    version="0.1.0",
    description="Faster R-CNN on residual backbones, as in the ResNet paper (C4 detector, ImageNet import, COCO/VOC evaluation)",
    long_description=(here / "README.md").read_text() if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["detectron_res", "detectron_res.*"]),
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy>=1.24",
        "pycocotools>=2.0.7",
        "opencv-python-headless>=4.8",  # see the module docstring: not opencv-python
        "albumentations>=2.0",
        "omegaconf>=2.3",
        "PyYAML>=6.0",
        "tqdm>=4.65",
        "tensorboard>=2.14",
        "matplotlib>=3.7",
        "Pillow>=10.0",
    ],
    extras_require={
        "dev": ["pytest>=7.4", "pytest-timeout>=2.2", "hypothesis>=6.90", "onnx>=1.15", "onnxruntime>=1.17", "onnxscript>=0.1"],
        "export": ["onnx>=1.15", "onnxruntime>=1.17", "onnxscript>=0.1"],
    },
)
