"""Targets of the benchmark suite, and its JSON, markdown and PNG reports.

:func:`judge` attaches to a record the target it is held to (``target``, a
readable string, or ``None``) and whether it met it (``passed``: ``True``,
``False``, or ``None`` without a target). The writers take the suite's
``environment`` dict and its records. matplotlib is imported only by
:func:`write_plot`, which draws on its Agg canvas, so measuring needs no
plotting library.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from collections.abc import Sequence
from typing import NamedTuple

TIME_KINDS = ("step", "amortised", "mask_update", "compile")
# State that does not scale with the params (step counters, PRNG key data)
# which the memory target allows on top of its bytes per prunable weight.
SCALAR_ALLOWANCE_BYTES = 64


class Target(NamedTuple):
  """A bound a record must meet.

  Attributes:
    label: the bound, as the reports print it.
    met: ``record -> bool``.
    ratio_max: the largest ``ratio`` allowed, for a bound on the ratio.
  """

  label: str
  met: Callable[[dict], bool]
  ratio_max: float | None = None


def _ratio_at_most(bound: float) -> Target:
  return Target(f"ratio <= {bound:.2f}", lambda record: record["ratio"] <= bound,
                bound)


def _bytes_per_prunable_param_at_most(bound: float) -> Target:
  def met(record: dict) -> bool:
    allowed = bound * record["prunable_params"] + SCALAR_ALLOWANCE_BYTES
    return record["added_bytes"] <= allowed

  return Target(
      f"<= {bound:g} B/prunable param (+{SCALAR_ALLOWANCE_BYTES} B scalars)",
      met,
  )


# The targets: bounds on pruned / plain, and on the state magnitude adds.
STEP_RATIO_MAX = {"magnitude": 1.02, "magnitude_packed": 1.02,
                  "flipout": 1.05, "flipout_noise0": 1.05, "l0": 1.10}
AMORTISED_RATIO_MAX = 1.05
MASK_UPDATING_METHODS = ("magnitude", "magnitude_packed", "saliency",
                         "snip_it", "flipout", "flipout_noise0")
MASK_UPDATE_RATIO_MAX = 1.25
MASK_UPDATE_TARGET_MODELS = ("mlp4m", "mlp26m", "mlp100m")
MAGNITUDE_ADDED_BYTES_PER_PRUNABLE_PARAM_MAX = 1.0
COMPILE_RATIO_MAX = 1.5


def target_of(record: dict) -> Target | None:
  """The target set for ``record``'s kind, method and model, if any."""
  kind, method = record["kind"], record["method"]
  if kind == "step" and method in STEP_RATIO_MAX:
    return _ratio_at_most(STEP_RATIO_MAX[method])
  if kind == "amortised" and method in MASK_UPDATING_METHODS:
    return _ratio_at_most(AMORTISED_RATIO_MAX)
  if kind == "mask_update" and record["model"] in MASK_UPDATE_TARGET_MODELS:
    return _ratio_at_most(MASK_UPDATE_RATIO_MAX)
  if kind == "compile":
    return _ratio_at_most(COMPILE_RATIO_MAX)
  if kind == "memory" and method == "magnitude":
    return _bytes_per_prunable_param_at_most(
        MAGNITUDE_ADDED_BYTES_PER_PRUNABLE_PARAM_MAX)
  return None


def judge(record: dict) -> dict:
  """``record`` with its ``target`` label, ``target_ratio_max`` and ``passed``."""
  target = target_of(record)
  return {
      **record,
      "target": None if target is None else target.label,
      "target_ratio_max": None if target is None else target.ratio_max,
      "passed": None if target is None else bool(target.met(record)),
  }


def write_json(path: str, environment: dict, records: Sequence[dict],
               suite: dict | None = None) -> None:
  """Writes ``{"environment": ..., "suite": ..., "records": [...]}``."""
  with open(path, "w") as f:
    json.dump({"environment": environment, "suite": suite or {},
               "records": list(records)}, f, indent=2)
    f.write("\n")


def _milliseconds(seconds: float | None) -> str:
  return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def _verdict(record: dict) -> str:
  return {True: "pass", False: "MISS", None: ""}[record["passed"]]


def _ratio_cell(record: dict) -> str:
  cell = f"{record['ratio']:.3f}"
  if "ratio_quartiles" in record:
    low, high = record["ratio_quartiles"]
    cell += f" ({low:.2f}-{high:.2f})"
  return cell


def _time_row(record: dict) -> str:
  steps = record.get("steps", "")
  cells = [
      record["kind"], record["model"], record["method"],
      f"{record['params']:,}", str(record["batch"]), str(steps),
      _milliseconds(record["plain_median_s"]),
      _milliseconds(record["pruned_median_s"]), _ratio_cell(record),
      record["target"] or "", _verdict(record),
  ]
  return "| " + " | ".join(cells) + " |"


def _memory_row(record: dict) -> str:
  cells = [
      record["model"], record["method"], f"{record['params']:,}",
      f"{record['prunable_params']:,}", f"{record['params_bytes']:,}",
      f"{record['added_bytes']:,}",
      f"{record['added_bytes_per_prunable_param']:.4f}",
      f"{record['added_bytes_per_param']:.4f}", f"{record['ratio']:.3f}",
      record["target"] or "", _verdict(record),
  ]
  return "| " + " | ".join(cells) + " |"


def _table(header: Sequence[str], rows: Sequence[str]) -> list[str]:
  return ["| " + " | ".join(header) + " |",
          "|" + "|".join(" --- " for _ in header) + "|", *rows]


def _environment_lines(environment: dict) -> list[str]:
  return [f"- {key}: {value}" for key, value in environment.items()]


def markdown(environment: dict, records: Sequence[dict]) -> str:
  """The reports as markdown: one table row per record, and a legend."""
  timed = [r for r in records if r["kind"] in TIME_KINDS]
  memory = [r for r in records if r["kind"] == "memory"]
  lines = ["# jaxprune benchmarks", "", *_environment_lines(environment), ""]
  if timed:
    lines += [
        "Times in ms: medians of the timed steps; for compile rows, the "
        "median of a few trace + lower + compile runs of each step, "
        "alternated. ratio = pruned over plain adam, with its quartiles "
        "over the alternating blocks.",
        "",
        *_table(("kind", "model", "method", "params", "batch", "steps",
                 "plain ms", "pruned ms", "ratio", "target", "met"),
                [_time_row(r) for r in timed]),
        "",
    ]
  if memory:
    lines += [
        "Training state (params + optimizer state) that pruning adds to "
        "plain adam.",
        "",
        *_table(("model", "method", "params", "prunable", "params B",
                 "added B", "added B/prunable", "added B/param",
                 "added/params B", "target", "met"),
                [_memory_row(r) for r in memory]),
        "",
    ]
  descriptions = {r["method"]: r["description"] for r in records
                  if r["kind"] != "mask_update"}
  mask_update = [r["description"] for r in records if r["kind"] == "mask_update"]
  if descriptions or mask_update:
    lines += ["Methods:", ""]
    lines += [f"- `{name}`: {text}" for name, text in descriptions.items()]
    if mask_update:
      lines.append(f"- mask_update rows: {mask_update[0]}")
    lines.append("")
  return "\n".join(lines)


def write_markdown(path: str, environment: dict, records: Sequence[dict]) -> None:
  with open(path, "w") as f:
    f.write(markdown(environment, records))


def _bar_panel(axis, records: Sequence[dict], title: str) -> None:
  labels = [f"{r['model']}:{r['method']}" for r in records]
  ratios = [r["ratio"] for r in records]
  colours = ["tab:red" if r["passed"] is False else "tab:blue" for r in records]
  axis.barh(range(len(records)), ratios, height=0.6, color=colours)
  axis.set_yticks(range(len(records)), labels, fontsize=7)
  axis.invert_yaxis()
  axis.axvline(1.0, color="black", linewidth=0.8)
  for i, record in enumerate(records):
    bound = record["target_ratio_max"]
    if bound is not None:
      axis.plot([bound, bound], [i - 0.4, i + 0.4], color="tab:green")
  axis.set_xscale("log" if max(ratios) / min(ratios) > 20 else "linear")
  axis.set_title(title, fontsize=9)
  axis.set_xlabel("pruned / plain", fontsize=8)


def _mask_update_panel(axis, records: Sequence[dict]) -> None:
  ordered = sorted(records, key=lambda r: r["params"])
  axis.plot([r["params"] for r in ordered], [r["ratio"] for r in ordered],
            marker="o")
  axis.axhline(MASK_UPDATE_RATIO_MAX, color="tab:green", linestyle="--",
               label=f"target {MASK_UPDATE_RATIO_MAX}")
  axis.set_xscale("log")
  axis.set_xlabel("parameters", fontsize=8)
  axis.set_ylabel("mask-update step / dense step", fontsize=8)
  axis.set_title("mask_update (global ranking, batch 32)", fontsize=9)
  axis.legend(fontsize=7)


def _memory_panel(axis, records: Sequence[dict]) -> None:
  labels = [f"{r['model']}:{r['method']}" for r in records]
  axis.barh(range(len(records)),
            [r["added_bytes_per_prunable_param"] for r in records], height=0.6)
  axis.set_yticks(range(len(records)), labels, fontsize=7)
  axis.invert_yaxis()
  axis.axvline(1.0, color="tab:green", linestyle="--")
  axis.set_title("memory: added bytes per prunable param", fontsize=9)


def write_plot(path: str, records: Sequence[dict]) -> None:
  """A PNG with one panel per kind of record: bars, or a line over size.

  Drawn on matplotlib's Agg canvas directly, leaving pyplot's backend and
  figures alone.
  """
  # pylint: disable=import-outside-toplevel
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  present = {r["kind"] for r in records}
  kinds = [k for k in (*TIME_KINDS, "memory") if k in present]
  if not kinds:
    raise ValueError("no records to plot")
  heights = [max(2.0, 0.22 * sum(r["kind"] == k for r in records) + 1.0)
             for k in kinds]
  figure = Figure(figsize=(8, sum(heights)))
  FigureCanvasAgg(figure)
  axes = figure.subplots(len(kinds), 1, squeeze=False,
                         gridspec_kw={"height_ratios": heights})
  for axis, kind in zip(axes[:, 0], kinds):
    chosen = [r for r in records if r["kind"] == kind]
    if kind == "mask_update":
      _mask_update_panel(axis, chosen)
    elif kind == "memory":
      _memory_panel(axis, chosen)
    else:
      has_targets = any(r["target"] for r in chosen)
      _bar_panel(axis, chosen,
                 kind + (" (green: target; red: missed)" if has_targets else ""))
  figure.tight_layout()
  figure.savefig(path, dpi=110)

