"""The benchmark's outputs, written from a run's results dict alone: Markdown, JSON, the scaling plot.

Nothing here measures: ``python benchmarks/run.py --report-only results_cpu.json``
rewrites ``RESULTS.md`` (and the plot) from a run's JSON, and
``tests/test_benchmark_report.py`` checks that the committed ``RESULTS.md`` is
what this module writes from the committed ``results_cpu.json``. The results'
keys are described in ``results.py``; the targets' rows are evaluated by
``targets.py`` during the run and stored in ``results["targets"]``.

* :func:`write_outputs`: ``scaling_<device>.png``, ``results_<device>.json`` and
  ``RESULTS.md`` (``RESULTS_GPU.md`` on CUDA) into one folder;
* :func:`write_markdown`: the Markdown report; :func:`plot_scaling`: the plot;
* :func:`fmt_s`, :func:`fmt_cpu_ratio`, :func:`fmt_pair`: the number formats the
  report and the targets share.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from detectron_res.outputs import atomic_write, atomic_write_text

from benchmarks.results import BF16_PAIRS, STAGES, error_record, paired_ratio


def fmt_s(s: Optional[float]) -> str:
    if s is None:
        return "-"
    return f"{s * 1000:.1f} ms" if s < 1.0 else f"{s:.2f} s"


def _fmt_time_summary(summary: Dict[str, float]) -> str:
    if summary["n"] == 1:
        return f"{fmt_s(summary['median_s'])} (n=1)"
    return f"{fmt_s(summary['median_s'])} ({fmt_s(summary['min_s'])}-{fmt_s(summary['max_s'])}, n={summary['n']})"


def _fmt_mib(record: Dict[str, Any]) -> str:
    value = record.get("peak_mib") if record else None
    return "-" if value is None else f"{value:.0f} MiB"


def fmt_cpu_ratio(record: Dict[str, Any], name: str) -> str:
    """Median paired ratio of CPU seconds (CPU runs only), or '-'."""
    ratio = record.get("cpu_ratio_vs_torchvision", {}).get(name)
    return "-" if ratio is None else f"{ratio['median']:.2f}"


def fmt_pair(record: Dict[str, Any], a: str, b: str) -> str:
    """Median per-turn ratio a / b of wall (and CPU) time, or '-'."""
    times, cpu = record.get("times", {}), record.get("cpu_times", {})
    if a not in times or b not in times:
        return "-"
    text = f"{paired_ratio(times[a], times[b])['median']:.2f}"
    if a in cpu and b in cpu:
        text += f" (CPU {paired_ratio(cpu[a], cpu[b])['median']:.2f})"
    return text


def _fmt_isa(isa: Optional[Dict[str, Any]]) -> str:
    if not isa:
        return "-"
    native = isa.get("native_bf16")
    return (", ".join(isa.get("flags") or ["no AVX2"]) + "; native bf16: "
            + (f"yes ({native})" if native else "no (bf16 is emulated: slower than fp32)"))


def _is_ablation(record: Dict[str, Any]) -> bool:
    return any(name.startswith(("ours_plain", "ours-", "ours+")) for name in record.get("summary", {}))


def _table_head(header: str) -> List[str]:
    """A Markdown table's header row and the separator row under it (one ``---`` per column)."""
    return [header, "|" + "---|" * (header.count(" | ") + 1)]


def _versus_torchvision(record: Dict[str, Any]) -> str:
    """Two cells: ours / torchvision, median **bold** (range), and the same ratio of CPU time."""
    ratio = record["ratio_vs_torchvision"]["ours"]
    return f"**{ratio['median']:.2f}** ({ratio['min']:.2f}-{ratio['max']:.2f}) | {fmt_cpu_ratio(record, 'ours')}"


def _plain_versus_torchvision(record: Dict[str, Any]) -> str:
    """One cell: ours with every speed option off / torchvision, or '-' where not measured."""
    plain = record["ratio_vs_torchvision"].get("ours_plain")
    return "-" if plain is None else f"{plain['median']:.2f}"


def _memory_pair(record: Dict[str, Any]) -> str:
    """One cell: peak memory of ours / of torchvision."""
    return f"{_fmt_mib(record['peak_memory']['ours'])} / {_fmt_mib(record['peak_memory']['torchvision'])}"


def _ablation_table(record: Dict[str, Any], title: str) -> List[str]:
    """Markdown lines: every variant of one comparison against ours and torchvision."""
    lines = [f"### {title}", ""]
    lines += _table_head(
        "| variant | median (min-max, n) | / ours | (CPU time) | / torchvision | (CPU time) | peak memory | "
        "detections equal to tv |"
    )
    for name, s in record["summary"].items():
        vs_ours = record.get("ratio_vs_ours", {}).get(name)
        vs_ours_cpu = record.get("cpu_ratio_vs_ours", {}).get(name)
        agree = record.get("agreement", {}).get(name)
        lines.append(
            f"| {name} | {_fmt_time_summary(s)} | {'%.2f' % vs_ours['median'] if vs_ours else '1'} | "
            f"{'%.2f' % vs_ours_cpu['median'] if vs_ours_cpu else '-'} | "
            f"{'%.2f' % record['ratio_vs_torchvision'][name]['median'] if name != 'torchvision' else '1'} | "
            f"{fmt_cpu_ratio(record, name) if name != 'torchvision' else '-'} | "
            f"{_fmt_mib(record['peak_memory'][name])} | "
            f"{'%d/%d' % (agree['matched'], max(agree['num_a'], agree['num_b'])) if agree else '-'} |"
        )
    lines.append("")
    lines.append(
        "ours: every speed option on (the config's defaults); ours_plain: all off (`model.fold_frozen_bn=false`, "
        "`model.speed.*=false`); ours-X: ours with option X off, so '/ ours' above 1 is what X saves. Ratios are "
        "medians of the per-turn ratios. What each option does: `benchmarks/OPTIMIZATIONS.md`."
    )
    lines.append("")
    return lines


def _bf16_table(results: Dict[str, Any]) -> List[str]:
    """Markdown lines: fp32 and bf16 of both detectors, timed in the same turns."""
    rows = [("inference", r) for r in results.get("inference", [])] + [
        (f"training, batch {r['batch_size']}", r) for r in results.get("training", []) if not r.get("contention")]
    rows = [(kind, r) for kind, r in rows if "error" not in r and r.get("bf16_ratios")]
    if not rows:
        return []
    labels = list(BF16_PAIRS)
    lines = ["## bf16 autocast beside fp32", ""]
    lines += _table_head("| part | model | ours fp32 | ours bf16 | torchvision fp32 | torchvision bf16 | "
                         + " | ".join(labels) + " |")
    for kind, r in rows:
        s = r["summary"]
        cells = []
        for label in labels:
            wall = r["bf16_ratios"].get(label)
            cpu = r.get("cpu_bf16_ratios", {}).get(label)
            cells.append("-" if wall is None else f"**{wall['median']:.2f}**" + (f" (CPU {cpu['median']:.2f})" if cpu else ""))
        lines.append(
            f"| {kind} | {r['model']} | " + " | ".join(_fmt_time_summary(s[n]) for n in
                                                      ("ours", "ours_bf16", "torchvision", "torchvision_bf16"))
            + " | " + " | ".join(cells) + " |"
        )
    lines.append("")
    agreement = [f"{r['model']} {name}: {a['matched']}/{max(a['num_a'], a['num_b'])}"
                 for _, r in rows for name, a in r.get("agreement_bf16", {}).items()]
    lines.append(
        "bf16: the same models called under `torch.autocast(dtype=torch.bfloat16)` (ours as "
        "`Predictor(precision=\"bf16\")` and `solver.amp` run it: convolutions and matrix products in bf16, RoIAlign, "
        "box decoding and NMS in fp32; in inference ours with its weights stored in bf16 once, as `Predictor` "
        "prepares it). Ratios: medians of the per-turn ratios, wall time (and CPU time). "
        + ("Detections of bf16 equal to the same detector's fp32 ones (same label, IoU >= 0.99; random weights, so "
           "this checks the path, not accuracy; the accuracy cost is measured on the demo, `OPTIMIZATIONS.md`): "
           + "; ".join(agreement) + "." if agreement else "")
    )
    lines.append("")
    return lines


def _contention_table(results: Dict[str, Any]) -> List[str]:
    """Markdown lines: training ours / torchvision with and without a competing load."""
    loaded = [r for r in results.get("training", []) if r.get("contention") and "error" not in r]
    if not loaded:
        return []
    quiet = {(r["depth"], r["batch_size"]): r for r in results.get("training", [])
             if not r.get("contention") and "error" not in r}
    lines = ["## Training under contention", ""]
    lines += _table_head("| model | batch | busy processes | ours | torchvision | ours / torchvision | (CPU time) | "
                         "same without the load (this run) | (CPU time) | ours with torch's threads / tv | "
                         "ours / tv with our trainer's threads |")
    for r in loaded:
        q = quiet.get((r["depth"], r["batch_size"]))
        q_ratio = q["ratio_vs_torchvision"]["ours"]["median"] if q else None
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['contention']} | {_fmt_time_summary(r['summary']['ours'])} | "
            f"{_fmt_time_summary(r['summary']['torchvision'])} | {_versus_torchvision(r)} | "
            f"{'-' if q_ratio is None else '%.2f' % q_ratio} | {fmt_cpu_ratio(q, 'ours') if q else '-'} | "
            f"{fmt_pair(r, 'ours_torch_threads', 'torchvision')} | {fmt_pair(r, 'ours', 'torchvision_trainer_threads')} |"
        )
    lines.append("")
    lines.append(
        "The training comparison (fp32) with `--contention` busy processes (`while True: pass`, one thread each) "
        "running the whole time: what another job on a shared machine does. torchvision's steps run with torch's "
        "thread count; ours with the count our trainer gives it (`cpu_threads=0`: no more threads than the cores "
        "other processes leave free, `detectron_res/engine/threads.py`; `--fixed-threads` turns that off). "
        "Threads per call of ours / of torchvision_trainer_threads: " + "; ".join(
            f"{r['model']}: {r.get('ours_threads', {}).get('ours', '-')} / "
            f"{r.get('ours_threads', {}).get('torchvision_trainer_threads', '-')}" for r in loaded)
        + ". Why: `benchmarks/OPTIMIZATIONS.md`, \"Training under contention\"."
    )
    lines.append("")
    return lines


def _machine_lines(results: Dict[str, Any]) -> List[str]:
    """Markdown lines: the machine table, the matmul rates and the settings both detectors ran with."""
    info = results["machine"]
    cuda = info["device"].startswith("cuda")
    lines: List[str] = []
    lines.append("## Machine")
    lines.append("")
    lines += _table_head("| | |")
    rows = [
        ("date", results["date"]),
        ("device", info.get("gpu", info["cpu"]) + (f" (CUDA {info.get('cuda')}, cuDNN {info.get('cudnn')})" if cuda else "")),
        ("CPU", f"{info['cpu']}, {info['cpu_count']} logical cores, torch threads {info['torch_threads']}"),
        ("CPU vector ISA", _fmt_isa(info.get("cpu_isa"))),
        ("versions", f"Python {info['python']}, torch {info['torch']}, torchvision {info['torchvision']}"),
        ("platform", info["platform"]),
        ("precisions", ("fp32 and bf16 autocast" if results["bf16"] else "fp32") + f" ({results['bf16_reason']})" + (
            f"; fp32 convolutions in TF32: {info.get('cudnn_tf32')}, cudnn.benchmark on" if cuda else "")),
        ("load average at start / end", f"{results['load_start']} / {results['load_end']}"),
        ("wall time of the run", f"{results['wall_s']:.0f} s (budget {results['budget_s']:.0f} s)"),
    ]
    for name, value in rows:
        lines.append(f"| {name} | {value} |")
    mm = results.get("matmul", {})
    for key, record in mm.items():
        lines.append(
            f"| dense matmul {record['dtype']} {record['size']}x{record['size']} | "
            f"{record['median_flops'] / 1e9:.1f} GFLOP/s median, {record['best_flops'] / 1e9:.1f} best |"
        )
    lines.append("")
    spec = results["spec"]
    h, w = results["image_size"]
    lines.append(
        f"Settings (both detectors): one {h}x{w} RGB image (shorter side {spec['min_size']}, max {spec['max_size']}), "
        f"RPN {spec['pre_nms_topk']} -> {spec['num_proposals']} proposals (NMS 0.7), RoIAlign 14x14 (aligned=False, "
        f"adaptive sampling) then res5 + average pool, {spec['num_classes']} classes, score > 0.05, NMS 0.3, 100 "
        f"detections; training: {spec['pre_nms_topk_train']} -> {spec['post_nms_topk_train']} proposals, "
        f"{spec['rois_per_image_train']} RoIs per image, SGD. ResNet layout: torchvision v1.5, FrozenBN. Weights: "
        "random (FrozenBN with random statistics), copied into torchvision's model key by key. "
        "'ours' = our detector with the config's speed options (`model.fold_frozen_bn`, `model.speed.*`, all on), "
        "in inference after `prepare_for_inference()` (FrozenBN folded, channels-last weights), in training as "
        "`tools/train_net.py` runs it. Times: median (min-max, n timed calls), the detectors called in turns; on the CPU the first call of each "
        "is one of the n (it also measures peak memory; first calls are no slower there, after one untimed "
        "inference call of ours per model depth), on CUDA it is an untimed warm-up."
    )
    lines.append("")
    return lines


def _inference_lines(results: Dict[str, Any]) -> List[str]:
    """Markdown lines: the inference table (fp32) and the inference ablation."""
    inf = results.get("inference", [])
    if not inf:
        return []
    lines: List[str] = []
    lines.append("## Inference latency (one image)")
    lines.append("")
    lines += _table_head(
        "| model | ours | torchvision | ours / torchvision | (CPU time) | ours_plain / tv | GMACs | "
        "ours GFLOP/s | % of matmul | peak mem ours / tv | detections equal to tv |"
    )
    for r in inf:
        if "error" in r:
            lines.append(f"| {r.get('model', '?')} | error: {r['error']} |")
            continue
        s = r["summary"]
        macs = r["macs"]["total"]
        rate = 2 * macs / s["ours"]["median_s"]
        peak = r["matmul_interleaved"]["best_flops"]
        agree = r["agreement"]["ours"]
        lines.append(
            f"| {r['model']} | {_fmt_time_summary(s['ours'])} | {_fmt_time_summary(s['torchvision'])} | "
            f"{_versus_torchvision(r)} | {_plain_versus_torchvision(r)} | {macs / 1e9:.1f} | {rate / 1e9:.1f} | "
            f"{100 * rate / peak:.0f}% | {_memory_pair(r)} | "
            f"{agree['matched']}/{max(agree['num_a'], agree['num_b'])} (max score diff {agree['max_score_diff']:.1e}) |"
        )
    lines.append("")
    lines.append(
        "GMACs: multiply-adds of convolutions and linear layers of ours (trunk at the padded size, RPN head, res5 "
        "and predictor on the proposals; res5's first conv on the feature map where it runs there), counted by "
        "`FlopCounterMode`; GFLOP/s = 2 x GMACs / median time; "
        "% of matmul: of the best rate of a dense fp32 matmul (2048^3 on CPU, 8192^3 on CUDA) timed in the "
        "same turns as the detectors: the machine's limit in this run (fp32 rows; bf16 is in its own table). "
        "'Detections equal': detections of ours matched by torchvision's (same label, IoU >= 0.99) over the "
        "larger count. Ratios are medians of the per-turn ratios (range in brackets); '(CPU time)' is the same "
        "ratio of the process's CPU seconds, which other jobs on a shared CPU disturb less than wall time."
    )
    lines.append("")
    for r in inf:
        if "error" not in r and _is_ablation(r):
            lines += _ablation_table(r, f"Ablation of the speed options, inference ({r['model']})")
    return lines


def _training_lines(results: Dict[str, Any]) -> List[str]:
    """Markdown lines: the training table (fp32, no load) and the training ablation."""
    train = results.get("training", [])
    if not train:
        return []
    lines: List[str] = []
    lines.append("## Training iteration (forward, backward, SGD step)")
    lines.append("")
    lines += _table_head(
        "| model | batch | ours | torchvision | ours / torchvision | (CPU time) | images/s ours / tv | "
        "ours_plain / tv | peak mem ours / tv |"
    )
    for r in train:
        if r.get("contention"):
            continue  # its own table below
        if "error" in r:
            lines.append(f"| {r.get('model', '?')} | {r.get('batch_size', '?')} | error: {r['error']} |")
            continue
        s = r["summary"]
        ips = r["images_per_s"]
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {_fmt_time_summary(s['ours'])} | {_fmt_time_summary(s['torchvision'])} | "
            f"{_versus_torchvision(r)} | {ips['ours']:.2f} / {ips['torchvision']:.2f} | "
            f"{_plain_versus_torchvision(r)} | {_memory_pair(r)} |"
        )
    lines.append("")
    lines.append(
        "Each detector samples its own RPN anchors and RoIs (random), so the two do the same amount of work but "
        "not the same arithmetic. Ours' steps run with the thread count our trainer gives them on the CPU (no "
        "more threads than the cores other processes leave free; on a quiet machine torch's count), "
        "torchvision's with torch's count; threads of ours per call: " + "; ".join(
            f"{r['model']} batch {r['batch_size']}: {r['ours_threads']['ours']}" for r in train
            if not r.get("contention") and r.get("ours_threads", {}).get("ours")) + ". "
        "Memory: peak of the first iteration above what was in use before it (CUDA: "
        "allocated tensors; CPU: resident set, which the allocator's reuse of freed memory makes approximate)."
    )
    lines.append("")
    for r in train:
        if "error" not in r and _is_ablation(r) and not r.get("contention"):
            lines += _ablation_table(r, f"Ablation of the speed options, training ({r['model']}, batch {r['batch_size']})")
    return lines


def _scaling_lines(results: Dict[str, Any], png_name: Optional[str]) -> List[str]:
    """Markdown lines: the stage shares of the scaling sweeps (and the plot, if drawn)."""
    scaling = results.get("scaling")
    if not scaling or not scaling.get("rows"):
        return []
    lines: List[str] = []
    lines.append("## Where the time goes: latency of ours by stage")
    lines.append("")
    if png_name:
        lines.append(f"![scaling]({png_name})")
        lines.append("")
    lines += _table_head("| sweep | image | proposals | total | GMACs | " + " | ".join(STAGES) + " |")
    for row in scaling["rows"]:
        st = row["stages_s"]
        lines.append(
            f"| {row['sweep']} | {row['image'][0]}x{row['image'][1]} | {row['rois']} | "
            f"{fmt_s(st['total'])} | "
            f"{row['macs'] / 1e9:.1f} | " + " | ".join(f"{100 * st[k] / st['total']:.0f}%" for k in STAGES) + " |"
        )
    lines.append("")
    lines.append(
        "Best of 1-2 calls per point (CPU: the first call counts; CUDA: after a warm-up call), "
        "R-50-C4 'ours'. trunk = stem..res4; roi_post = box decoding, score threshold, NMS; other = "
        "normalization, padding, mapping boxes back."
    )
    lines.append("")
    return lines


def _profile_lines(results: Dict[str, Any]) -> List[str]:
    """Markdown lines: the operator profile of ours."""
    profile = results.get("profile")
    if not profile or "top" not in profile:
        return []
    lines: List[str] = []
    lines.append(f"## Operator profile of ours ({results['spec_name']}, {profile['clock']} self time)")
    lines.append("")
    lines += _table_head("| operator | self time | share | calls |")
    for e in profile["top"]:
        lines.append(f"| `{e['op']}` | {e['self_ms']:.1f} ms | {e['percent']:.1f}% | {e['calls']} |")
    lines.append("")
    convolutions = profile.get("convolutions")
    if convolutions:
        lines.append(f"Ours in fp32 and bf16, operator self time (medians of {convolutions['calls']} profiled calls "
                     "of each, in turns; convolutions = oneDNN's and torch's convolution operators):")
        lines.append("")
        lines += _table_head("| | fp32 | bf16 | bf16 / fp32 |")
        for name, label in (("convolutions_ms", "convolutions"), ("total_ms", "whole call")):
            ratio = convolutions["ratio_convolutions" if name == "convolutions_ms" else "ratio_total"]
            lines.append(f"| {label} | {convolutions['fp32'][name]:.1f} ms | {convolutions['bf16'][name]:.1f} ms "
                         f"| {ratio:.2f} |")
        lines.append("")
        lines.append("The convolutions' ratio is the floor of the whole call's: the rest (RoIAlign's sparse "
                     "product, NMS, box decoding, elementwise operators) costs about the same in both precisions.")
        lines.append("")
    return lines


def _targets_lines(results: Dict[str, Any]) -> List[str]:
    """Markdown lines: the targets as ``targets.evaluate_targets`` found them."""
    targets = results.get("targets", [])
    if not targets:
        return []
    lines: List[str] = []
    lines.append("## Targets")
    lines.append("")
    lines += _table_head("| target | measured | status |")
    for t in targets:
        lines.append(f"| {t['target']} | {t['measured']} | {t['status']} |")
    lines.append("")
    lines.append("What the speed options save, what did not help, and the gaps: `benchmarks/OPTIMIZATIONS.md`.")
    lines.append("")
    return lines


def _not_measured_lines(results: Dict[str, Any]) -> List[str]:
    """Markdown lines: the parts skipped by the budget and the parts that failed."""
    if not results.get("errors") and not results.get("skipped"):
        return []
    lines: List[str] = []
    lines.append("## Not measured in this run")
    lines.append("")
    for item in results.get("skipped", []):
        lines.append(f"- skipped: {item}")
    for e in results.get("errors", []):
        lines.append(f"- {e['part']}: {e['error']}")
    lines.append("")
    return lines


def write_markdown(results: Dict[str, Any], path: Path, png_name: Optional[str]) -> None:
    """The report of one run, from its results dict alone; ``png_name``: the scaling plot beside it, if drawn."""
    cuda = results["machine"]["device"].startswith("cuda")
    title = "GPU" if cuda else "CPU"
    lines: List[str] = []
    lines.append(f"# Speed: ours vs torchvision Faster R-CNN C4 ({title}{', --quick' if results['quick'] else ''})")
    lines.append("")
    lines.append(
        "Written by `python " + " ".join(results["argv"]) + "` (benchmarks/run.py); every figure below was "
        "measured in that one run. Method, settings and the weight mapping: `benchmarks/run.py`, `benchmarks/detectors.py`."
    )
    lines.append("")
    lines += _machine_lines(results)
    lines += _inference_lines(results)
    lines += _training_lines(results)
    lines += _bf16_table(results)
    lines += _contention_table(results)
    lines += _scaling_lines(results, png_name)
    lines += _profile_lines(results)
    lines += _targets_lines(results)
    lines += _not_measured_lines(results)
    atomic_write_text(path, "\n".join(lines))  # a kill never leaves half a report


def plot_scaling(results: Dict[str, Any], path: Path) -> bool:
    """Stacked stage times against shorter side and proposal count; False if nothing to plot."""
    rows = (results.get("scaling") or {}).get("rows") or []
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, sweep, xlabel in ((axes[0], "size", "shorter side (px), 4:3 image"), (axes[1], "proposals", "proposals")):
        points = [r for r in rows if r["sweep"] == sweep]
        if not points:
            ax.set_visible(False)
            continue
        xs = [r["value"] for r in points]
        bottom = [0.0] * len(points)
        for stage in STAGES:
            ys = [r["stages_s"][stage] for r in points]
            ax.bar([str(x) for x in xs], ys, bottom=bottom, label=stage)
            bottom = [b + y for b, y in zip(bottom, ys)]
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds per image")
        ax.set_title(f"{results['spec_name']} ours, {results['machine'].get('gpu', results['machine']['cpu'])}")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=90, format="png"))
    plt.close(fig)
    return True


def output_paths(results: Dict[str, Any], out_dir: Path) -> Dict[str, Path]:
    """Where a run's ``markdown``, ``json`` and ``png`` go in ``out_dir``: named by its device type."""
    cuda = results["machine"]["device"].startswith("cuda")
    suffix = "cuda" if cuda else "cpu"
    return {
        "markdown": out_dir / ("RESULTS_GPU.md" if cuda else "RESULTS.md"),
        "json": out_dir / f"results_{suffix}.json",
        "png": out_dir / f"scaling_{suffix}.png",
    }


def write_outputs(results: Dict[str, Any], out_dir: Path, *, with_json: bool = True) -> List[Path]:
    """Write the plot, the results JSON (unless ``with_json`` is false) and the Markdown report.

    The plot comes first: a failure to draw it is recorded in ``results["errors"]``
    (and so in the JSON and the report) instead of stopping the rest. Returns the
    paths written.
    """
    paths = output_paths(results, out_dir)
    try:
        has_png = plot_scaling(results, paths["png"])
    except Exception as exc:  # noqa: BLE001 - the numbers matter more than the picture
        results["errors"].append(error_record("plot", exc))
        has_png = False
    written = []
    if with_json:
        atomic_write_text(paths["json"], json.dumps(results, indent=1, default=str))
        written.append(paths["json"])
    write_markdown(results, paths["markdown"], paths["png"].name if has_png else None)
    written.insert(0, paths["markdown"])
    return written + ([paths["png"]] if has_png else [])
