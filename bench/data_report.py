"""The results of ``scripts/bench data``: rounds combined, targets judged, the table.

Apart from the cases so that what a run reports (and which figure must meet
which target) reads in one place, whatever ran to produce it.
"""

from __future__ import annotations

import statistics
from typing import Any

CASES = ["disk_full", "disk_incremental", "disk_incremental_cbt", "tree_full",
         "tree_incremental", "restore_disk", "restore_tree"]
TARGETS = {"disk_full": 3.0, "disk_incremental": 5.0, "disk_incremental_cbt": 20.0,
           "tree_full": 1.5, "tree_incremental": 3.0, "restore_disk": 1.0,
           "restore_tree": 1.0}
RSS_TARGET_MIB = 150.0
ENCRYPTED_RATIO_TARGET = 0.85
LABELS = {"disk_full": "disk, first backup", "disk_incremental": "disk, incremental (hashes)",
          "disk_incremental_cbt": "disk, incremental (CBT/XFS)",
          "tree_full": "tree, first backup", "tree_incremental": "tree, incremental",
          "restore_disk": "disk restore", "restore_tree": "tree restore"}

FIRST_BACKUPS = ("disk_full", "tree_full")


def encryption_ratio(results: dict[str, Any]) -> dict[str, Any]:
    """Encrypted over unencrypted throughput of the first backups (plain time
    over encrypted time, same bytes): per case, and over all of them."""
    cases: dict[str, Any] = {}
    plain_total = encrypted_total = 0.0
    for case in FIRST_BACKUPS:
        entry = results.get(case, {})
        if "plain_s" not in entry:
            continue
        plain, enc = float(entry["plain_s"]), float(entry["encrypted_s"])
        enc_in = float(entry["encrypted_in_process_s"])
        cases[case] = {"plain_s": plain, "encrypted_s": enc, "steps": entry["ratio_steps"],
                       "ratio": round(plain / enc, 3) if enc > 0 else None,
                       "in_process_ratio": round(float(entry["plain_in_process_s"]) / enc_in, 3)
                       if enc_in > 0 else None}
        plain_total += plain
        encrypted_total += enc
    ratio = round(plain_total / encrypted_total, 3) if encrypted_total > 0 else None
    return {"encrypted_vs_plain_first_backup": ratio,
            "encrypted_vs_plain_first_backup_cases": cases}


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several rounds: the median of each side per case (the
    speedup is the ratio of the medians), every round's pair kept beside it;
    the largest peak RSS and stored bytes of the last round."""
    if len(rounds) == 1:
        return rounds[0]
    out = dict(rounds[-1])
    out["rounds"] = len(rounds)
    for name in CASES:
        entries = [r[name] for r in rounds if name in r and "skipped" not in r[name]]
        if not entries:
            continue
        ours = statistics.median(e["ours_s"] for e in entries)
        theirs = [e["restic_s"] for e in entries if e.get("restic_s") is not None]
        restic = statistics.median(theirs) if theirs else None
        merged = dict(entries[-1])
        merged.update({"ours_s": round(ours, 3),
                       "restic_s": round(restic, 3) if restic is not None else None,
                       "speedup": round(restic / ours, 2) if restic and ours > 0 else None,
                       "ours_in_process_s": round(statistics.median(
                           e["ours_in_process_s"] for e in entries), 3),
                       "runs": [[e["ours_s"], e.get("restic_s")] for e in entries]})
        agent = [e["ours_running_s"] for e in entries if "ours_running_s" in e]
        if agent:
            running = statistics.median(agent)
            merged.update({
                "ours_running_s": round(running, 3),
                "speedup_running": round(restic / running, 2) if restic and running > 0
                else None,
                "ours_running_in_process_s": round(statistics.median(
                    e["ours_running_in_process_s"] for e in entries
                    if "ours_running_in_process_s" in e), 3),
                "runs_running": agent})
        merged.pop("first", None)
        out[name] = merged
    out["agent_peak_rss_mib"] = max(r["agent_peak_rss_mib"] for r in rounds)
    out["agent_peak_rss_mib_running"] = max(r.get("agent_peak_rss_mib_running", 0.0)
                                            for r in rounds)
    ratios = [r["encrypted_vs_plain_first_backup"] for r in rounds
              if r.get("encrypted_vs_plain_first_backup") is not None]
    if ratios:
        out["encrypted_vs_plain_first_backup"] = round(statistics.median(ratios), 3)
        out["encrypted_vs_plain_first_backup_runs"] = ratios
    return out


def targets(results: dict[str, Any], with_restic: bool) -> dict[str, Any]:
    """Which targets pass; ``pass`` is None where a case did not run (no
    restic, or no XFS) so a skip never reads as a pass or a fail."""
    out: dict[str, Any] = {}
    for name, want in TARGETS.items():
        entry = results.get(name, {})
        got = entry.get("speedup")
        running = entry.get("speedup_running")
        out[name] = {"target": f">= {want:g}x", "value": got,
                     "pass": None if got is None else got >= want,
                     "value_running": running,
                     "pass_running": None if running is None else running >= want}
        if "skipped" in entry:
            out[name]["skipped"] = entry["skipped"]
    sb = results.get("stored_bytes", {})
    out["stored_bytes"] = {"target": "ours <= restic", "value": sb,
                           "pass": (sb.get("ours", 0) <= sb["restic"]) if with_restic
                           and sb.get("restic") is not None else None}
    rss = results.get("agent_peak_rss_mib", 0.0)
    running_rss = results.get("agent_peak_rss_mib_running") or None
    out["agent_peak_rss_mib"] = {"target": f"<= {RSS_TARGET_MIB:g} MiB", "value": rss,
                                 "pass": rss <= RSS_TARGET_MIB, "value_running": running_rss,
                                 "pass_running": None if running_rss is None
                                 else running_rss <= RSS_TARGET_MIB}
    ratio = results.get("encrypted_vs_plain_first_backup")
    if ratio is not None:
        out["encrypted_vs_plain_first_backup"] = {
            "target": f">= {ENCRYPTED_RATIO_TARGET:g}", "value": ratio,
            "pass": ratio >= ENCRYPTED_RATIO_TARGET}
    return out


def table(results: dict[str, Any]) -> str:
    rows = ["| case | ours: new process | ours: running agent | restic | speedup "
            "(new process / running agent) | target | pass |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    mark = {True: "yes", False: "NO", None: "-"}

    def seconds(value: Any) -> str:
        return f"{value:.2f} s" if value is not None else "-"

    def times(value: Any) -> str:
        return f"{value:.2f}x" if value else "-"

    for name in CASES:
        e, t = results.get(name), results["targets"].get(name, {})
        if e is None:
            continue
        if "skipped" in e:
            rows.append(f"| {LABELS[name]} | skipped: {e['skipped']} | | | | | - |")
            continue
        rows.append(f"| {LABELS[name]} | {seconds(e['ours_s'])} | "
                    f"{seconds(e.get('ours_running_s'))} | {seconds(e.get('restic_s'))} | "
                    f"{times(e.get('speedup'))} / {times(e.get('speedup_running'))} | "
                    f"{t.get('target', '')} | {mark[t.get('pass')]} / "
                    f"{mark[t.get('pass_running')]} |")
    sb, t = results.get("stored_bytes", {}), results["targets"]
    if sb:
        restic = f"{sb['restic'] / 1e6:.0f} MB" if sb.get("restic") is not None else "-"
        rows.append(f"| stored bytes | {sb['ours'] / 1e6:.0f} MB | | {restic} | | "
                    f"ours <= restic | {mark[t['stored_bytes']['pass']]} |")
    rss = t["agent_peak_rss_mib"]
    running_rss = f"{rss['value_running']:.0f} MiB" if rss.get("value_running") else "-"
    rows.append(f"| agent peak RSS | {results['agent_peak_rss_mib']:.0f} MiB | {running_rss} "
                f"| | | <= 150 MiB | {mark[rss['pass']]} / {mark[rss.get('pass_running')]} |")
    if "encrypted_vs_plain_first_backup" in t:
        e = t["encrypted_vs_plain_first_backup"]
        rows.append(f"| encrypted / plain first-backup throughput | {e['value']:.2f} | | | | "
                    f"{e['target']} | {mark[e['pass']]} |")
    return "\n".join(rows)
