"""Untrusted files (issue 10): no weight or checkpoint file runs code when loaded, and
no output path derived from an input name leaves its output folder.

Malicious files. Every entry point that reads weights or checkpoints gets a file in
the format it accepts, with a realistic layout (a torchvision state dict, Caffe2
blobs, a training checkpoint, ...) and one leaf replaced by an object whose
unpickling calls ``os.system("touch MARKER")``. Each entry point must refuse it
with a one-line error naming the file, and the marker must not exist afterwards.
``test_payloads_are_live`` proves the payloads do run code when loaded unsafely,
so an absent marker means something.

Entry points (``grep -rn "torch.load\\|pickle.load\\|Unpickler\\|np.load"``):

* ``detectron_res.weights.load_imagenet_weights`` (``--weights``, ``model.weights``,
  ``tools/convert_weights.py``, classifier ``--weights``): torch zip ``.pth``/``.pt``,
  legacy (pre-1.6, non-zip) torch files, Caffe2/MSRA ``.pkl`` (Python 2 protocol),
  Detectron2 ``.pkl``, this toolkit's converted ``.pth``, files with other
  extensions, and the ``torchvision://`` / ``msra://`` hub-cache files;
* ``detectron_res.engine.checkpoint.load_checkpoint`` (``train_net --resume``,
  ``--eval-only``, ``--weights`` with a detector checkpoint, ``model_best.pth`` on
  resume, ``Predictor``, ``tools/infer.py``, ``tools/export.py``);
* ``detectron_res.classification.checkpoint.load_classifier_checkpoint``
  (``train_classifier --resume`` / ``--eval-only`` / ``--weights``);
* the CIFAR-10 python pickles (``data_batch_*``, ``batches.meta``).

No ``np.load(allow_pickle=True)``, ``yaml.load``/``yaml.unsafe_load``, ``eval`` or
``exec`` is applied to input anywhere in the package or tools (checked below by
scanning the sources); configs and YOLO ``data.yaml`` refuse ``!!python`` tags. ONNX
files are protobuf (no code); ``torch.jit.load`` only reads the file
``tools/export.py`` has just written.

Output paths. ``tools/infer.py`` names its outputs after the inputs' file names only
(never their folders), sanitized, unique case-insensitively, never an input's name or
the summary's, and replaces (never follows) a link planted where it writes; the
evaluation writes ``inference/<dataset>/`` and ``comp4_det_<split>_<class>.txt`` with
names percent-encoded into one path component (``../x`` -> ``..%2Fx``);
``tools/export.py`` writes next to the checkpoint.
"""
from __future__ import annotations

import ast
import json
import logging
import os
import pickle
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from detectron_res.classification.checkpoint import (
    initialize_classifier,
    is_classifier_checkpoint,
    load_classifier_checkpoint,
)
from detectron_res.classification.datasets import read_cifar10_batch
from detectron_res.engine.checkpoint import CheckpointError, Checkpointer, is_detector_checkpoint, load_checkpoint
from detectron_res.engine.hooks import BestCheckpointer
from detectron_res.weights import RestrictedUnpickler, UnsafeWeightsError, load_imagenet_weights
from helpers import load_tool as _load_tool
from helpers import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- payloads
class RunsCode:
    """Unpickling this object runs ``touch MARKER`` (``__reduce__`` -> ``os.system``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _torch_zip(obj, path):
    torch.save(obj, path)


def _torch_legacy(obj, path):
    # The pre-1.6 format: a bare pickle stream, no zip container.
    torch.save(obj, path, _use_new_zipfile_serialization=False)


def _pickle2(obj, path):
    # Detectron's Caffe2 blobs were written by Python 2 with protocol 2.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _pickle_latest(obj, path):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)


WRITERS = {"torch_zip": _torch_zip, "torch_legacy": _torch_legacy, "pickle2": _pickle2,
           "pickle_latest": _pickle_latest}


def _layout(kind: str, payload) -> dict:
    """A file of ``kind`` as the toolkit expects it, with ``payload`` at one leaf."""
    w = torch.zeros(2, 3, 1, 1)
    if kind == "torchvision":
        return {"conv1.weight": w, "bn1.weight": torch.ones(2), "fc.bias": payload}
    if kind == "msra":
        return {"blobs": {"conv1_w": np.zeros((2, 3, 1, 1), np.float32), "res_conv1_bn_s": payload}}
    if kind == "msra_bare":
        return {"conv1_w": np.zeros((2, 3, 1, 1), np.float32), "res_conv1_bn_s": payload}
    if kind == "detectron2":
        return {"model": {"stem.conv1.weight": np.zeros((2, 3, 1, 1), np.float32), "res2.0.conv1.weight": payload},
                "__author__": "torchvision", "matching_heuristics": True}
    if kind == "detectron_res":
        return {"format": "detectron_res.imagenet_weights", "version": 1, "arch": "resnet18", "input_format": "RGB",
                "pixel_mean": [0.0] * 3, "pixel_std": [1.0] * 3, "stride_in_1x1": False,
                "stem_pool": "torchvision", "state_dict": {"stem.conv1.weight": w, "fc.weight": payload}}
    if kind == "checkpoint":
        return {"format_version": 1, "model": {"backbone.stem.conv1.weight": w, "roi_heads.x": payload},
                "iteration": 3, "class_names": ["circle", "square", "triangle", "star"]}
    if kind == "classifier":
        return {"format": "detectron_res.imagenet_weights", "version": 1, "arch": "cifar_resnet8",
                "classifier": {"num_classes": 10}, "format_version": 1, "iteration": 3,
                "state_dict": {"stem.conv1.weight": w, "fc.weight": payload}}
    if kind == "cifar":
        return {b"data": payload, b"labels": [0, 1], b"batch_label": b"training batch 1 of 5"}
    raise AssertionError(kind)


def plant(path: Path, kind: str, writer: str, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    WRITERS[writer](_layout(kind, RunsCode(marker)), path)
    return path


def _one_line(text: str) -> str:
    assert "\n" not in text.strip(), f"error message spans several lines:\n{text}"
    return text.strip()


def assert_refused(message: str, path: Path, marker: Path, *, unreadable: bool = False) -> None:
    """One line that names the file and says it was refused; the payload did not run.

    ``unreadable``: the loader stopped before reaching any global (torch's weights-only
    unpickler does not know the FRAME opcode of pickle protocol 4+), so the file is
    reported as unreadable rather than unsafe; the payload must not have run either way.
    """
    line = _one_line(message)
    assert str(path) in line or path.name in line, line
    assert not marker.exists(), "the payload ran"
    if unreadable:
        assert "cannot read" in line and "Unsupported operand" in line, line
        return
    assert re.search(r"refus|unsafe", line, re.IGNORECASE), line
    # The refused global is named (os.system / posix.system, or an earlier one the
    # loader met first, such as torch.storage._load_from_bytes in a bare pickle).
    assert re.search(r"global '[\w.]+'", line), f"the refused global is not named: {line}"
    assert not marker.exists(), "the payload ran"


# ----------------------------------------------------------------------------- payloads are live
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_payloads_are_live(tmp_path, writer):
    """Control: loaded without protection, every planted file runs its code."""
    marker = tmp_path / "marker"
    path = plant(tmp_path / "evil.bin", "torchvision", writer, marker)
    if writer.startswith("torch"):
        torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as f:
            pickle.load(f)
    assert marker.exists()


# ----------------------------------------------------------------------------- library entry points
# (entry point, file name, layout, writer): one row per accepted format.
WEIGHT_FILES = [
    ("torchvision.pth", "torchvision", "torch_zip"),
    ("torchvision.pt", "torchvision", "torch_zip"),
    ("torchvision_legacy.pth", "torchvision", "torch_legacy"),
    ("R-50.pkl", "msra", "pickle2"),
    ("R-50_bare.pkl", "msra_bare", "pickle2"),
    ("R-50_py3.pkl", "msra", "pickle_latest"),
    ("detectron2.pkl", "detectron2", "pickle2"),
    ("converted.pth", "detectron_res", "torch_zip"),
    ("weights.bin", "torchvision", "torch_zip"),  # any other name: zip -> torch.load
    ("weights.ckpt", "msra", "pickle2"),  # any other name, not a zip -> restricted unpickler
    ("pickle_named.pth", "torchvision", "pickle2"),  # a bare pickle under a torch name
]


@pytest.mark.parametrize("name,kind,writer", WEIGHT_FILES, ids=[w[0] for w in WEIGHT_FILES])
@pytest.mark.parametrize("fmt", [None, "given"])
def test_imagenet_weights_refuse_code(tmp_path, name, kind, writer, fmt):
    marker = tmp_path / "marker"
    path = plant(tmp_path / name, kind, writer, marker)
    fmt_arg = None if fmt is None else {"torchvision": "torchvision", "msra": "msra", "msra_bare": "msra",
                                        "detectron2": "detectron2", "detectron_res": "detectron_res"}[kind]
    with pytest.raises(UnsafeWeightsError) as e:
        load_imagenet_weights(path, arch="resnet18" if kind != "msra" else "resnet50", fmt=fmt_arg)
    assert_refused(str(e.value), path, marker)


@pytest.mark.parametrize("uri,cached", [("torchvision://resnet18", "resnet18-f37072fd.pth"),
                                        ("msra://R-50", "MSRA/R-50.pkl")])
def test_hub_cache_files_are_loaded_safely(tmp_path, monkeypatch, uri, cached):
    """A poisoned file in the torch hub cache (where named weights are downloaded to)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    marker = tmp_path / "marker"
    path = tmp_path / "torch_home" / "hub" / "checkpoints" / cached
    plant(path, "torchvision" if uri.startswith("torchvision") else "msra",
          "torch_zip" if uri.startswith("torchvision") else "pickle2", marker)
    with pytest.raises(UnsafeWeightsError) as e:
        load_imagenet_weights(uri)
    assert_refused(str(e.value), path, marker)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the protocol-5 file
@pytest.mark.parametrize("writer", ["torch_zip", "torch_legacy", "pickle2", "pickle_latest"])
def test_training_checkpoints_refuse_code(tmp_path, writer):
    marker = tmp_path / "marker"
    path = plant(tmp_path / "run" / "model_0000003.pth", "checkpoint", writer, marker)
    unreadable = writer == "pickle_latest"
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert_refused(str(e.value), path, marker, unreadable=unreadable)
    # Through the run folder's last_checkpoint pointer, as --resume and Predictor(run_dir) read it.
    (path.parent / "last_checkpoint").write_text(path.name)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path.parent)
    assert_refused(str(e.value), path, marker, unreadable=unreadable)
    assert not is_detector_checkpoint(path)
    assert not marker.exists()


def test_weights_only_cannot_be_switched_off_by_the_environment(tmp_path, monkeypatch):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD only changes calls that do not pass weights_only."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "marker"
    ckpt = plant(tmp_path / "model_final.pth", "checkpoint", "torch_zip", marker)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ckpt)
    assert_refused(str(e.value), ckpt, marker)
    weights = plant(tmp_path / "r18.pth", "torchvision", "torch_zip", marker)
    with pytest.raises(UnsafeWeightsError) as e:
        load_imagenet_weights(weights, arch="resnet18")
    assert_refused(str(e.value), weights, marker)


def test_best_checkpoint_is_not_trusted_on_resume(tmp_path, caplog):
    """BestCheckpointer re-reads model_best.pth when a run resumes: refused, logged, skipped."""
    marker = tmp_path / "marker"
    plant(tmp_path / "model_best.pth", "checkpoint", "torch_zip", marker)
    hook = BestCheckpointer(Checkpointer(tmp_path), metric="voc/mAP50", mode="max")
    hook.trainer = SimpleNamespace(start_iter=10)
    with caplog.at_level(logging.WARNING, logger="detectron_res"):
        hook.before_train()
    assert hook.best_value is None
    assert "model_best.pth: refusing to load checkpoint" in caplog.text and not marker.exists()


@pytest.mark.parametrize("writer", ["torch_zip", "torch_legacy"])
def test_classifier_checkpoints_refuse_code(tmp_path, writer):
    marker = tmp_path / "marker"
    path = plant(tmp_path / "model_final.pth", "classifier", writer, marker)
    with pytest.raises(CheckpointError) as e:
        load_classifier_checkpoint(path)
    assert_refused(str(e.value), path, marker)
    assert not is_classifier_checkpoint(path)
    # --weights of train_classifier: not a classifier checkpoint, so read as ImageNet weights.
    model = SimpleNamespace(arch="resnet18")
    with pytest.raises(UnsafeWeightsError) as e:
        initialize_classifier(model, str(path), cfg=None)
    assert_refused(str(e.value), path, marker)


@pytest.mark.parametrize("member", ["data_batch_1", "test_batch"])
def test_cifar_pickles_refuse_code(tmp_path, member):
    marker = tmp_path / "marker"
    path = plant(tmp_path / "cifar-10-batches-py" / member, "cifar", "pickle2", marker)
    with pytest.raises(UnsafeWeightsError) as e:
        read_cifar10_batch(path)
    assert_refused(str(e.value), path, marker)


# Globals an attacker may name in a hand-written pickle: each must be refused by the
# restricted unpickler before it is called (numpy.load and numpy's runstring are
# known gadgets reachable through "numpy only" allow-lists).
GADGETS = [
    ("os", "system"), ("posix", "system"), ("builtins", "eval"), ("builtins", "exec"), ("builtins", "getattr"),
    ("builtins", "__import__"), ("subprocess", "Popen"), ("numpy", "load"), ("numpy.lib.npyio", "load"),
    ("numpy.testing._private.utils", "runstring"), ("torch", "load"), ("pickle", "loads"),
    ("numpy.core.multiarray", "c_einsum"), ("collections", "defaultdict"),
]


@pytest.mark.parametrize("module,name", GADGETS, ids=[f"{m}.{n}" for m, n in GADGETS])
def test_restricted_unpickler_refuses_gadgets(tmp_path, module, name):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pkl"
    # GLOBAL module.name, push one string argument, call it (REDUCE): protocol 0 by hand.
    path.write_bytes(f"c{module}\n{name}\n(S'touch {marker}'\ntR.".encode())
    with pytest.raises(UnsafeWeightsError) as e:
        with open(path, "rb") as f:
            RestrictedUnpickler(f, source=str(path)).load()
    assert f"'{module}.{name}'" in _one_line(str(e.value)) and not marker.exists()


# ----------------------------------------------------------------------------- command-line entry points
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from detectron_res.data.shapes import generate_shapes_dataset

    root = tmp_path_factory.mktemp("datasets")
    generate_shapes_dataset(str(root / "shapes"), num_train=4, num_val=2, image_size=(64, 96), seed=3)
    return root


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    from detectron_res.classification.synthetic import make_synthetic_cifar10

    return make_synthetic_cifar10(tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py", num_train=20,
                                  num_test=10, seed=1)


TINY_DETECTOR = ["model.backbone.depth=18", "model.backbone.base_channels=8", "input.min_size_train=[64]",
                 "input.max_size_train=96", "input.min_size_test=64", "input.max_size_test=96",
                 "data.num_workers=0", "data.train=[shapes_train]", "data.test=[shapes_val]", "test.best_metric="]
TINY_CLASSIFIER = ["model.depth=8", "solver.ims_per_batch=4", "solver.max_iter=2", "solver.steps=[]", "solver.checkpoint_period=0",
                   "test.eval_period=0", "test.images_per_batch=10", "data.num_workers=0"]


def _cli(tool: str, argv, capsys) -> tuple[int, str]:
    code = _load_tool(tool).main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert lines, f"no error line in stderr:\n{err}"
    return code, lines[-1]


@pytest.mark.parametrize("kind,writer", [("checkpoint", "torch_zip"), ("checkpoint", "torch_legacy"),
                                         ("torchvision", "torch_zip"), ("msra", "pickle2")])
def test_train_net_weights(tmp_path, data_root, monkeypatch, capsys, kind, writer):
    monkeypatch.setenv("DETECTRON_RES_DATASETS", str(data_root))
    marker = tmp_path / "marker"
    path = plant(tmp_path / ("evil.pkl" if writer.startswith("pickle") else "evil.pth"), kind, writer, marker)
    code, line = _cli("train_net", ["--config", "demo_shapes.yaml", "--output-dir", tmp_path / "out", "--device",
                                    "cpu", "--weights", path, *TINY_DETECTOR], capsys)
    assert code == 2
    assert_refused(line, path, marker)


def test_train_net_resume_and_eval_only(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.setenv("DETECTRON_RES_DATASETS", str(data_root))
    marker = tmp_path / "marker"
    out = tmp_path / "out"
    ckpt = plant(out / "model_0000009.pth", "checkpoint", "torch_zip", marker)
    (out / "last_checkpoint").write_text(ckpt.name)
    common = ["--config", "demo_shapes.yaml", "--output-dir", out, "--device", "cpu", *TINY_DETECTOR]
    code, line = _cli("train_net", [*common, "--resume"], capsys)
    assert code == 2
    assert_refused(line, ckpt, marker)
    # --eval-only without --weights evaluates the run's last checkpoint.
    code, line = _cli("train_net", [*common, "--eval-only"], capsys)
    assert code == 2
    assert_refused(line, ckpt, marker)
    # --eval-only --weights FILE: that file is refused; no other checkpoint (the run's
    # last one above) is evaluated in its place.
    other = plant(tmp_path / "elsewhere" / "model_final.pth", "checkpoint", "torch_legacy", marker)
    code, line = _cli("train_net", [*common, "--eval-only", "--weights", other], capsys)
    assert code == 2
    assert_refused(line, other, marker)


def test_train_classifier_weights_resume_eval_only(tmp_path, cifar_root, capsys):
    marker = tmp_path / "marker"
    out = tmp_path / "out"
    common = ["--config", "cifar10_resnet20.yaml", "--output-dir", out, "--device", "cpu",
              f"data.root={cifar_root}", *TINY_CLASSIFIER]
    for kind in ("classifier", "torchvision"):
        path = plant(tmp_path / f"{kind}.pth", kind, "torch_zip", marker)
        code, line = _cli("train_classifier", [*common, "--weights", path], capsys)
        assert code == 2
        assert_refused(line, path, marker)
        code, line = _cli("train_classifier", [*common, "--eval-only", "--weights", path], capsys)
        assert code == 2
        assert_refused(line, path, marker)
    ckpt = plant(out / "model_0000001.pth", "classifier", "torch_legacy", marker)
    (out / "last_checkpoint").write_text(ckpt.name)
    code, line = _cli("train_classifier", [*common, "--resume"], capsys)
    assert code == 2
    assert_refused(line, ckpt, marker)


@pytest.mark.parametrize("tool", ["infer", "export"])
@pytest.mark.parametrize("how", ["file", "run_folder", "latest_run"])
def test_inference_tools_refuse_code(tmp_path, monkeypatch, capsys, tool, how):
    marker = tmp_path / "marker"
    run = tmp_path / "output" / "some_run"
    ckpt = plant(run / "model_final.pth", "checkpoint", "torch_zip", marker)
    (run / "last_checkpoint").write_text(ckpt.name)
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.full((32, 48, 3), 120, np.uint8))
    monkeypatch.chdir(tmp_path)  # "latest_run": found as ./output/*/last_checkpoint
    monkeypatch.delenv("DETECTRON_RES_OUTPUT", raising=False)
    weights = {"file": ["--weights", ckpt], "run_folder": ["--weights", run], "latest_run": []}[how]
    argv = [image, *weights, "--output", tmp_path / "infer_out"] if tool == "infer" else [*weights, "--no-check"]
    code, line = _cli(tool, argv, capsys)
    assert code == 2
    assert_refused(line, ckpt, marker)
    assert not list(tmp_path.glob("**/*.onnx")) and not (tmp_path / "infer_out").exists()


def test_predictor_refuses_code(tmp_path):
    from detectron_res.predictor import Predictor

    marker = tmp_path / "marker"
    ckpt = plant(tmp_path / "model_final.pth", "checkpoint", "torch_legacy", marker)
    with pytest.raises(CheckpointError) as e:
        Predictor(ckpt, device="cpu")
    assert_refused(str(e.value), ckpt, marker)


@pytest.mark.parametrize("fmt,kind,writer,name", [("torchvision", "torchvision", "torch_zip", "r18.pth"),
                                                  ("torchvision", "torchvision", "torch_legacy", "r18_old.pth"),
                                                  ("msra", "msra", "pickle2", "R-50.pkl"),
                                                  ("detectron2", "detectron2", "pickle_latest", "d2.pkl")])
def test_convert_weights_refuses_code(tmp_path, capsys, fmt, kind, writer, name):
    marker = tmp_path / "marker"
    src = plant(tmp_path / name, kind, writer, marker)
    dst = tmp_path / "converted.pth"
    code, line = _cli("convert_weights", [src, dst, "--from", fmt, "--arch", "resnet50"], capsys)
    assert code == 2
    assert_refused(line, src, marker)
    assert not dst.exists()


# ----------------------------------------------------------------------------- YAML
PYTHON_TAG = '!!python/object/apply:os.system ["touch {marker}"]'


def test_yaml_configs_cannot_run_code(tmp_path):
    """Configs are read with yaml.safe_load: a python/object tag is an error, not a call."""
    from detectron_res.config import ConfigError, load_config

    marker = tmp_path / "marker"
    config = tmp_path / "evil.yaml"
    config.write_text(f"seed: {PYTHON_TAG.format(marker=marker)}\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(config), [])
    line = _one_line(str(e.value))
    assert "evil.yaml" in line and "python/object/apply:os.system" in line and not marker.exists()


def test_yolo_data_yaml_cannot_run_code(tmp_path):
    """Ultralytics' data.yaml (class names) goes through OmegaConf's SafeLoader."""
    from detectron_res.data.dataset import DatasetError
    from detectron_res.data.yolo import load_yolo

    marker = tmp_path / "marker"
    _image(tmp_path / "images" / "a.png", 0)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "data.yaml").write_text(f"names: {PYTHON_TAG.format(marker=marker)}\n")
    with pytest.raises(DatasetError) as e:
        load_yolo(str(tmp_path))
    first = str(e.value).splitlines()[0]
    assert "data.yaml" in first and "python/object/apply:os.system" in first and not marker.exists()


# ----------------------------------------------------------------------------- no unsafe loaders in the code
def _python_sources():
    for folder in ("detectron_res", "tools", "benchmarks"):
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_no_unsafe_deserialization_in_the_sources():
    """Every torch.load passes weights_only=True; no pickle.load(s), np.load with
    allow_pickle=True, yaml.load / unsafe_load / full_load, eval or exec."""
    problems = []
    for path in _python_sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            kwargs = {k.arg: k.value for k in node.keywords}
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if owner == "torch" and name == "load":
                wo = kwargs.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if owner in ("pickle", "cPickle", "dill", "joblib", "marshal") and name in ("load", "loads"):
                problems.append(f"{where}: {owner}.{name}")
            if owner in ("np", "numpy") and name == "load":
                ap = kwargs.get("allow_pickle")
                if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                    problems.append(f"{where}: np.load(allow_pickle=...)")
            if owner == "yaml" and name in ("load", "unsafe_load", "full_load", "load_all", "unsafe_load_all"):
                problems.append(f"{where}: yaml.{name}")
            if isinstance(f, ast.Name) and f.id in ("eval", "exec"):
                problems.append(f"{where}: {f.id}()")
    assert not problems, "\n".join(problems)


# ============================================================================= output paths
def _files_under(root: Path) -> set:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model_final.pth")


def _image(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    assert cv2.imwrite(str(path), rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    return path


def test_infer_outputs_stay_in_the_output_folder(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    """Input names with '..', absolute paths, links, separators-to-be, case and
    sanitizing collisions, the summary's own name: one file set per input, all
    directly in --output, none overwritten, nothing written anywhere else."""
    inputs = tmp_path / "in"
    out = tmp_path / "out"
    secret = _image(tmp_path / "elsewhere" / "secret.png", 0)  # reached through in/link.png
    (tmp_path / "elsewhere" / "x.json").write_text("{}")  # must survive
    _image(inputs / "a" / "x.png", 1)
    _image(inputs / "b" / "x.png", 2)  # same name in another folder
    _image(inputs / "c" / "X.png", 3)  # same name but for case (macOS / Windows file systems)
    _image(inputs / "a\\b.png", 4)  # a Windows separator in a Linux name
    _image(inputs / "a_b.png", 5)  # ... equal to it once sanitized
    _image(inputs / "new\nline.png", 6)  # control character
    _image(inputs / "..png", 7)  # stem "."
    _image(inputs / "...png", 8)  # stem ".."
    _image(inputs / ".hidden.png", 9)
    _image(inputs / "predictions.png", 10)  # would overwrite the summary predictions.json
    _image(inputs / "x_2.png", 11)  # the name the second x.png would take
    (inputs / "link.png").symlink_to(secret)  # a link to an image elsewhere
    writer = cv2.VideoWriter(str(inputs / "x.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 24))
    for i in range(3):
        writer.write(np.full((24, 32, 3), 40 * i, np.uint8))
    writer.release()
    # Links planted in the output folder where x.png's outputs will be written: the run
    # refuses them without --overwrite; with it they are replaced by the output files,
    # not followed (victim.png keeps its pixels).
    victim = _image(tmp_path / "elsewhere" / "victim.png", 12)
    out.mkdir()
    (out / "x_png.png").symlink_to(victim)
    (out / "x_png.json").symlink_to(tmp_path / "elsewhere" / "x.json")
    before = {p: p.read_bytes() for p in _files_under(tmp_path) if not p.is_relative_to(out) and p.is_file()}

    monkeypatch.chdir(inputs / "a")
    argv = [
        "x.png",  # relative
        "../b/x.png",  # with '..'
        inputs / "c" / "X.png",  # absolute
        inputs / ".." / "in" / "a\\b.png",
        inputs / "a_b.png", inputs / "new\nline.png", inputs / "..png", inputs / "...png", inputs / ".hidden.png",
        inputs / "predictions.png", inputs / "x_2.png", inputs / "link.png", inputs / "x.avi",
    ]
    common = ["--weights", str(tiny_checkpoint), "--output", str(out), "-q", "--device", "cpu"]
    code = _load_tool("infer").main([str(a) for a in argv] + common)
    captured = capsys.readouterr()
    assert code == 2 and "already exists" in captured.err and "--overwrite" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["x_png.json", "x_png.png"]
    code = _load_tool("infer").main([str(a) for a in argv] + common + ["--overwrite"])
    captured = capsys.readouterr()
    assert code == 0, captured.err

    # Nothing outside --output changed, and nothing new appeared outside it.
    after = {p for p in _files_under(tmp_path) if not p.is_relative_to(out)}
    assert after == set(before)
    assert all(p.read_bytes() == b for p, b in before.items())
    # Every output is a regular file directly in --output.
    written = sorted(out.iterdir())
    assert [p for p in written if not p.is_file() or p.is_symlink() or p.parent != out] == []
    # One JSON per input (12 images + 1 video) plus the summary; each names its input.
    summary = json.loads((out / "predictions.json").read_text())
    records = summary["images"] + summary["videos"]
    assert len(records) == 13 and len(list(out.glob("*.json"))) == 14
    assert sorted(r["file_name"] for r in records) == sorted(str(a) for a in argv)
    stems = [Path(r.get("annotated_image") or r["annotated_video"]).stem for r in records]
    assert stems == ["x_png", "x_png_2", "X_png_3", "a_b_png", "a_b_png_2", "new_line_png", "image_png",
                     "image_png_2", "hidden_png", "predictions_png", "x_2_png", "link_png", "x_avi"]
    for record in records:
        own = json.loads((out / f"{Path(record.get('annotated_image') or record['annotated_video']).stem}.json")
                         .read_text())
        assert own["file_name"] == record["file_name"]


def test_infer_never_overwrites_an_input_next_to_it(tmp_path, tiny_checkpoint, capsys):
    """--output pointing at the inputs' folder: x.png, x_png.json and x_png_annotated.png
    are inputs (the last two fail to decode), so x's outputs take other names."""
    folder = tmp_path / "data"
    image = _image(folder / "x.png", 1)
    original = image.read_bytes()
    (folder / "x_png.json").write_text('{"mine": true}\n')
    (folder / "x_png.png").write_text("not an image\n")
    code = _load_tool("infer").main([str(folder / "x.png"), str(folder / "x_png.json"), str(folder / "x_png.png"),
                                     "--weights", str(tiny_checkpoint), "--output", str(folder), "-q"])
    capsys.readouterr()
    assert code == 1  # the two non-images are reported
    assert image.read_bytes() == original
    assert (folder / "x_png.json").read_text() == '{"mine": true}\n'
    assert (folder / "x_png.png").read_text() == "not an image\n"
    assert (folder / "x_png_2.json").is_file() and (folder / "x_png_2.png").is_file()


def test_export_output_is_next_to_the_checkpoint(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "model_final.pth").write_bytes(tiny_checkpoint.read_bytes())
    (run / "last_checkpoint").write_text("model_final.pth")
    monkeypatch.chdir(tmp_path)
    before = _files_under(tmp_path)
    code = _load_tool("export").main(["--weights", str(Path("runs") / ".." / "runs" / "r1"), "--format",
                                      "torchscript", "--no-check"])
    capsys.readouterr()
    assert code == 0
    assert _files_under(tmp_path) - before == {run / "model_final.torchscript.pt",
                                               run / "model_final.torchscript.pt.json"}


def test_evaluation_outputs_stay_in_the_output_folder(tmp_path, data_root, monkeypatch, capsys):
    """--eval-only on a dataset named '../../escape' whose classes are named like paths:
    inference/<dataset>/, the comp4 files and the PR-curve PNGs stay under --output-dir,
    one file per class."""
    from detectron_res.config import config_to_dict, load_config
    from detectron_res.engine.checkpoint import save_checkpoint
    from detectron_res.modeling.build import build_model

    monkeypatch.setenv("DETECTRON_RES_DATASETS", str(data_root))
    names = ["../../pwn", "a/b", "/abs/c", "a%2Fb"]
    ann = json.loads((data_root / "shapes" / "annotations" / "instances_val.json").read_text())
    for category, name in zip(ann["categories"], names):
        category["name"] = name
    work = tmp_path / "work"
    (work / "deep").mkdir(parents=True)
    (work / "evil.json").write_text(json.dumps(ann))
    config = work / "evil.yaml"
    config.write_text(
        f"_base_: {ROOT / 'configs' / 'demo_shapes.yaml'}\n"
        "data:\n"
        "  datasets:\n"
        "    ../../escape:\n"
        "      format: coco\n"
        f"      image_root: {data_root / 'shapes' / 'images' / 'val'}\n"
        f"      annotation_file: {work / 'evil.json'}\n"
        "  train: ['../../escape']\n"
        "  test: ['../../escape']\n"
        "  num_workers: 0\n"
        "test:\n"
        "  best_metric: ''\n"
    )
    tiny = [o for o in TINY_DETECTOR if not o.startswith("data.")]
    cfg = load_config(str(config), tiny)
    torch.manual_seed(0)
    model = build_model(cfg)
    ckpt = work / "model_final.pth"
    save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg), "class_names": names,
                     "iteration": 0}, ckpt)
    out = work / "deep" / "out"
    before = _files_under(tmp_path)
    code = _load_tool("train_net").main(["--config", str(config), "--output-dir", str(out), "--device", "cpu",
                                         "--eval-only", "--weights", str(ckpt), *tiny])
    err = capsys.readouterr().err
    assert code == 0, err
    new = _files_under(tmp_path) - before
    assert new and all(p.is_relative_to(out) for p in new), sorted(map(str, new))
    dataset_dir = out / "inference" / "..%2F..%2Fescape"
    comp4 = sorted(p.name for p in (dataset_dir / "comp4").iterdir())
    # A COCO-format dataset records no split: its comp4 files take the dataset's name.
    assert comp4 == sorted(f"comp4_det_..%2F..%2Fescape_{n}.txt"
                           for n in ("..%2F..%2Fpwn", "a%2Fb", "%2Fabs%2Fc", "a%252Fb"))
    assert (dataset_dir / "evaluation.json").is_file()
    assert len(list(dataset_dir.rglob("pr_*.png"))) == 2 * len(names)  # voc and coco, one per class
