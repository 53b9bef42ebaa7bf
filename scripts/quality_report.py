"""Turn the outputs of scripts/quality_bench.sh into docs/QUALITY.md and the README section
"## Quality against an exact teacher" (plots: examples/quality_plots.rs). Standard library only.
Usage: quality_report.py OUT_DIR QUALITY_MD README STEPS STALE_STEPS EVAL_N"""
import json
import os
import re
import sys

out, md_path, readme, steps, stale_steps, eval_n = sys.argv[1:7]
PROBLEMS = {
    "video": "procedural video mixture of `configs/toy_dmd.yaml` (latent [4,4,2,2], 8 modes, "
             "8 classes: one mode per class, prompts cycle over the classes)",
    "ring": "8-mode ring, radius 3, std 0.15, embedded in the same latent (one class: the "
            "generator must spread one prompt over 8 modes)",
    "imbalanced": "the ring with weights spanning 10x (geometric), one class",
}
STUDENTS = [("dmd", 1), ("dmd", 4), ("sid", 1), ("sid", 4)]
MASS_BAR = 0.02


def jsonl(p):
    try:
        with open(p) as f:
            return [json.loads(l) for l in f if l.strip()]
    except (OSError, ValueError):
        return []


def wall(name):
    try:
        return float(open(f"{out}/{name}.time").read().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def verdict(d, t50, t4):
    """The bar of issue 9; returns (meets, list of misses)."""
    miss = []
    if d["coverage"] < 1.0:
        miss.append(f"coverage {d['coverage']:.3f}")
    if d["mass_err_max"] > MASS_BAR:
        miss.append(f"mass err {d['mass_err_max']:.3f}")
    if t50 and d["sliced_w2"] > 1.2 * t50["sliced_w2"]:
        miss.append(f"SW2 {d['sliced_w2'] / t50['sliced_w2']:.2f}x T50")
    if t4 and d["sliced_w2"] > t4["sliced_w2"] / 3:
        miss.append(f"SW2 {d['sliced_w2'] / t4['sliced_w2']:.2f}x T4")
    return not miss, miss


def fmt_row(name, d, note="", short=False):
    if not d:
        return f"| {name} | " + " | ".join(["n/a"] * (5 if short else 8)) + f" | {note} |"
    cells = [f"{d['coverage']:.3f}", f"{d['mass_err_max']:.3f}", f"{d['sliced_w2']:.3f}",
             f"{d['std_ratio']:.2f}", f"{d['precision']:.3f}"]
    if not short:
        cells += [f"{d['cross_entropy']:.1f}", f"{d['frame_consistency']:.3f}",
                  f"{d['sliced_w2_floor']:.3f}"]
    return f"| {name} | " + " | ".join(cells) + f" | {note} |"


results = {}   # (prob, label) -> (report, verdict)
tables_full, tables_short = [], []
for prob, desc in PROBLEMS.items():
    teacher = {d["steps"]: d for d in jsonl(f"{out}/teacher_{prob}.jsonl")}
    t50, t4 = teacher.get(50), teacher.get(4)
    full = [f"### {prob}", "", desc + ".", "",
            "| sampler | coverage | mass err max | sliced-W2 | std ratio | precision | "
            "cross-entropy | frame consist. | SW2 floor | bar / notes |", "|" + "---|" * 10]
    short = [f"**{prob}** ({desc.split(' (')[0]})", "",
             "| sampler | coverage | mass err | SW2 | std ratio | precision | bar |",
             "|" + "---|" * 7]
    for s in (50, 4):
        d = teacher.get(s)
        full.append(fmt_row(f"teacher Euler {s} steps", d, "reference"))
        short.append(fmt_row(f"teacher Euler {s}", d, "reference", short=True))
    first = None
    for loss, s in STUDENTS:
        name = f"{prob}_{loss}_{s}"
        ev = jsonl(f"{out}/{name}/eval.jsonl")
        label = f"{'DMD' if loss == 'dmd' else 'SiD'} {s}-step"
        if not ev:
            full.append(fmt_row(label, None, f"run failed (see {name}.log)"))
            short.append(fmt_row(label, None, "run failed", short=True))
            continue
        first = first or ev[0]
        last = ev[-1]
        ok, miss = verdict(last, t50, t4)
        results[(prob, label)] = (last, ok, miss)
        w = wall(name)
        note = ("**meets**" if ok else "misses: " + ", ".join(miss))
        full.append(fmt_row(label, last, note + (f" ({w:.0f} s)" if w else "")))
        short.append(fmt_row(label, last, "**meets**" if ok else "miss: " + ", ".join(miss),
                             short=True))
    if first:
        full.append(fmt_row("untrained generator", first, "version 0 (for scale)"))
    tables_full += full + [""]
    tables_short += short + [""]

# ---- staleness ----
stale_rows, stale = [], {}
for k in [0, 1, 2, 4, 8]:
    ev = jsonl(f"{out}/stale_{k}/eval.jsonl")
    met = jsonl(f"{out}/stale_{k}/metrics.jsonl")
    w = wall(f"stale_{k}")
    last_step = max((m.get("step", -1) for m in met), default=-1) + 1
    if ev:
        stale[k] = (ev[-1]["sliced_w2"], w, last_step)
        stale_rows.append(f"| {k} | {last_step} | {w or float('nan'):.1f} | "
                          f"{ev[-1]['generator_version']} | {ev[-1]['sliced_w2']:.3f} | "
                          f"{ev[-1]['std_ratio']:.2f} | {ev[-1]['coverage']:.3f} | "
                          f"{ev[-1]['mass_err_max']:.3f} |")
    else:
        stale_rows.append(f"| {k} | {last_step if last_step > 0 else 'n/a'} | "
                          f"{w or float('nan'):.1f} | n/a | n/a | n/a | n/a | n/a |")
stale_hdr = ["| max_staleness K | steps done | wall s | last version | sliced-W2 | std ratio | "
             "coverage | mass err |", "|---|---|---|---|---|---|---|---|"]
rec = ""
if 0 in stale:
    base = stale[0][0]
    good = [k for k, (w2, _, st) in stale.items()
            if st >= int(stale_steps) and w2 <= 1.1 * base]
    fast = min(good, key=lambda k: stale[k][1] or 1e9) if good else 0
    rec = (f"Recommendation from this run: max_staleness = {fast} (the fastest K whose final "
           f"sliced-W2 is within 10 % of K = 0 after the same {stale_steps} steps).")

# ---- summary of the bar ----
met = sorted(f"{p} {l}" for (p, l), (_, ok, _) in results.items() if ok)
missed = {(p, l): m for (p, l), (_, ok, m) in results.items() if not ok}
cov_miss = sorted(f"{p} {l}" for (p, l), m in missed.items() if any("coverage" in x for x in m))
mass_miss = sorted(f"{p} {l}" for (p, l), m in missed.items() if any("mass" in x for x in m))
t4_infeasible = []
for prob in PROBLEMS:
    t = {d["steps"]: d for d in jsonl(f"{out}/teacher_{prob}.jsonl")}
    if 4 in t and t[4]["sliced_w2"] / 3 < t[4]["sliced_w2_floor"]:
        t4_infeasible.append(f"{prob} (T4/3 = {t[4]['sliced_w2'] / 3:.3f} < floor "
                             f"{t[4]['sliced_w2_floor']:.3f})")
summary = [
    f"- Meet the whole bar: {', '.join(met) if met else 'none'}.",
    f"- Miss mode coverage: {', '.join(cov_miss) if cov_miss else 'none'}.",
    f"- Miss the per-mode mass error ≤ {MASS_BAR}: {', '.join(mass_miss) if mass_miss else 'none'}.",
]
if t4_infeasible:
    summary.append("- The ⅓-of-the-4-step-teacher criterion is below the exact-vs-exact noise floor "
                   "of sliced-W2 at this sample size on " + ", ".join(t4_infeasible) +
                   ": no sampler, not even exact samples, can be measured to meet it there.")

settings = (f"Students: {steps} steps (critic updates; the generator updates every 5th) of "
            f"`configs/toy_dmd.yaml` / `toy_sid.yaml` (SiD α = 1), tiny block-causal Wan generator and "
            f"critic, CPU (2 shared cores, one run at a time under `nice -n 5`); metrics on "
            f"{eval_n} samples of the final generator (the live generator weights, not the EMA), "
            f"against exact samples of the same size. Teacher rows: Euler on the exact "
            f"probability-flow ODE (shift-5 grid, `examples/teacher_eval.rs`). The bar (issue 9): "
            f"coverage 1, mass error ≤ {MASS_BAR}, sliced-W2 ≤ 1.2× the 50-step teacher (T50) and "
            f"≤ ⅓ of the 4-step teacher (T4).")

EXPLAIN = [
    "- **Reverse KL (DMD) is mode seeking.** DMD's generator gradient is the score difference "
    "s_fake − s_real at noised generator samples: a mode the generator never visits produces no "
    "gradient pulling mass into it, and mass is only moved between modes through the heavily "
    "noised timesteps where the modes overlap. On one-class problems (ring, imbalanced) a student "
    "therefore keeps the split of mass its first updates happened to find; light modes of the "
    "imbalanced mixture are the first to be under-weighted. On `video`, each class is one "
    "Gaussian, so mode seeking cannot drop modes there — misses there are the within-mode "
    "spread and the per-class mean, i.e. undertraining.",
    "- **SiD** (Fisher divergence, α = 1) weights the same score difference by the generator's "
    "own residual and is less mode seeking in principle, but in this budget it has the same "
    "critic lag: its critic has seen only "
    f"{steps} updates when the run ends.",
    "- **Teacher rows are not the exact distribution either**: Euler's last step lands on "
    "E[x0|x] and shrinks the within-mode spread (std ratio ≈ 0.09 at 4 steps, ≈ 0.75 at 50), "
    "so T50 is itself above the noise floor and T4 is only a little worse in sliced-W2 (the "
    "modes are right, the spread is not). A student that gets the spread right can beat T4 "
    "while its mass split is still wrong, which is why the mass-error bar is the sharper test.",
    "- **Sample noise**: with N evaluation samples the mass error of exact samples is about "
    f"√(π(1−π)/N) per mode ({(0.125 * 0.875 / max(int(eval_n), 1)) ** 0.5:.4f} for π = 1/8), "
    "so the 0.02 bar is resolvable; sliced-W2 has the floor shown in the full tables.",
]

md = ["# Distillation quality benchmark", "",
      "Generated by `scripts/quality_bench.sh` (do not edit by hand; it also writes the README "
      "section \"Quality against an exact teacher\"). Metrics: `src/eval/` (all against the exact "
      "GMM truth). Ring and imbalanced mixtures are embedded in the video latent along a fixed "
      "orthonormal 2-plane per frame (`zoo::embed_in_latent`), so the same Wan generator trains "
      "on them and every metric stays exact.", "", settings, "", "## Tables", ""] + tables_full
md += ["## The bar", ""] + summary + ["", "## Why methods miss", ""] + EXPLAIN
md += ["", "![students](img/quality_students.png)", "",
       f"## Staleness (schedule async, DMD 4-step, video, {stale_steps} steps)", ""]
md += stale_hdr + stale_rows + ["", rec, "", "![staleness](img/quality_staleness.png)", ""]
with open(md_path, "w") as f:
    f.write("\n".join(md) + "\n")

sec = ["## Quality against an exact teacher", "",
       "The toy teachers are exact Gaussian mixtures, so a student can be measured against the "
       "truth (`src/eval/`: mode coverage, per-mode mass error, sliced-W2 against exact samples, "
       "within-mode std ratio, precision). `scripts/quality_bench.sh` runs the whole benchmark "
       "(the teacher's own Euler sampler at 50 and 4 steps, DMD and SiD students at 1 and 4 "
       "steps, three mixtures, and an `async` staleness sweep) and regenerates this section, "
       "[docs/QUALITY.md](docs/QUALITY.md) (all metrics) and the plots.", "", settings, ""]
sec += tables_short + ["What the bar says:", ""] + summary + ["", "Why:", ""] + EXPLAIN
sec += ["", "![students](docs/img/quality_students.png)", "",
        f"Staleness (`schedule: async`, DMD 4-step on `video`, {stale_steps} steps):", ""]
sec += stale_hdr + stale_rows + ["", rec, "", "![staleness](docs/img/quality_staleness.png)", ""]
text = open(readme).read()
pat = re.compile(r"^## Quality against an exact teacher\n.*?(?=^## )", re.S | re.M)
if not pat.search(text):
    sys.exit(f"{readme}: no section '## Quality against an exact teacher' followed by another")
text = pat.sub(lambda _: "\n".join(sec) + "\n", text, count=1)
with open(readme, "w") as f:
    f.write(text)
