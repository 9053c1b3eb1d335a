"""Tables 7, 8 and 9 of the ResNet paper, with our runs' numbers beside the paper's.

Six runs make the two tables (ResNet paper, Sec. 4.3; values in
shared/PAPER_FACTS.md):

=============  ==============================  ===============================
slot           trained on                      scored on
=============  ==============================  ===============================
``*-voc07``    VOC07 trainval + VOC12 trainval VOC07 test (``voc_2007_test``), mAP
``*-voc12``    VOC07 trainval+test + VOC12 tv  VOC12 test (``voc_2012_test``): server
``*-coco``     COCO 2014 train                 COCO 2014 val (``coco_2014_val``)
=============  ==============================  ===============================

for ``*`` = ``vgg16`` and ``resnet101``. Table 9 (Appendix B, COCO val, ResNet-101)
adds three cumulative rows, told apart by the run's config:

=======================  ===========================================================
slot                     config
=======================  ===========================================================
``resnet101-coco``       the baseline (Table 8's run)
``resnet101-coco+box``   ``model.roi_heads.box_refinement``
``resnet101-coco+ctx``   ... and ``model.roi_heads.global_context``
``resnet101-coco+ms``    ... and ``test.scales`` (multi-scale testing)
=======================  ===========================================================

A COCO run with another combination of these options fills no slot (it is listed
and ignored); ``test.hflip`` (not in the paper) is noted under the tables.

A run directory is what ``tools/train_net.py`` writes: ``config.yaml`` (the
resolved config), ``metrics.json`` (the training log, JSON lines) and
``inference/<dataset>/evaluation.json`` (the last evaluation, training's final one
or ``--eval-only``'s). The run's slot is read from the config:
``model.backbone.name`` (``vgg16``, or ``resnet`` with ``model.backbone.depth``
101) and the test datasets in ``data.test``; ``--run SLOT=DIR`` names it
explicitly instead.

Metrics are looked up in ``inference/<dataset>/evaluation.json`` first (``{dataset:
{evaluator: {metric: value}}}``, see :func:`~detectron_res.evaluation.report.write_metrics`),
then in ``metrics.json`` (one such JSON object, or JSON lines with flat keys
``<dataset>/voc/mAP50`` or, for a run with one test set, ``voc/mAP50``; the last
record holding the metric wins).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..bounded_io import CONFIG_LIMITS, RESULTS_JSON_LIMITS, load_json_text, load_yaml_file, read_text
from ..engine.events import json_lines_records

__all__ = [
    "BACKBONES",
    "TESTS",
    "PAPER_TABLE7",
    "PAPER_TABLE8",
    "PAPER_TABLE9",
    "RunResult",
    "parse_slot",
    "identify_run",
    "read_metrics_records",
    "load_run",
    "collect_runs",
    "format_tables",
]

# backbone key -> name in the paper's tables
BACKBONES: Dict[str, str] = {"vgg16": "VGG-16", "resnet101": "ResNet-101"}
# test key -> dataset name in the catalog
TESTS: Dict[str, str] = {"voc07": "voc_2007_test", "voc12": "voc_2012_test", "coco": "coco_2014_val"}
# the paper's training data per test (Table 7 header; Table 8 caption)
TRAIN_SETS: Dict[str, Tuple[str, ...]] = {
    "voc07": ("voc_2007_trainval", "voc_2012_trainval"),  # "07+12"
    "voc12": ("voc_2007_trainval", "voc_2007_test", "voc_2012_trainval"),  # "07++12"
    "coco": ("coco_2014_train",),
}
# Table 7: PASCAL VOC mAP (%), Faster R-CNN baseline
PAPER_TABLE7: Dict[Tuple[str, str], float] = {
    ("vgg16", "voc07"): 73.2,
    ("vgg16", "voc12"): 70.4,
    ("resnet101", "voc07"): 76.4,
    ("resnet101", "voc12"): 73.8,
}
# Table 8: COCO val (%), (mAP@.5, mAP@[.5, .95])
PAPER_TABLE8: Dict[str, Tuple[float, float]] = {"vgg16": (41.5, 21.2), "resnet101": (48.4, 27.2)}

# Table 9: COCO val (%), (mAP@.5, mAP@[.5, .95]), ResNet-101, cumulative rows:
# test key -> (row label, (box_refinement, global_context, multi-scale), paper values)
PAPER_TABLE9: Dict[str, Tuple[str, Tuple[bool, bool, bool], Tuple[float, float]]] = {
    "coco": ("baseline", (False, False, False), (48.4, 27.2)),
    "coco+box": ("+ box refinement", (True, False, False), (49.9, 29.9)),
    "coco+ctx": ("+ context", (True, True, False), (51.1, 30.0)),
    "coco+ms": ("+ multi-scale testing", (True, True, True), (53.8, 32.5)),
}
TABLE9_BACKBONE = "resnet101"

SLOTS: Tuple[Tuple[str, str], ...] = tuple((b, t) for b in BACKBONES for t in TESTS) + tuple(
    (TABLE9_BACKBONE, t) for t in PAPER_TABLE9 if t not in TESTS
)


def _base_test(test: str) -> str:
    """``"coco+ctx"`` -> ``"coco"``: the dataset and metrics of a Table 9 row."""
    return test.split("+", 1)[0]


def slot_name(slot: Tuple[str, str]) -> str:
    return f"{slot[0]}-{slot[1]}"


def parse_slot(text: str) -> Tuple[str, str]:
    """``"resnet101-voc07"`` -> ``("resnet101", "voc07")``."""
    valid = [slot_name(s) for s in SLOTS]
    backbone, _, test = text.strip().partition("-")
    if (backbone, test) not in SLOTS:
        raise ValueError(f"run slot {text!r} is not valid; expected one of {valid}")
    return backbone, test


@dataclass
class RunResult:
    """What one run contributes to one cell of the tables.

    Attributes:
        slot: ``(backbone, test)``.
        run_dir: the run directory.
        values: ``voc07``/``voc12``: ``{"mAP50"}``; ``coco``: ``{"AP50", "AP"}``
            (percent; missing keys were not found); ``voc12`` may instead have
            ``{"submission": path}``.
        train: the run's training datasets (``data.train``), if known.
        notes: remarks shown under the tables.
    """

    slot: Tuple[str, str]
    run_dir: Path
    values: Dict[str, Any] = field(default_factory=dict)
    train: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def _load_yaml(path: Path) -> Dict[str, Any]:
    import yaml

    try:
        data = load_yaml_file(path, CONFIG_LIMITS)
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level is a {type(data).__name__}, expected a mapping")
    return data


def _get(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _as_list(value: Any) -> List[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def identify_run(run_dir: Path) -> Tuple[List[Tuple[str, str]], List[str], str]:
    """Slots a run fills, from its ``config.yaml``.

    Returns:
        ``(slots, train_sets, reason)``: ``reason`` says why ``slots`` is empty.
    """
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        return [], [], f"no config.yaml (name its slot with --run SLOT={run_dir})"
    cfg = _load_yaml(cfg_path)
    name = str(_get(cfg, "model.backbone.name") or "")
    depth = _get(cfg, "model.backbone.depth")
    if name == "vgg16":
        backbone = "vgg16"
    elif name == "resnet" and str(depth) == "101":
        backbone = "resnet101"
    else:
        described = f"{name}-{depth}" if name == "resnet" else name or "unknown"
        return [], [], f"backbone {described} is not in Tables 7/8 (VGG-16, ResNet-101)"
    tests = _as_list(_get(cfg, "data.test"))
    slots = [(backbone, t) for t, ds in TESTS.items() if ds in tests]
    if not slots:
        return [], [], f"data.test={tests} has none of {list(TESTS.values())}"
    # Appendix B's options decide the run's row of Table 9 (the baseline is Table 8's run)
    flags = (
        bool(_get(cfg, "model.roi_heads.box_refinement")),
        bool(_get(cfg, "model.roi_heads.global_context")),
        bool(_get(cfg, "test.scales")),
    )
    if any(flags):
        row = next((t for t, (_, f, _) in PAPER_TABLE9.items() if f == flags), None)
        if backbone != TABLE9_BACKBONE or row is None:
            names = ("box_refinement", "global_context", "test.scales")
            on = [n for n, f in zip(names, flags) if f]
            return [], [], (f"{'+'.join(on)} on a {BACKBONES[backbone]} run is no row of Table 9 (ResNet-101 rows: "
                            "box_refinement; + global_context; + test.scales)")
        slots = [(backbone, row if t == "coco" else t) for _, t in slots]
        slots = [s for s in slots if s[1] not in ("voc07", "voc12")]  # Table 7 is the baseline only
        if not slots:
            return [], [], "Appendix B options on a VOC run: Table 7 shows the baseline only"
    return slots, _as_list(_get(cfg, "data.train")), ""


def read_metrics_records(path: Path) -> List[Dict[str, Any]]:
    """Records of a ``metrics.json``: one JSON object, or JSON lines (bad lines skipped)."""
    text = read_text(path, RESULTS_JSON_LIMITS)
    try:
        data = load_json_text(text, RESULTS_JSON_LIMITS, str(path))
        return [data] if isinstance(data, dict) else []
    except json.JSONDecodeError:
        return json_lines_records(text, str(path))


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


# metric name in the tables -> (evaluator, key in its results)
_METRICS: Dict[str, Sequence[Tuple[str, str]]] = {
    "voc07": (("mAP50", "voc"),),
    "voc12": (("mAP50", "voc"), ("submission", "voc")),
    "coco": (("AP50", "coco"), ("AP", "coco")),
}


def load_run(run_dir: Path, slot: Tuple[str, str], *, single_test: bool, train: Sequence[str] = ()) -> RunResult:
    """Read one slot's numbers from ``run_dir/metrics.json``."""
    backbone, test = slot
    result = RunResult(slot=slot, run_dir=run_dir, train=list(train))
    test = _base_test(test)
    dataset = TESTS[test]
    # later sources win: the evaluation file holds the most recent evaluation
    sources = [run_dir / "metrics.json", run_dir / "inference" / dataset / "evaluation.json"]
    sources = [p for p in sources if p.is_file()]
    if not sources:
        result.notes.append(
            f"{run_dir}: neither metrics.json nor inference/{dataset}/evaluation.json "
            "(evaluate with tools/train_net.py --eval-only)"
        )
        return result
    flat_records = [_flatten(r) for p in sources for r in read_metrics_records(p)]
    for key, evaluator in _METRICS[test]:
        candidates = [f"{dataset}/{evaluator}/{key}"] + ([f"{evaluator}/{key}"] if single_test else [])
        for record in reversed(flat_records):
            hit = next((record[c] for c in candidates if c in record), None)
            if hit is None:
                continue
            if key == "submission":
                path = Path(str(hit))
                if not path.is_absolute() and not path.exists() and (run_dir / path).exists():
                    path = run_dir / path  # written relative to the run directory
                result.values[key] = str(path)
            elif _number(hit) is not None:
                result.values[key] = _number(hit)
            break
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file() and _get(_load_yaml(cfg_path), "test.hflip"):
        result.notes.append(f"{run_dir}: tested with test.hflip (horizontal flip, not in the paper)")
    expected = set(TRAIN_SETS[test])
    if train and set(train) != expected:
        result.notes.append(
            f"{BACKBONES[backbone]} {test}: trained on {'+'.join(train)}; the paper trains on {'+'.join(sorted(expected))}"
        )
    if not result.values:
        result.notes.append(f"{run_dir}: no {dataset} metrics found in {', '.join(p.name for p in sources)}")
    return result


def collect_runs(
    run_dirs: Iterable[Path], explicit: Mapping[Tuple[str, str], Path] = {}
) -> Tuple[Dict[Tuple[str, str], RunResult], List[str]]:
    """Find each run's slot(s) and read its metrics.

    Args:
        run_dirs: directories identified from their ``config.yaml``.
        explicit: slot -> directory, overriding identification.

    Returns:
        ``(runs, notes)``: slot -> result, and remarks (ignored directories).

    Raises:
        ValueError: a directory does not exist, or two runs claim one slot.
    """
    notes: List[str] = []
    claimed: Dict[Tuple[str, str], Tuple[Path, List[str], bool]] = {}

    def claim(slot, run_dir, train, single):
        if slot in claimed and claimed[slot][0] != run_dir:
            raise ValueError(
                f"two runs for {slot_name(slot)}: {claimed[slot][0]} and {run_dir}; pass only one "
                f"(or name it with --run {slot_name(slot)}=DIR)"
            )
        claimed[slot] = (run_dir, train, single)

    for slot, run_dir in explicit.items():
        if not Path(run_dir).is_dir():
            raise ValueError(f"--run {slot_name(slot)}={run_dir}: no such directory")
        train: List[str] = []
        tests: List[str] = []
        if (Path(run_dir) / "config.yaml").is_file():
            cfg = _load_yaml(Path(run_dir) / "config.yaml")
            train, tests = _as_list(_get(cfg, "data.train")), _as_list(_get(cfg, "data.test"))
        claim(slot, Path(run_dir), train, len(tests) <= 1)
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise ValueError(f"run directory {run_dir} does not exist")
        if any(d == run_dir for d, _, _ in claimed.values()):
            continue
        slots, train, reason = identify_run(run_dir)
        if not slots:
            notes.append(f"ignored {run_dir}: {reason}")
            continue
        for slot in slots:
            if slot in explicit:
                continue
            claim(slot, run_dir, train, len(slots) == 1)
    runs = {slot: load_run(d, slot, single_test=single, train=train) for slot, (d, train, single) in claimed.items()}
    return runs, notes


def _fmt(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.1f}"


def _diff(ours: Optional[float], paper: float) -> str:
    return "" if ours is None else f"{ours - paper:+.1f}"


def _render(title: str, groups: Sequence[Tuple[str, int]], header: Sequence[str], rows: Sequence[Sequence[str]],
            markdown: bool) -> str:  # fmt: skip
    if markdown:
        grouped = []
        col = 0
        for name, span in groups:
            for j in range(span):
                grouped.append(f"{name}: {header[col]}" if name and header[col] else name or header[col])
                col += 1
        lines = [f"**{title}**", "", "| " + " | ".join(grouped) + " |", "|" + "---|" * len(grouped)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(header[c]), *(len(r[c]) for r in rows)) for c in range(len(header))]
    group_line, col = [], 0
    for name, span in groups:
        w = sum(widths[col : col + span]) + 2 * (span - 1)
        group_line.append(f"{name:<{w}}")
        col += span
    lines = [title, "  ".join(group_line).rstrip()]
    lines.append("  ".join(f"{h:<{w}}" for h, w in zip(header, widths)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(f"{c:<{w}}" for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def format_tables(
    runs: Mapping[Tuple[str, str], RunResult],
    *,
    notes: Sequence[str] = (),
    server_results: Mapping[str, float] = {},
    markdown: bool = False,
) -> str:
    """Tables 7, 8 and 9 in the paper's layout, ours / paper / difference per cell.

    Args:
        runs: slot -> result (see :func:`collect_runs`); a missing slot shows "not run".
        notes: extra remarks printed under the tables.
        server_results: backbone -> VOC12 test mAP returned by the evaluation server,
            shown instead of "server".
        markdown: Markdown tables instead of plain text.
    """
    footnotes: List[str] = []

    def cell(slot, key, paper):
        run = runs.get(slot)
        if run is None:
            return ["not run", f"{paper:.1f}", ""]
        value = run.values.get(key)
        if slot[1] == "voc12" and slot[0] in server_results:
            value = float(server_results[slot[0]])
            return [f"{value:.1f} (server)", f"{paper:.1f}", _diff(value, paper)]
        if value is None and slot[1] == "voc12" and "submission" in run.values:
            footnotes.append(f"[{len(footnotes) + 1}] {BACKBONES[slot[0]]} VOC 12 test: upload "
                             f"{run.values['submission']} to http://host.robots.ox.ac.uk:8080/")  # fmt: skip
            return [f"server [{len(footnotes)}]", f"{paper:.1f}", ""]
        if value is None:
            return ["no metrics", f"{paper:.1f}", ""]
        return [_fmt(value), f"{paper:.1f}", _diff(value, paper)]

    rows7 = []
    for b, label in BACKBONES.items():
        rows7.append([label] + cell((b, "voc07"), "mAP50", PAPER_TABLE7[(b, "voc07")])
                     + cell((b, "voc12"), "mAP50", PAPER_TABLE7[(b, "voc12")]))  # fmt: skip
    rows8 = []
    for b, label in BACKBONES.items():
        p50, p = PAPER_TABLE8[b]
        rows8.append([label] + cell((b, "coco"), "AP50", p50) + cell((b, "coco"), "AP", p))
    rows9 = []
    for test, (label, _, (p50, p)) in PAPER_TABLE9.items():
        slot = (TABLE9_BACKBONE, test)
        rows9.append([label] + cell(slot, "AP50", p50) + cell(slot, "AP", p))
    sub = ["ours", "paper", "diff"]
    t7 = _render(
        "Table 7. Object detection mAP (%) on PASCAL VOC, Faster R-CNN baseline",
        [("", 1), ("VOC 07 test (train 07+12)", 3), ("VOC 12 test (train 07++12)", 3)],
        ["method"] + sub + sub,
        rows7,
        markdown,
    )
    t8 = _render(
        "Table 8. Object detection (%) on COCO 2014 val, Faster R-CNN baseline",
        [("", 1), ("mAP@.5", 3), ("mAP@[.5, .95]", 3)],
        ["method"] + sub + sub,
        rows8,
        markdown,
    )
    t9 = _render(
        "Table 9. Object detection (%) on COCO 2014 val, ResNet-101, Appendix B improvements (cumulative)",
        [("", 1), ("mAP@.5", 3), ("mAP@[.5, .95]", 3)],
        ["training / test"] + sub + sub,
        rows9,
        markdown,
    )
    remarks = list(footnotes)
    for slot in SLOTS:
        if slot in runs:
            label = PAPER_TABLE9[slot[1]][0] if slot[1] in PAPER_TABLE9 and slot[1] not in TESTS else slot[1]
            remarks.append(f"{BACKBONES[slot[0]]} {label}: {runs[slot].run_dir}")
            remarks.extend(runs[slot].notes)
    remarks.extend(notes)
    sep = "\n\n"
    text = t7 + sep + t8 + sep + t9
    if remarks:
        text += sep + "\n".join(("- " if markdown else "") + r for r in remarks)
    return text + "\n"
