"""The latency lines of a finished run: the export measured again against the latency budget."""
from __future__ import annotations

import logging

import torch

from ..pruning.latency import measure_pair
from ..pruning.latency_verify import within_budget

log = logging.getLogger("jointprune")


def latency_fields(pm, dense_arch) -> dict:
    """pruned.json's latency fields (none without a latency budget). The dense and the extracted
    network are timed interleaved on the latency model's device, batch size and threads; the
    budget counts as missed only when the measured ratio exceeds it by more than the noise (capped:
    `within_budget`, the closed loop's rule too)."""
    lm = getattr(pm, "latency_model", None)
    if pm.latency_budget is None or lm is None or dense_arch is None:
        return {}
    info = lm.info
    opts = pm.latency_opts
    pair = measure_pair(dense_arch, pm.cnn, pm.input_shape, torch.device(info["device"]), info["batch_size"],
                        info["threads"], max(opts.warmup, 1), max(3 * opts.network_repeats, 9))
    predicted = lm(pm.incumbent_kept) / lm.dense if pm.incumbent_kept is not None else 1.0
    met = within_budget(pair["ratio"], pair["noise"], pm.latency_budget)
    fields = {
        "latency_budget": pm.latency_budget,
        "dense_latency_ms": pair["dense_ms"],
        "pruned_latency_ms": pair["pruned_ms"],
        "latency_ratio": pair["ratio"],
        "latency_noise": pair["noise"],
        "latency_model_ratio": float(predicted),
        "latency_budget_met": bool(met),
        "latency_device": info["device"],
        "latency_device_name": info["device_name"],
        "latency_batch_size": info["batch_size"],
        "latency_threads": info["threads"],
        "latency_allocator": info.get("allocator"),
        "latency_table_seconds": info["build_seconds"],
    }
    verify = getattr(pm, "latency_verify", None)
    if verify is not None:  # the closed loop after the agent (callbacks/latency_verify.py)
        fields.update(latency_verify=verify["rounds"], latency_verify_status=verify["status"],
                      latency_verify_kept_round=verify["accepted"],
                      latency_verify_note=verify["sentence"], latency_verify_seconds=verify.get("seconds"))
    if not met:
        log.warning(latency_miss_sentence(fields))
        print(f"[jointprune] WARNING: {latency_miss_sentence(fields)}", flush=True)
    return fields


def latency_miss_sentence(f: dict) -> str:
    return (f"the latency budget was MISSED: the extracted network measures {f['latency_ratio']:.3f} of the dense "
            f"latency on {f['latency_device']} (noise +-{f['latency_noise']:.3f}) against a budget of "
            f"{f['latency_budget']} (the latency model predicted {f['latency_model_ratio']:.3f}); "
            "the tables may be stale or the device was busy: rerun with model.latency.cache: false.")


def latency_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """Rows for the final table (none without a latency budget)."""
    if "latency_budget" not in report:
        return []
    verdict = "met" if report["latency_budget_met"] else "MISSED"
    rows = [(f"latency ms ({report['latency_device']}, batch {report['latency_batch_size']}, "
             f"{report['latency_threads']} thr.)", f"{report['dense_latency_ms']:.2f}",
             f"{report['pruned_latency_ms']:.2f}",
             f"{report['latency_ratio']:.3f} +-{report['latency_noise']:.3f} (budget {report['latency_budget']}: "
             f"{verdict}; model {report['latency_model_ratio']:.3f})")]
    if report.get("latency_verify"):
        kept = report["latency_verify_kept_round"]
        checks = ", ".join(f"{r['measured']:.3f}" + ("*" if i == kept else "") for i, r in enumerate(report["latency_verify"]))
        rows.append(("latency check after the agent", "", "",
                     f"measured {checks} ({report['latency_verify_status']}; * the network kept)"))
    if report.get("latency_verify_note"):
        rows.append(("latency check", "", "", report["latency_verify_note"]))
    if not report["latency_budget_met"]:
        rows.append(("latency budget", "", "", latency_miss_sentence(report)))
    return rows
