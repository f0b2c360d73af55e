"""Tables and plots shared by run.py (CPU) and gpu_throughput.py."""

from __future__ import annotations

import os

ELIGIBLE = 0.99  # a peer is "best" only among those solving at least 99% of the batch
TARGET_RATIO = 2.0


def best(rows, ours: bool):
    """The fastest row among ours or among the peers that solve >= ELIGIBLE of the batch
    (if none does, among the most successful): a fast but wrong solver cannot win."""
    cands = [r for r in rows if r["ours"] == ours and "error" not in r]
    if not cands:
        return None
    good = [r for r in cands if r["ok"] >= ELIGIBLE]
    if not good:
        # Ours: the fastest (the target is marked missed anyway); peers: the most successful.
        top = max(r["ok"] for r in cands)
        good = cands if ours else [r for r in cands if r["ok"] == top]
    return max(good, key=lambda r: r["throughput"])


def ratio_table(rows) -> list[dict]:
    groups = {}
    for r in rows:
        if r["section"] == "throughput":
            groups.setdefault((r["workload"], r["dtype"], r["B"]), []).append(r)
    out = []
    for (workload, dtype, batch), grp in groups.items():
        ours, peer = best(grp, True), best(grp, False)
        if ours and peer:
            out.append(
                {
                    "workload": workload,
                    "dtype": dtype,
                    "B": batch,
                    "ours": ours,
                    "peer": peer,
                    "ratio": ours["throughput"] / peer["throughput"],
                }
            )
    return out


def spread(r) -> str:
    """How many timed repeats, and (max - min) / median of their times."""
    times = r.get("times") or []
    if len(times) < 2:
        return f"{len(times)}"
    times = sorted(times)
    return f"{len(times)}, {(times[-1] - times[0]) / times[len(times) // 2]:.0%}"


def cell_nit(r):
    nfev = f" / {r['nfev_mean']:.1f}" if r.get("nfev_mean") is not None else " / -"
    return f"{r['nit_mean']:.1f} (max {r['nit_max']}){nfev}"


def fmt_load(load):
    return "n/a" if load is None else ", ".join(f"{v:.1f}" for v in load)


def header_lines(meta: dict, settings: str) -> list[str]:
    """Title, date, machine, load, versions and the settings paragraph."""
    L = []
    L.append(meta["title"] + "\n")
    L.append(f"- Date: {meta['date']}  ")
    L.append(f"- Command: `{meta['command']}` ({meta['wall_s'] / 60:.1f} min)  ")
    m = meta["machine"]
    L.append(
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['device']}; {m['platform']}, "
        f"Python {m['python']}  "
    )
    L.append(
        f"- Load average at start / end: {fmt_load(meta['load_start'])} / "
        f"{fmt_load(meta['load_end'])} (other jobs shared the machine when this was "
        "well above 0; the ratios were measured side by side and are the robust part)  "
    )
    L.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + "\n")
    L.append(settings + "\n")

    return L


def met(t: dict) -> str:
    if t["ours"]["ok"] < ELIGIBLE:
        return f"**no** (ours solves {t['ours']['ok']:.1%})"
    return "yes" if t["ratio"] >= TARGET_RATIO else "**no**"


def targets_lines(ratios: list[dict], rows: list[dict], fixed: list[str]) -> list[str]:
    """The ratio table. "Best of ours" picks the fastest of several jaxopt_dict rows, which
    flatters it under timing noise; the ``fixed`` rows (chosen before the run) do not."""
    L = []
    L.append("## Targets: vmapped throughput, ours vs the best peer (measured side by side)\n")
    L.append(
        f"Best peer = the fastest peer solving >= {ELIGIBLE:.0%} of the batch. "
        f"Target: ratio >= {TARGET_RATIO:g}. The best of our {{vmap, minimize_batch}} x "
        "{method, lanes} rows is a maximum over noisy timings, so the ratios of "
        + " and ".join(f"`{f}`" for f in fixed)
        + " (fixed before the run) are given too.\n"
    )
    L.append(
        "| workload | dtype | B | best of ours | problems/s (ok) | best peer | problems/s (ok)"
        " | ratio (best of ours) | "
        + " | ".join(f"ratio: {f.replace('jaxopt_dict ', '')}" for f in fixed)
        + " | target met |"
    )
    L.append("|---|---|---:|---|---:|---|---:|---:|" + "---:|" * len(fixed) + "---|")
    for t in ratios:
        o, p = t["ours"], t["peer"]
        cells = []
        for name in fixed:
            row = next(
                (
                    r
                    for r in rows
                    if r.get("solver") == name
                    and r.get("section") == "throughput"
                    and (r["workload"], r["dtype"], r["B"]) == (t["workload"], t["dtype"], t["B"])
                    and "error" not in r
                ),
                None,
            )
            cells.append(f"{row['throughput'] / p['throughput']:.2f}x" if row else "-")
        L.append(
            f"| {t['workload']} | {t['dtype']} | {t['B']:,} | {o['solver']} | "
            f"{o['throughput']:,.0f} ({o['ok']:.1%}) | {p['solver']} | "
            f"{p['throughput']:,.0f} ({p['ok']:.1%}) | {t['ratio']:.2f}x | "
            + " | ".join(cells)
            + f" | {met(t)} |"
        )
    return L


def throughput_lines(rows: list[dict], ratios: list[dict], titles: dict) -> list[str]:
    """One table per dtype (``titles`` maps dtype to the section title)."""
    L = []
    for dtype, title in titles.items():
        sel = [r for r in rows if r["section"] == "throughput" and r["dtype"] == dtype]
        if not sel:
            continue
        L.append(f"\n## {title}\n")
        L.append(
            "| workload | B | solver | problems/s | vs best peer | ok | own flag | "
            "nit (max) / nfev | compile s | problems timed | repeats, spread |"
        )
        L.append("|---|---:|---|---:|---:|---:|---:|---|---:|---:|---|")
        for r in sel:
            peer = next(
                (
                    t["peer"]
                    for t in ratios
                    if t["workload"] == r["workload"] and t["dtype"] == dtype and t["B"] == r["B"]
                ),
                None,
            )
            if "error" in r:
                L.append(
                    f"| {r['workload']} | {r['B']:,} | {r['solver']} | {r['error']} | | | | | | | |"
                )
                continue
            vs = f"{r['throughput'] / peer['throughput']:.2f}x" if peer else ""
            promoted = "" if r["out_dtype"] == dtype else f" (returns {r['out_dtype']})"
            name = f"**{r['solver']}**" if r["ours"] else r["solver"]
            L.append(
                f"| {r['workload']} | {r['B']:,} | {name}{promoted} | "
                f"{r['throughput']:,.0f} | {vs} | {r['ok']:.1%} | {r['own_ok']:.1%} | "
                f"{cell_nit(r)} | {r['compile_s']:.1f} | {r['problems_timed']:,} | "
                f"{spread(r)} |"
            )

    return L


def error_lines(rows: list[dict]) -> list[str]:
    L = []
    errors = [r for r in rows if "error" in r]
    if errors:
        L.append("\n## Rows that did not run\n")
        for r in errors:
            where = r.get("workload", "")
            extra = f" {r['dtype']} B={r['B']}" if "B" in r else ""
            L.append(f"- {r['solver']} ({r['section']} {where}{extra}): `{r['error']}`")
    return L


def plot_throughput(rows: list[dict], directory: str, suffix: str) -> list[str]:
    """Horizontal bars per (workload, B), one figure per dtype; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for dtype in ("float64", "float32"):
        sel = [
            r
            for r in rows
            if r["section"] == "throughput" and r["dtype"] == dtype and "error" not in r
        ]
        workloads = sorted({r["workload"] for r in sel})
        batches = sorted({r["B"] for r in sel})
        if not sel:
            continue
        tallest = max(
            len([r for r in sel if (r["workload"], r["B"]) == (w, b)])
            for w in workloads
            for b in batches
        )
        fig, axes = plt.subplots(
            len(workloads),
            len(batches),
            figsize=(7.5 * len(batches), (0.3 * tallest + 1.3) * len(workloads) + 0.6),
            squeeze=False,
        )
        for i, workload in enumerate(workloads):
            for j, batch in enumerate(batches):
                _bars(axes[i][j], sel, workload, batch, dtype)
        fig.suptitle(
            f"vmapped throughput, {dtype} (red: jaxopt_dict; hatched: < 99% solved)", fontsize=12
        )
        fig.tight_layout()
        path = os.path.join(directory, f"throughput_{dtype}{suffix}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    return paths


def _bars(ax, sel, workload, batch, dtype):
    """One panel: the rows of (workload, B) as horizontal bars, slowest at the bottom."""
    grp = sorted(
        [r for r in sel if (r["workload"], r["B"]) == (workload, batch)],
        key=lambda r: r["throughput"],
    )
    if not grp:
        ax.set_visible(False)
        return
    vals = [r["throughput"] for r in grp]
    colors = ["#d62728" if r["ours"] else "#1f77b4" for r in grp]
    bars = ax.barh(range(len(grp)), vals, color=colors)
    for bar, r in zip(bars, grp):
        if r["ok"] < ELIGIBLE:
            bar.set_hatch("//")
            bar.set_alpha(0.55)
        ax.text(
            bar.get_width() * 1.05,
            bar.get_y() + bar.get_height() / 2,
            f"{r['throughput']:,.0f}/s  ok {r['ok']:.0%}",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(range(len(grp)), [r["solver"] for r in grp], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(min(vals) / 2, max(vals) * 12)
    ax.set_xlabel("problems per second (log scale)")
    ax.set_title(f"{workload}, B = {batch:,}, {dtype}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
