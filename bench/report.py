"""The benchmark report: goal checks, the console table, PNG charts and ``BENCHMARKS.md``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# --- goals ------------------------------------------------------------------------------------


def _check(
    name: str, value: float, goal: str, passed: bool | None, unit: str = "x"
) -> dict[str, Any]:
    return {"name": name, "value": value, "goal": goal, "passed": passed, "unit": unit}


#: The end-to-end goals: enqueue -> Fin call at these rates (jobs/s), webhook -> stream at this
#: event rate (events/s; a ``start`` turn makes 2 events).
E2E_CALL_RATES = (100.0, 200.0)
E2E_EVENTS_RATE = 100.0


def checks(results: dict[str, Any], *, quick: bool) -> list[dict[str, Any]]:
    """Every ratio goal of the issues; ``passed`` is ``None`` in quick mode (not judged)."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float, goal: str, ok: bool, unit: str = "x") -> None:
        out.append(_check(name, value, goal, None if quick or math.isnan(value) else ok, unit))

    if "ingest" in results:
        r = results["ingest"]["ratios"]
        add(
            "ingest: fin-relay / ceiling (req/s)",
            r["vs_ceiling"],
            ">= 0.6x",
            r["vs_ceiling"] >= 0.6,
        )
        add(
            "ingest: fin-relay p99 / ceiling p99",
            r["p99_vs_ceiling"],
            "<= 2x",
            r["p99_vs_ceiling"] <= 2.0,
        )
        add("ingest: fin-relay / bare endpoint", r["vs_bare"], ">= 2x", r["vs_bare"] >= 2.0)
        add(
            "ingest: fin-relay / FastAPI + delay()",
            r["vs_fastapi_delay"],
            ">= 10x",
            r["vs_fastapi_delay"] >= 10.0,
        )
    if "worker" in results:
        w = results["worker"]
        for key, label in (
            ("live", "sending while consuming"),
            ("backlog", "pre-built backlog"),
        ):
            mode = w[key]
            ratio = mode["median_ratio"]
            add(
                f"worker, {label}: fin-relay / bare jobs/s "
                f"(c64, median of {len(mode['rounds'])} round(s))",
                ratio,
                ">= 1.0x",
                ratio >= 1.0,
            )
        rss = w["rss"]["ratio"]
        add("worker peak RSS (c64): fin-relay / bare", rss, "<= 1.05x", rss <= 1.05)
    if "rate" in results:
        relay = results["rate"]["fin_relay"]
        add(
            "rate limit: fin-relay utilisation of Q",
            relay["utilisation"],
            ">= 95%",
            relay["utilisation"] >= 0.95,
        )
        add(
            "rate limit: fin-relay 429s",
            float(relay["rate_limited"]),
            "0",
            relay["rate_limited"] == 0,
        )
    if "e2e" in results:
        phases = results["e2e"]["phases"]
        for phase in phases:
            if phase["rate"] not in E2E_CALL_RATES:
                continue
            s = phase["enqueue_to_call_ms"]
            rate = f"{phase['rate']:.0f} jobs/s"
            add(f"e2e: enqueue -> Fin call p50 at {rate}", s["p50"], "<= 3 ms", s["p50"] <= 3, "ms")
            add(
                f"e2e: enqueue -> Fin call p99 at {rate}",
                s["p99"],
                "<= 25 ms",
                s["p99"] <= 25,
                "ms",
            )
        events = events_phase(phases)
        if events is not None:
            p99 = events["webhook_to_stream_ms"]["p99"]
            add(
                f"e2e: webhook answered -> event on stream p99 at {events['events_rate']:.0f} "
                "events/s",
                p99,
                "<= 25 ms",
                p99 <= 25,
                "ms",
            )
    if "producer" in results:
        p = results["producer"]["ratio"]
        add("producer: start() / send_task", p, ">= 0.9x", p >= 0.9)
    if "simulator" in results:
        s = results["simulator"]["ratio"]
        add("simulator: /fin/start / bare 50 ms app", s, ">= 0.5x", s >= 0.5)
    return out


def events_phase(phases: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The end-to-end phase whose event rate is closest to ``E2E_EVENTS_RATE``."""
    if not phases:
        return None
    return min(phases, key=lambda p: abs(p["events_rate"] - E2E_EVENTS_RATE))


def _verdict(check: dict[str, Any]) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a (quick)"}[check["passed"]]


# --- figures --------------------------------------------------------------------------------


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(scenario, variant, figure, ratio) for every measured variant."""
    out: list[tuple[str, str, str, str]] = []
    if "ingest" in results:
        ing = results["ingest"]
        ceiling = ing["results"]["ceiling"]
        for name, r in ing["results"].items():
            out.append(
                (
                    "ingest",
                    ing["labels"][name],
                    f"{r['rps']:,.0f} req/s, p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, "
                    f"non-2xx {r['non2xx']:.0f}",
                    f"{r['rps'] / ceiling['rps']:.2f}x ceiling",
                )
            )
    if "worker" in results:
        w = results["worker"]
        variants = [
            ("fin-relay worker, threads c64, sending while consuming", "live", "fin_relay"),
            ("bare Celery task + httpx, threads c64, sending while consuming", "live", "bare"),
            ("fin-relay worker, threads c64, pre-built backlog", "backlog", "fin_relay"),
            ("bare Celery task + httpx, threads c64, pre-built backlog", "backlog", "bare"),
            (f"bare task, default prefork c{w['cpus']}, pre-built backlog", "backlog", "prefork"),
        ]
        for label, mode, key in variants:
            relay = w[mode]["results"]["fin_relay"]
            r = w["results"]["prefork_default"] if key == "prefork" else w[mode]["results"][key]
            peak = r.get("rss_peak_mib", r["rss_mib"])
            out.append(
                (
                    "worker",
                    label,
                    f"{r['jobs_s']:,.0f} calls/s, {r['cpu_ms_per_job']:.2f} ms CPU/job, "
                    f"peak {peak:.0f} MiB",
                    f"{relay['jobs_s'] / r['jobs_s']:.2f}x (fin-relay / this)",
                )
            )
        out.append(("worker", "theory: 64 / 50 ms", f"{w['theory_jobs_s']:,.0f} calls/s", ""))
    if "rate" in results:
        rl = results["rate"]
        for key, label in (
            ("fin_relay", "fin-relay fleet (2 workers)"),
            ("naive", "naive Celery (rate_limit + autoretry_for)"),
        ):
            r = rl[key]
            out.append(
                (
                    "rate limit",
                    label,
                    f"{r['ok']} calls OK, {r['rate_limited']} x 429, "
                    f"{r.get('other_errors', 0)} other errors, "
                    f"{r.get('complete_windows', 0)} full windows",
                    f"{r['utilisation'] * 100:.1f}% of Q",
                )
            )
    if "e2e" in results:
        for phase in results["e2e"]["phases"]:
            for key, label in (
                ("enqueue_to_call_ms", f"enqueue -> Fin call ({phase['rate']:.0f} jobs/s)"),
                (
                    "webhook_to_stream_ms",
                    f"webhook answered -> event on stream ({phase['events_rate']:.0f} events/s)",
                ),
            ):
                out.append(("e2e", label, latency_figures(phase[key]), ""))
    if "producer" in results:
        p = results["producer"]
        for key, label in (("send_task", "Celery send_task"), ("producer", "Producer.start")):
            out.append(
                (
                    "producer",
                    label,
                    f"{p['median'][key]:,.0f} jobs/s",
                    f"{p['median'][key] / p['median']['send_task']:.2f}x send_task",
                )
            )
    if "simulator" in results:
        s = results["simulator"]
        for key, label in (
            ("bare", "bare ASGI app, sleep 50 ms"),
            ("simulator", "simulator /fin/start, 50 ms, webhooks on"),
        ):
            r = s[key]
            out.append(
                (
                    "simulator",
                    label,
                    f"{r['rps']:,.0f} req/s, p99 {r['p99']}",
                    f"{r['rps'] / s['bare']['rps']:.2f}x bare",
                )
            )
    return out


def latency_figures(s: dict[str, float]) -> str:
    """``p50 .. ms, p90 .. ms, p99 .. ms, max .. ms (n=..)`` of one latency summary."""
    return (
        f"p50 {s['p50']:.1f} ms, p90 {s['p90']:.1f} ms, p99 {s['p99']:.1f} ms, "
        f"max {s['max']:.1f} ms (n={s['n']:.0f})"
    )


def goal_rounds(results: dict[str, Any]) -> list[str]:
    """Every round behind the throughput and memory goals, one line each (under the goals)."""
    lines: list[str] = []
    if "worker" in results:
        w = results["worker"]
        for key, label in (
            ("live", "sending while consuming (plain Celery client, worker ready first)"),
            ("backlog", "pre-built backlog (jobs enqueued before the worker starts)"),
        ):
            mode = w[key]
            rounds = "; ".join(
                f"round {i + 1}: {r['fin_relay']:,.0f} / {r['bare']:,.0f} = {r['ratio']:.2f}x"
                + (
                    f" (sends took {r['fin_relay_send_s']:.1f} / {r['bare_send_s']:.1f} s)"
                    if "fin_relay_send_s" in r
                    else ""
                )
                for i, r in enumerate(mode["rounds"])
            )
            short = [
                f"round {i + 1}: {r.get('fin_relay_ok', w['jobs']):.0f} / "
                f"{r.get('bare_ok', w['jobs']):.0f} calls answered 200"
                for i, r in enumerate(mode["rounds"])
                if min(r.get("fin_relay_ok", w["jobs"]), r.get("bare_ok", w["jobs"])) < w["jobs"]
            ]
            lines.append(
                f"Worker c64, {label}, {w['jobs']} jobs per run, fin-relay / bare jobs/s: "
                f"{rounds}; median {mode['median_ratio']:.2f}x"
                + (f" (not every call succeeded: {'; '.join(short)})." if short else ".")
            )
        rss = w["rss"]
        per_round = ", ".join(
            f"{a:.0f} / {b:.0f}"
            for a, b in zip(rss["fin_relay_per_round"], rss["bare_per_round"], strict=True)
        )
        lines.append(
            f"Worker c64 peak RSS (fin-relay / bare, MiB, the kernel's high-water mark of the "
            f"worker process at the end of each run; live rounds, then backlog rounds): "
            f"{per_round}; peak {rss['fin_relay_peak_mib']:.0f} / {rss['bare_peak_mib']:.0f} "
            f"= {rss['ratio']:.2f}x."
        )
    if "e2e" in results:
        e = results["e2e"]
        for phase in e["phases"]:
            lines.append(
                f"End-to-end at {phase['rate']:.0f} jobs/s ({phase['jobs']} jobs in "
                f"{phase['duration_s']} s): enqueue -> Fin call "
                f"{latency_figures(phase['enqueue_to_call_ms'])}; webhook answered -> event on "
                f"stream at {phase['events_rate']:.0f} events/s "
                f"{latency_figures(phase['webhook_to_stream_ms'])}."
                + (f" {e2e_cpu_figures(phase['cpu'])}" if "cpu" in phase else "")
            )
    return lines


def e2e_cpu_figures(cpu: dict[str, Any]) -> str:
    """One e2e phase's CPU: each process's share of one core, the machine's total, and what the
    worker's CPU per job allows one core to run."""
    shares = ", ".join(f"{label} {pct:.0f}%" for label, pct in cpu["percent_of_core"].items())
    per_job = cpu["worker_ms_per_job"]
    ceiling = f"{1000.0 / per_job:.0f}" if per_job > 0 else "?"
    return (
        f"CPU in % of one core: {shares}; all together {cpu['total_percent']:.0f}% of the "
        f"machine's {cpu['cores'] * 100}%. Worker CPU per job (its call and 2 events, 3 tasks): "
        f"{per_job:.2f} ms, so one core runs at most {ceiling} such jobs/s."
    )


def _md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in body]
    return "\n".join(lines)


def table(results: dict[str, Any], checks_: list[dict[str, Any]], run: dict[str, Any]) -> str:
    """The console table: figures, then goals with pass/fail, then RSS."""
    parts = [
        _md_table(["scenario", "variant", "figures", "ratio"], [list(r) for r in rows(results)])
    ]
    parts.append(
        _md_table(
            ["goal", "measured", "target", "result"],
            [[c["name"], _fmt(c), c["goal"], _verdict(c)] for c in checks_],
        )
    )
    rounds = goal_rounds(results)
    if rounds:
        parts.append("\n".join(f"- {line}" for line in rounds))
    if run["rss_mib"]:
        parts.append(
            _md_table(
                ["process", "peak RSS"], [[k, f"{v:.0f} MiB"] for k, v in run["rss_mib"].items()]
            )
        )
    for name, why in {**run["skipped"], **run["errors"]}.items():
        parts.append(f"{name}: NOT MEASURED: {why}")
    return "\n\n".join(parts)


def _fmt(check: dict[str, Any]) -> str:
    if check.get("unit") == "ms":
        return f"{check['value']:.1f} ms"
    if "utilisation" in check["name"]:
        return f"{check['value'] * 100:.1f}%"
    if "429" in check["name"]:
        return f"{check['value']:.0f}"
    return f"{check['value']:.2f}x"


# --- charts ---------------------------------------------------------------------------------


def write_charts(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """PNG charts for the scenarios present; returns {name: path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    charts: dict[str, Path] = {}
    if "worker" in results:
        fig, ax = plt.subplots(figsize=(7, 4))
        sweep = results["worker"]["sweep"]
        for key, label in (("fin_relay", "fin-relay worker"), ("bare", "bare Celery + httpx")):
            xs = sorted(int(c) for c in sweep[key])
            ax.plot(xs, [sweep[key][c] for c in xs], marker="o", label=label)
        xs = sorted(int(c) for c in sweep["fin_relay"])
        ax.plot(xs, [c / 0.05 for c in xs], linestyle=":", color="grey", label="theory (c / 50 ms)")
        prefork = results["worker"]["results"]["prefork_default"]["jobs_s"]
        ax.axhline(
            prefork,
            color="tab:red",
            linestyle="--",
            label=f"default prefork c{results['worker']['cpus']}",
        )
        ax.set(
            xlabel="concurrency (threads pool, one process)",
            ylabel="Fin calls/s",
            title="Worker throughput vs concurrency (simulator at 50 ms)",
        )
        ax.set_ylim(0, max(max(sweep["bare"].values()), max(sweep["fin_relay"].values())) * 1.4)
        ax.legend()
        charts["throughput"] = _save(fig, out_dir / "worker_throughput.png")
    if "ingest" in results or "e2e" in results:
        charts["latency"] = _latency_chart(results, out_dir, plt)
    if "rate" in results:
        charts["rate"] = _rate_chart(results["rate"], out_dir, plt)
    if "ingest" in results:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ing = results["ingest"]["results"]
        names = list(ing)
        ax.barh(
            [results["ingest"]["labels"][n] for n in names],
            [ing[n]["rps"] for n in names],
            color=["grey", "tab:orange", "tab:red", "tab:blue"],
        )
        ax.set(xlabel="requests/s (wrk -t1 -c64, 1 KiB signed bodies)", title="Webhook ingest")
        ax.invert_yaxis()
        charts["ingest"] = _save(fig, out_dir / "ingest_throughput.png")
    return charts


def _latency_chart(results: dict[str, Any], out_dir: Path, plt: Any) -> Path:
    panels = [k for k in ("ingest", "e2e") if k in results]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        if key == "ingest":
            ing = results["ingest"]
            names = list(ing["results"])
            xs = range(len(names))
            for offset, pct in ((-0.2, "p50"), (0.2, "p99")):
                ax.bar(
                    [x + offset for x in xs],
                    [ing["results"][n][pct] for n in names],
                    0.4,
                    label=pct,
                )
            ax.set_xticks(list(xs), [n.replace("_", "\n") for n in names])
            ax.set(ylabel="ms", title="Ingest latency under wrk -c64")
            ax.set_yscale("log")
        else:
            phases = results["e2e"]["phases"]
            groups = [(f"call\n{p['rate']:.0f}/s", p["enqueue_to_call_ms"]) for p in phases] + [
                (f"event\n{p['events_rate']:.0f} ev/s", p["webhook_to_stream_ms"]) for p in phases
            ]
            for offset, pct in ((-0.25, "p50"), (0.0, "p90"), (0.25, "p99")):
                ax.bar(
                    [i + offset for i in range(len(groups))],
                    [g[1][pct] for g in groups],
                    0.25,
                    label=pct,
                )
            ax.set_xticks(list(range(len(groups))), [g[0] for g in groups])
            ax.set(ylabel="ms", title="End-to-end latency (call: enqueue -> Fin call)")
            ax.set_yscale("log")
        ax.legend()
    return _save(fig, out_dir / "latency_percentiles.png")


def _rate_chart(rate: dict[str, Any], out_dir: Path, plt: Any) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4))
    for key, label, color, shift in (
        ("fin_relay", "fin-relay fleet", "tab:blue", -1.5),
        ("naive", "naive Celery", "tab:orange", 1.5),
    ):
        r = rate[key]
        xs = [w["start_s"] + 5 + shift for w in r["windows"]]
        ax.bar(xs, [w["ok"] for w in r["windows"]], 3, color=color, label=f"{label}: 200s")
        marked = [
            (x, w["rate_limited"])
            for x, w in zip(xs, r["windows"], strict=True)
            if w["rate_limited"]
        ]
        if marked:
            ax.scatter(
                [m[0] for m in marked],
                [m[1] for m in marked],
                marker="x",
                color="red",
                zorder=3,
                s=60,
                label=f"{label}: 429s",
            )
            for x, n in marked:
                ax.annotate(
                    str(n),
                    (x, n),
                    textcoords="offset points",
                    xytext=(0, 5),
                    ha="center",
                    color="red",
                    fontsize=8,
                )
    ax.axhline(
        rate["window_limit"],
        color="grey",
        linestyle="--",
        label=f"quota: {rate['window_limit']} per 10 s window",
    )
    ax.set(
        xlabel="seconds since the workers started (10 s windows)",
        ylabel="calls per window",
        title=f"Rate-limit utilisation, Q = {rate['quota_per_minute']}/min",
    )
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, out_dir / "rate_limit_utilisation.png")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
