"""The "What your data did" section, written from the study's verdicts record (search/records.py):
plain lines for the terminal (status, sweep, ablate), the report and the sweep run's description,
and the contenders of `afina compare --slices`."""

from __future__ import annotations

import math

from afina.attribution.verdicts import Effect
from afina.search import records


def lines(summary: records.Verdicts | dict | None, spec_path: str | None = None) -> list[str]:
    """The "What your data did" section as plain lines, from the study's verdicts record."""
    v = records.parse(records.Verdicts, summary) or records.Verdicts()
    spec_path = spec_path or v.spec_path or "SPEC"
    out = []
    abl, reg, mix = v.ablation, v.regression, v.mixture
    if abl:
        noise = abl["noise"].get(abl["objective"]) or {}
        floor = (
            f"noise floor of {abl['objective']}: sd {noise['sd']:.3g} (n={noise['n']})"
            if noise.get("sd") is not None
            else "no noise floor (1 seed)"
        )
        out.append(
            f"Controlled ablation of trial {abl['best_trial']}'s configuration: {abl['k']} seeds × {abl['steps']} steps, "
            f"{abl['method']}; {floor}. Reproduce: {abl['command']}"
        )
        changes: dict[str, list[dict]] = {}
        for r in abl["rows"]:
            changes.setdefault(r["change"], []).append(r)
        for change, rows in changes.items():
            main = [r for r in rows if r["metric"] == abl["objective"]]
            others = [r for r in rows if r["metric"] != abl["objective"]]
            out.append(f"  {change}: " + " · ".join(_row_text(r) for r in main))
            if others:
                out.append("      other metrics: " + " · ".join(_row_text(r, short=True) for r in others))
        if abl.get("failed"):
            out.append(f"  ({abl['failed']} ablation runs failed; their seeds are left out)")
        unclear = [r for r in abl["rows"] if r["metric"] == abl["objective"] and r["verdict"] == "no clear effect"]
        if unclear:  # the interval shrinks with more pairs (and longer runs separate the arms more)
            out.append(
                f"  Not enough evidence yet (no clear effect is not proof of none): `afina ablate {spec_path} "
                f"--seeds {max(5, 2 * abl['k'])} --steps {4 * abl['steps']}` narrows the interval with more pairs and longer runs."
            )
    if reg and reg.get("effects"):
        out.append(f"Across the sweep's {reg['n']} trials ({reg['method']}; observational, not a controlled test):")
        out += [f"  {key.removeprefix('slices.')}: {_row_text(e)}" for key, e in reg["effects"].items()]
    if mix:
        if mix.get("weights"):
            shown = ", ".join(
                f"{k.removeprefix('slices.')} {v:g} (best trial {mix['at_best_trial'].get(k)})" for k, v in mix["weights"].items()
            )
            out.append(
                f"Predicted best mixture (RegMix; {mix['model']}, n={mix['n']}): {shown}; predicted "
                f"{v.objective or 'objective'} {mix['predicted']:.4g} "
                f"vs {mix['predicted_at_best_trial']:.4g} at the best trial's mixture"
            )
        else:
            out.append(f"Predicted best mixture: too few trials (n={mix['n']}, need {mix['need']})")
    if not abl and (plan := v.plan):
        cost = (
            f"{plan['runs']} runs of {plan['steps']} steps, the compute of about {plan['trials']} trials"
            if plan["steps"]
            else f"{plan['runs']} runs"
        )
        out.append(
            f"Not enough evidence yet for a controlled verdict: `{plan['command']}` decides: it retrains the best configuration "
            f"with each searched slice toggled under paired seeds ({cost})."
        )
    elif not abl and (reg or mix):
        out.append(
            f"Not enough evidence yet for a controlled verdict: `afina ablate {spec_path}` retrains the best configuration "
            "with each searched slice toggled under 3 paired seeds."
        )
    return out


def _row_text(r: dict, short: bool = False) -> str:
    f = {k: r[k] for k in Effect.__dataclass_fields__ if k in r}
    missing = {"delta": math.nan, "lo": -math.inf, "hi": math.inf}  # stored as null in JSON
    e = Effect(**{**f, **{k: v for k, v in missing.items() if f.get(k) is None}})
    if short:
        e.why = ""
    return e.text()


def render(console, summary: records.Verdicts | dict | None, spec_path: str | None = None) -> None:
    """The section in the terminal (status, sweep, ablate); nothing when there is nothing to say."""
    found = lines(summary, spec_path)
    if found:
        from rich.markup import escape

        console.print("[bold]What your data did[/]")
        for line in found:
            console.print(escape(line))


def html_section(summary: records.Verdicts | dict | None, spec_path: str | None = None) -> str:
    import html

    found = lines(summary, spec_path)
    if not found:
        return ""
    return "<h2>What your data did</h2><ul>" + "".join(f"<li>{html.escape(line.strip())}</li>" for line in found) + "</ul>"


def slice_contenders(summary: records.Verdicts | None, baseline_run_id: str | None) -> list[tuple[str, str | None]]:
    """`afina compare --slices`: the base model, the best configuration as found, and each slice toggled (first seed)."""
    abl = (summary and summary.ablation) or {}
    first = str(abl.get("seeds", [""])[0])
    runs = {tuple(k.split("|")): v for k, v in abl.get("runs", {}).items()}
    out: list[tuple[str, str | None]] = [("base", baseline_run_id)]
    if ("reference", first) in runs:
        out.append((f"best config (trial {abl['best_trial']})", runs["reference", first]))
    for (arm, seed), rid in sorted(runs.items()):
        if arm != "reference" and seed == first:
            name, _, value = arm.partition("=")
            slice_name, _, attr = name.partition(".")
            out.append(
                (f"{'with' if value == 'true' else 'without'} {slice_name}" if attr == "include" else f"{slice_name} {attr} {value}", rid)
            )
    return out
