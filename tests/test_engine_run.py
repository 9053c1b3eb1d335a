"""The engine's run skeleton (detectron_res/engine/run.py) is generic: it imports no
task code, and a task written here (a one-weight regression, neither detection nor
classification) trains, evaluates, checkpoints and resumes exactly through it."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from detectron_res.config import RunConfig, SolverConfig
from detectron_res.engine.checkpoint import load_checkpoint
from detectron_res.engine.run import Run, run_evaluation, run_training
from detectron_res.engine.solver import WarmupMultiStepLR, warmup_multistep_factor
from detectron_res.engine.trainer import Trainer
from detectron_res.training_cli import output_dir_for

ENGINE = Path(__file__).resolve().parent.parent / "detectron_res" / "engine"
# The task layers: the engine stands below them.
TASK_PACKAGES = ("detectron_res.modeling", "detectron_res.data", "detectron_res.evaluation",
                 "detectron_res.classification", "detectron_res.detection")


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``path``, function-local ones included."""
    package = "detectron_res.engine"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            # "from .. import data" names a module too.
            found += [(node.lineno, module)] + [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return found


def test_resolving_relative_imports_is_right(tmp_path):
    """The checker itself: a lazy relative import of a task package is seen."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from ..modeling.build import build_model\n    from .. import evaluation\n")
    modules = [m for _, m in _imported_modules(source)]
    assert "detectron_res.modeling.build" in modules and "detectron_res.evaluation" in modules


def test_engine_imports_no_task_code():
    offending = [f"{path.name}:{line}: {module}"
                 for path in sorted(ENGINE.glob("*.py"))
                 for line, module in _imported_modules(path)
                 if module.startswith(TASK_PACKAGES)]
    assert len(list(ENGINE.glob("*.py"))) >= 9
    assert offending == []


# ---------------------------------------------------------------------------
# a task of its own: fit y = 3x with one weight
# ---------------------------------------------------------------------------
class Line(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 1)

    def forward(self, batch):
        x, y = batch
        return {"loss_mse": ((self.fc(x) - y) ** 2).mean()}


def _batches(seed: int, start_iter: int):
    """Batch i depends on (seed, i) only: a resumed run sees the same data."""
    it = start_iter
    while True:
        g = torch.Generator().manual_seed(seed * 100_003 + it)
        x = torch.randn(4, 1, generator=g)
        yield x, 3 * x
        it += 1


TEST_X = torch.linspace(-1, 1, 5).view(5, 1)


class LineTask:
    trainer_class = Trainer
    no_weights = "PyTorch's default initialization"
    eval_weights_hint = "weights: pass --weights"

    def __init__(self) -> None:
        self.evaluated_final: list[bool] = []

    def load_data(self, cfg):
        return {"test_x": TEST_X}

    def build_model(self, cfg):
        return Line()

    def initialize(self, model, source, cfg, data):
        model.load_state_dict(load_checkpoint(source)["model"])
        return f"line from {source}"

    def read_checkpoint(self, path):
        return load_checkpoint(path)

    def restore(self, model, state, *, path, run_dir, data):
        model.load_state_dict(state["model"])

    def checkpoint_header(self, cfg, model, data):
        return {"task": "line"}

    def train_loader(self, cfg, data, *, rank, world_size, start_iter, device):
        return _batches(int(cfg.seed), start_iter)

    def evaluator(self, run: Run):
        def evaluate(final: bool) -> dict:
            self.evaluated_final.append(final)
            with torch.no_grad():
                mse = float(((run.model.fc(run.data["test_x"]) - 3 * run.data["test_x"]) ** 2).mean())
            return {"scalars": {"line/mse": mse}}

        return evaluate

    def best_metric(self, cfg):
        return ""

    def add_hooks(self, run, hooks):
        return hooks

    def summary_lines(self, run):
        return [f"model: one weight, init: {run.init}"]

    def evaluation_files(self, cfg):
        return [Path("eval.json")]

    def evaluable(self, source):
        return bool(source)

    def evaluate_weights(self, cfg, source, *, output_dir, dist_info, device):
        model = Line()
        model.load_state_dict(load_checkpoint(source)["model"])
        with torch.no_grad():
            mse = float(((model.fc(TEST_X) - 3 * TEST_X) ** 2).mean())
        (output_dir / "eval.json").write_text(json.dumps({"mse": mse}))
        return {"scalars": {"line/mse": mse}}


def _cfg(max_iter: int):
    """The run-level keys and solver every task shares, plus the two keys the skeleton
    reads from a task's own sections (model.weights, test.eval_period)."""
    defaults = OmegaConf.to_container(OmegaConf.structured(RunConfig))
    cfg = OmegaConf.create({"model": {"weights": ""}, "test": {"eval_period": 3}, **defaults,
                            "solver": OmegaConf.to_container(OmegaConf.structured(SolverConfig))})
    overrides = {"solver": {"max_iter": max_iter, "steps": [4], "base_lr": 0.05, "ims_per_batch": 1,
                            "warmup_iters": 0, "checkpoint_period": 3},
                 "device": "cpu", "seed": 5, "log_period": 1, "cpu_threads": 1}
    return OmegaConf.merge(cfg, overrides)


def _mse_of(path: Path) -> float:
    state = load_checkpoint(path)["model"]
    w, b = state["fc.weight"], state["fc.bias"]
    return float(((TEST_X * w[0, 0] + b[0] - 3 * TEST_X) ** 2).mean())


def test_a_task_of_its_own_trains_evaluates_and_resumes_exactly(tmp_path, capsys):
    task = LineTask()
    straight = run_training(task, _cfg(6), output_dir=tmp_path / "straight", config_source="toy")
    assert task.evaluated_final == [False, True]  # the period at 3, then the end
    final = tmp_path / "straight" / "model_final.pth"
    # The result is the task's evaluation of the final weights, recomputed here from the file.
    assert straight["scalars"]["line/mse"] == pytest.approx(_mse_of(final), rel=1e-6)
    assert load_checkpoint(final)["task"] == "line" and load_checkpoint(final)["iteration"] == 5
    assert "seed: 5" in (tmp_path / "straight" / "config.yaml").read_text().splitlines()
    rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "line/mse" in r] == [2, 5]
    log = (tmp_path / "straight" / "log.txt").read_text()
    assert "config: toy -> resolved copy" in log and "model: one weight, init: PyTorch's default" in log

    # 3 iterations, then --resume to 6: the same weights bit for bit.
    run_training(LineTask(), _cfg(3), output_dir=tmp_path / "resumed")
    resumed = run_training(LineTask(), _cfg(6), output_dir=tmp_path / "resumed", resume=True)
    a = load_checkpoint(final)["model"]
    b = load_checkpoint(tmp_path / "resumed" / "model_final.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["scalars"] == straight["scalars"]

    # --eval-only through the same skeleton: the run's last checkpoint when no weights are named.
    result = run_evaluation(LineTask(), _cfg(6), output_dir=tmp_path / "straight")
    assert result["scalars"]["line/mse"] == pytest.approx(_mse_of(final), rel=1e-6)
    with pytest.raises(ValueError, match=r"--eval-only needs weights: pass --weights, or train into .*empty"):
        run_evaluation(LineTask(), _cfg(6), output_dir=tmp_path / "empty")


def test_constant_warmup_holds_the_factor_then_returns():
    """Sec 4.2's ResNet-110 warm-up: 0.1 x base LR for warmup_iters, then the step schedule."""
    kw = dict(steps=[6], gamma=0.1, warmup_iters=3, warmup_factor=0.1)
    assert [warmup_multistep_factor(i, warmup_method="constant", **kw) for i in (0, 2, 3, 5, 6)] == \
        pytest.approx([0.1, 0.1, 1.0, 1.0, 0.1])
    assert [warmup_multistep_factor(i, **kw) for i in (0, 1, 3)] == pytest.approx([0.1, 0.1 * 2 / 3 + 1 / 3, 1.0])
    with pytest.raises(ValueError, match="solver.warmup_method='cosine'"):
        WarmupMultiStepLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), steps=[], warmup_method="cosine")


def test_output_dir_rule_of_both_training_tools():
    class Args:
        def __init__(self, output_dir=None, config="configs/voc07_r101.yaml"):
            self.output_dir, self.config = output_dir, config

    class Cfg:
        def __init__(self, output_dir="output/default"):
            self.output_dir = output_dir

    assert output_dir_for(Cfg(), Args()) == Path("output/voc07_r101")
    assert output_dir_for(Cfg("runs/x"), Args()) == Path("runs/x")
    assert output_dir_for(Cfg("runs/x"), Args(output_dir="here")) == Path("here")
