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

# ---- ablations (imbalanced, DMD 4-step) ----
ABL = [("imbalanced_dmd_4", f"baseline ({steps} steps)"),
       ("abl_imbalanced_dmd_4_long", f"3x the steps ({3 * int(steps)})"),
       ("abl_imbalanced_dmd_4_ttur10", "dfake_gen_update_ratio 10 (critic 2x as often)"),
       ("abl_imbalanced_dmd_4_lrc3", "critic lr 3e-2 (3x)")]
imb_t = {d["steps"]: d for d in jsonl(f"{out}/teacher_imbalanced.jsonl")}
abl_rows = ["| imbalanced, DMD 4-step | coverage | mass err | SW2 | std ratio | frame consist. | bar |",
            "|---|---|---|---|---|---|---|"]
for name, label in ABL:
    ev = jsonl(f"{out}/{name}/eval.jsonl")
    if not ev:
        abl_rows.append(f"| {label} | n/a | n/a | n/a | n/a | n/a | not run |")
        continue
    d = ev[-1]
    ok, miss = verdict(d, imb_t.get(50), imb_t.get(4))
    abl_rows.append(f"| {label} | {d['coverage']:.3f} | {d['mass_err_max']:.3f} | "
                    f"{d['sliced_w2']:.3f} | {d['std_ratio']:.2f} | {d['frame_consistency']:.3f} | "
                    + ("**meets**" if ok else "miss: " + ", ".join(miss)) + " |")

# ---- α (SiD, imbalanced) and guidance (DMD, video) ----
ABL2 = [("imbalanced", "imbalanced_sid_4", "SiD 4-step, α = 1 (baseline)"),
        ("imbalanced", "abl_imbalanced_sid_4_a05", "SiD 4-step, α = 0.5"),
        ("imbalanced", "abl_imbalanced_sid_4_a12", "SiD 4-step, α = 1.2"),
        ("imbalanced", "abl_imbalanced_sid_4_a15", "SiD 4-step, α = 1.5"),
        ("imbalanced", "abl_imbalanced_sid_4_a12lrc3", "SiD 4-step, α = 1.2, critic lr 3e-2 (3x)"),
        ("video", "video_dmd_4", "DMD 4-step, guidance 0 (baseline)"),
        ("video", "abl_video_dmd_4_g05", "DMD 4-step, guidance 0.5 (CFG w = 1.5)"),
        ("video", "abl_video_dmd_4_g2", "DMD 4-step, guidance 2 (CFG w = 3)")]
abl2_rows = ["| mixture | setting | coverage | mass err | SW2 | std ratio | bar |",
             "|---|---|---|---|---|---|---|"]
abl2 = {}
for prob, name, label in ABL2:
    ev = jsonl(f"{out}/{name}/eval.jsonl")
    if not ev:
        abl2_rows.append(f"| {prob} | {label} | n/a | n/a | n/a | n/a | not run |")
        continue
    d = abl2[name] = ev[-1]
    t = {x["steps"]: x for x in jsonl(f"{out}/teacher_{prob}.jsonl")}
    ok, miss = verdict(d, t.get(50), t.get(4))
    abl2_rows.append(f"| {prob} | {label} | {d['coverage']:.3f} | {d['mass_err_max']:.3f} | "
                     f"{d['sliced_w2']:.3f} | {d['std_ratio']:.2f} | "
                     + ("**meets**" if ok else "miss: " + ", ".join(miss)) + " |")


def abl2_txt():
    parts = []
    for base, names in (("imbalanced_sid_4", ("abl_imbalanced_sid_4_a05", "abl_imbalanced_sid_4_a12",
                                              "abl_imbalanced_sid_4_a15",
                                              "abl_imbalanced_sid_4_a12lrc3")),
                        ("video_dmd_4", ("abl_video_dmd_4_g05", "abl_video_dmd_4_g2"))):
        a = abl2.get(base)
        for n in names:
            b = abl2.get(n)
            label = next(l for _, m, l in ABL2 if m == n)
            if a and b:
                parts.append(f"{label}: SW2 {a['sliced_w2']:.3f} → {b['sliced_w2']:.3f}, std ratio "
                             f"{a['std_ratio']:.2f} → {b['std_ratio']:.2f}, mass err "
                             f"{a['mass_err_max']:.3f} → {b['mass_err_max']:.3f}, coverage "
                             f"{a['coverage']:.3f} → {b['coverage']:.3f}")
            else:
                parts.append(f"{label}: not run")
    cands = [(abl2.get(n), l) for n, l in (("imbalanced_sid_4", "α = 1"),
                                          ("abl_imbalanced_sid_4_a05", "α = 0.5"),
                                          ("abl_imbalanced_sid_4_a12", "α = 1.2"),
                                          ("abl_imbalanced_sid_4_a15", "α = 1.5"),
                                          ("abl_imbalanced_sid_4_a12lrc3",
                                           "α = 1.2 with the 3x critic lr"))]
    cands = [c for c in cands if c[0]]
    t = ""
    if cands:
        best = min(cands, key=lambda x: (-x[0]["coverage"], x[0]["mass_err_max"]))
        t = (f" Of the SiD settings, {best[1]} keeps the most modes (coverage "
             f"{best[0]['coverage']:.3f}, mass error {best[0]['mass_err_max']:.3f}, but SW2 "
             f"{best[0]['sliced_w2']:.3f} and std ratio {best[0]['std_ratio']:.2f}); one seed each, "
             "so a difference of one mode is within run-to-run variation.")
    return "; ".join(parts) + "." + t + (" Guidance changes the target: the guided teacher is not "
                                         "the conditional truth the metrics measure against, so a "
                                         "guided student is expected to move away from it (here it "
                                         "does, in sliced-W2 and spread).")


# ---- DMD's regression loss (imbalanced) ----
REG = [("imbalanced_dmd_1", "DMD 1-step (baseline)"),
       ("abl_imbalanced_dmd_1_reg025", "DMD 1-step + regression, λ = 0.25 (DMD's value)"),
       ("abl_imbalanced_dmd_1_reg1", "DMD 1-step + regression, λ = 1"),
       ("imbalanced_dmd_4", "DMD 4-step (baseline)"),
       ("abl_imbalanced_dmd_4_reg025", "DMD 4-step + regression, λ = 0.25"),
       ("abl_imbalanced_dmd_1_reg100r1",
        "regression alone (λ = 100, generator every step), 1-step: diagnostic")]
reg_rows = ["| imbalanced | coverage | mass err | SW2 | std ratio | precision | frame consist. | "
            "regression MSE | bar |", "|---|---|---|---|---|---|---|---|---|"]
reg = {}


def reg_mse(name):
    """Mean regression_loss (mean((G(z) − ODE(z))²)) over the last 20 generator updates."""
    v = [r["regression_loss"] for r in jsonl(f"{out}/{name}/metrics.jsonl") if "regression_loss" in r]
    return sum(v[-20:]) / len(v[-20:]) if v else None


for name, label in REG:
    ev = jsonl(f"{out}/{name}/eval.jsonl")
    if not ev:
        reg_rows.append(f"| {label} | " + " | ".join(["n/a"] * 7) + " | not run |")
        continue
    d = reg[name] = ev[-1]
    m = reg_mse(name)
    d["_first_mse"] = next((r["regression_loss"] for r in jsonl(f"{out}/{name}/metrics.jsonl")
                            if "regression_loss" in r), None)
    d["_mse"] = m
    ok, miss = verdict(d, imb_t.get(50), imb_t.get(4))
    reg_rows.append(f"| {label} | {d['coverage']:.3f} | {d['mass_err_max']:.3f} | "
                    f"{d['sliced_w2']:.3f} | {d['std_ratio']:.2f} | {d['precision']:.3f} | "
                    f"{d['frame_consistency']:.3f} | "
                    + ("n/a" if m is None else f"{m:.3f}") + " | "
                    + ("**meets**" if ok else "miss: " + ", ".join(miss)) + " |")


def reg_txt():
    b1, r1, r4, p = (reg.get(n) for n in ("imbalanced_dmd_1", "abl_imbalanced_dmd_1_reg025",
                                          "abl_imbalanced_dmd_4_reg025",
                                          "abl_imbalanced_dmd_1_reg100r1"))
    b4 = reg.get("imbalanced_dmd_4")
    if not (b1 and r1 and r4 and p and b4):
        return "not run."
    t = (f"DMD's regression loss (pipeline `self_forcing_regression`, MSE to the exact teacher's "
         f"ODE output from the generator's own noise, λ = 0.25): 1-step coverage "
         f"{b1['coverage']:.3f} → {r1['coverage']:.3f}, mass err {b1['mass_err_max']:.3f} → "
         f"{r1['mass_err_max']:.3f}; 4-step coverage {b4['coverage']:.3f} → {r4['coverage']:.3f}, "
         f"mass err {b4['mass_err_max']:.3f} → {r4['mass_err_max']:.3f}. ")
    t += (f"The diagnostic row explains why it cannot do more here: even regression alone "
          f"(λ = 100, {steps} generator updates) brings the regression MSE only from "
          f"{p['_first_mse']:.3f} to {p['_mse']:.3f} per element, with std ratio "
          f"{p['std_ratio']:.2f} and precision {p['precision']:.3f}, coverage {p['coverage']:.3f}. "
          "The tiny generator does not fit the teacher's deterministic map z ↦ ODE(z) in this "
          "budget, so the pairs cannot pin its modes. Two structural limits add to it: a "
          "block-causal generator sees only its own block's noise while the bidirectional "
          "teacher's ODE chooses a sample's mode from all frames' noise (the MSE-optimal causal "
          "output averages modes), and a multi-step rollout re-noises with fresh noise between "
          "steps, so its output is not a function of z alone. The excess spread of every student is "
          "therefore at least partly the generator's capacity/optimisation limit at this size, "
          "not only the distribution-matching objective.")
    return t


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
    walls = [w for (_, w, _) in stale.values() if w]
    spread = (max(walls) / min(walls) - 1) * 100 if walls else float("nan")
    w2s = [w2 for (w2, _, _) in stale.values()]
    rec = (f"Measured: final sliced-W2 {min(w2s):.3f}–{max(w2s):.3f} over K (K = 0: {base:.3f}; "
           f"the curves' step-to-step noise is of the same size), wall time "
           f"{min(walls):.1f}–{max(walls):.1f} s ({spread:.0f} % spread). "
           f"The rule \"fastest K whose final SW2 is within 10 % of K = 0\" picks K = {fast}. ")
    others = [w for k, (_, w, _) in stale.items() if k > 0 and w]
    gain = (stale[0][1] / min(others) - 1) * 100 if others and stale[0][1] else 0.0
    rec += f"The fastest K > 0 is {gain:.0f} % faster than K = 0. "
    if gain < 15:
        rec += ("On 2 shared CPU cores the lanes cannot run in parallel, so staleness buys no "
                "wall time here and the quality differences are within noise: this run supports "
                "no default other than the least stale. Recommendation: max_staleness 1 (one "
                "version of overlap; its quality cost here is within the noise) where the lanes run on "
                "separate devices, and measure K = 2–4 there before going higher.")
    else:
        rec += f"Recommendation: max_staleness = {fast}."

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
t4_mass = [f"{p} {d[4]['mass_err_max']:.3f}" for p in PROBLEMS
          for d in [{x["steps"]: x for x in jsonl(f"{out}/teacher_{p}.jsonl")}] if 4 in d]
t4_bad = [x.split()[0] for x in t4_mass if float(x.split()[1]) > MASS_BAR]
summary.append("- For reference, the 4-step teacher's own mass error: " + ", ".join(t4_mass) +
               " (the bar's mass criterion applied to it: " +
               ("misses on " + ", ".join(t4_bad) if t4_bad else "meets everywhere") + ").")
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
            f"≤ ⅓ of the 4-step teacher (T4). Regenerate with `scripts/quality_bench.sh --steps "
            f"{steps} --stale-steps {stale_steps} --eval-n {eval_n}` (about 20 minutes on 2 cores; "
            f"`--report-only` redraws from the runs in `runs/quality_bench`).")

def rng_of(key, probs):
    v = [r[key] for (p, _), (r, _, _) in results.items() if p in probs]
    return (min(v), max(v)) if v else (float("nan"), float("nan"))


std_lo, std_hi = rng_of("std_ratio", PROBLEMS)
prec_lo, prec_hi = rng_of("precision", PROBLEMS)
cov_vr, _ = rng_of("coverage", ("video", "ring"))
m_lo, m_hi = rng_of("mass_err_max", ("ring", "imbalanced"))
mv_lo, mv_hi = rng_of("mass_err_max", ("video",))
fc_lo, fc_hi = rng_of("frame_consistency", ("ring", "imbalanced"))
t50_std = {p: {d["steps"]: d for d in jsonl(f"{out}/teacher_{p}.jsonl")}.get(50, {}).get("std_ratio")
           for p in PROBLEMS}
abl = {n: (jsonl(f"{out}/{n}/eval.jsonl") or [None])[-1] for n, _ in ABL}


def abl_txt(name, label):
    a, b = abl.get("imbalanced_dmd_4"), abl.get(name)
    if not (a and b):
        return f"{label}: not run"
    return (f"{label}: SW2 {a['sliced_w2']:.3f} → {b['sliced_w2']:.3f}, std ratio "
            f"{a['std_ratio']:.2f} → {b['std_ratio']:.2f}, mass err {a['mass_err_max']:.3f} → "
            f"{b['mass_err_max']:.3f}")


def trend(prob):
    """Mean over the students of SW2(last) / SW2(half-way): < 1 still improving, ≈ 1 plateau."""
    r = []
    for loss, st in STUDENTS:
        ev = jsonl(f"{out}/{prob}_{loss}_{st}/eval.jsonl")
        if len(ev) >= 3:
            r.append(ev[-1]["sliced_w2"] / ev[len(ev) // 2]["sliced_w2"])
    return sum(r) / len(r) if r else float("nan")


trends = {p: trend(p) for p in PROBLEMS}
improving = [p for p, t in trends.items() if t < 0.85]
flat = [p for p, t in trends.items() if t >= 0.85]
trend_txt = ("SW2 over the second half of training (last / half-way, mean of the students): " +
             ", ".join(f"{p} {t:.2f}" for p, t in trends.items()) + ". " +
             (f"On {', '.join(improving)} the students are still improving when the run ends "
              "(undertrained). " if improving else "") +
             (f"On {', '.join(flat)} they have plateaued: more steps of the same recipe do not "
              "close the gap (see the ablations); the plateau's cause is not established here "
              "(tiny generator, one token per frame, critic at this learning rate)."
              if flat else ""))

def cm(prob, label):
    r = results.get((prob, label))
    return f"{label} coverage {r[0]['coverage']:.3f} / mass err {r[0]['mass_err_max']:.3f}" if r \
        else f"{label} n/a"


mode_txt = (
    "With one prompt for 8 well-separated modes, DMD's generator gradient is the score "
    "difference s_fake − s_real at noised generator samples, the gradient of the reverse KL "
    "KL(p_G ‖ p_data). A mode the generator does not visit costs it nothing at low noise, and mass "
    "moves between modes only at high-noise timesteps where the modes overlap; so a generator that "
    "drifts towards a few heavy modes is not pulled back. Measured — ring: " +
    "; ".join(cm("ring", l) for l in ("DMD 1-step", "DMD 4-step", "SiD 1-step", "SiD 4-step")) +
    ". Imbalanced (weights 10×): " +
    "; ".join(cm("imbalanced", l) for l in ("DMD 1-step", "DMD 4-step", "SiD 1-step", "SiD 4-step")) +
    ". On equal weights the split is only uneven; with 10× imbalance the pull of the heavy modes "
    "wins and DMD collapses onto few modes, the textbook mode-seeking failure. SiD (Fisher "
    "divergence, α = 1) weights the score difference by the generator's own denoising residual and "
    "keeps more modes, but not all. On `video` each class is a single Gaussian, so mode seeking "
    "cannot misassign mass there (mass error ≈ 0)."
)

def abl_verdict():
    a = abl.get("imbalanced_dmd_4")
    long, rest = abl.get(ABL[1][0]), [abl.get(n) for n, _ in ABL[2:]]
    if not (a and long and all(rest)):
        return ""
    t = []
    if long["mass_err_max"] > a["mass_err_max"]:
        t.append("More training makes the collapse worse, not better: mode seeking is a property "
                 "of the objective, not undertraining.")
    best = min(r["mass_err_max"] for r in rest)
    t.append(("A faster critic (TTUR-style: more critic updates per generator update, which also "
              "halves the generator updates at a fixed step count, or a 3x critic lr) lowers the "
              f"mass error to {best:.3f} but "
              + ("does not restore the lost modes." if max(r["coverage"] for r in rest) < 1
                 else "restores the modes.")))
    t.append("The remedies the literature aims at exactly this are DMD's regression loss on "
             "teacher ODE pairs (next item) and DMD2's GAN term on real data (not implemented).")
    return " ".join(t)


EXPLAIN = [
    f"- **The students' samples are too spread.** "
    f"Every student's within-mode std is {std_lo:.2f}–{std_hi:.2f}× the truth (precision "
    f"{prec_lo:.3f}–{prec_hi:.3f}: almost no sample lies inside the 3σ ball of a mode), while the "
    f"modes themselves are found on `video` and `ring` (coverage ≥ {cov_vr:.3f}; on `video`, mass "
    f"error {mv_lo:.3f}–{mv_hi:.3f}). Sliced-W2 is dominated by that excess spread, which is why no "
    "student reaches 1.2× the 50-step teacher. " + trend_txt,
    "- **Mass split on the one-class mixtures: reverse-KL mode seeking.** " + mode_txt,
    f"- **Frames disagree on the mode (ring/imbalanced frame consistency {fc_lo:.3f}–{fc_hi:.3f}).** "
    "Each frame of an embedded ring sample shows the 2-D point along its own plane; a causal "
    "generator must keep frames 3–4 (second block) on the mode frames 1–2 chose. With the excess "
    "spread, per-frame nearest-mode assignments scatter; this is the temporal-consistency failure "
    "the video mixture was built to expose.",
    "- **Teacher rows are not exact either**: Euler's last step lands on E[x0|x] and shrinks the "
    f"within-mode spread (std ratio at 50 steps: " +
    ", ".join(f"{p} {v:.2f}" for p, v in t50_std.items() if v is not None) +
    "), so T50 sits at or slightly above the noise floor and T4 is only a few times worse in "
    "sliced-W2 (its modes are right, its spread is not).",
    "- **Ablations (imbalanced, DMD 4-step)**: " + "; ".join(abl_txt(n, l) for n, l in ABL[1:]) +
    ". " + abl_verdict(),
    "- **α and guidance**: " + abl2_txt(),
    "- **Regression loss**: " + reg_txt(),
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
       "## Ablations (what the literature suggests for a miss)", ""] + abl_rows + ["",
       "SiD's α and the real score's guidance:", ""] + abl2_rows + ["",
       "DMD's regression loss (`pipeline: self_forcing_regression`, `regression_weight` λ; "
       "regression MSE = mean over the last 20 generator updates):", ""] + reg_rows + ["",
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
        "Ablations on the imbalanced mixture (DMD 4-step):", ""] + abl_rows + ["",
        "SiD's α and the real score's guidance:", ""] + abl2_rows + ["",
        "DMD's regression loss (`pipeline: self_forcing_regression`, `regression_weight` λ):",
        ""] + reg_rows + ["",
        f"Staleness (`schedule: async`, DMD 4-step on `video`, {stale_steps} steps):", ""]
sec += stale_hdr + stale_rows + ["", rec, "", "![staleness](docs/img/quality_staleness.png)", ""]
text = open(readme).read()
pat = re.compile(r"^## Quality against an exact teacher\n.*?(?=^## )", re.S | re.M)
if not pat.search(text):
    sys.exit(f"{readme}: no section '## Quality against an exact teacher' followed by another")
text = pat.sub(lambda _: "\n".join(sec) + "\n", text, count=1)
with open(readme, "w") as f:
    f.write(text)
