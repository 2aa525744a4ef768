"""The process `nsys profile` runs: one cell's workload, timed, its result in a JSON file.

    python -m lmreport.experiments.nsys_worker CONFIG_JSON RESULT_JSON

CONFIG_JSON is the cell's config (edition, profile, size, ctx, mode, dtype, batch, warmup,
steps). The worker builds the shared workload on CUDA and runs timing.time_phases: each warm-up
step in an NVTX range "warmup", then each measured step in a range "step" with its phase ranges, which
is what the capture range and the report filter on. The result file holds the Python timing of
the measured steps under the profiler ({"status": "ok", "timing": {"step_ms": Stats, ...}}), or
{"status": "oom" | "error", "error": ...}; the worker exits 0 either way so that nsys finishes
its report normally.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from lmreport.presets import model_of as model_config  # pure data, no torch: the worker imports torch in run()


def run(config: dict) -> dict:
    import torch

    from lmreport.timing import time_phases
    from lmreport.user_model import spec_of
    from lmreport.workloads import make_workload

    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device: the nsys worker profiles GPU kernels")
    device = "cuda"
    w = make_workload(model_config(config), config["batch"], config["ctx"], config["mode"], device, config["dtype"],
                      spec=spec_of(config))
    stats = time_phases(w.step, device, config["warmup"], config["steps"])
    return {"status": "ok", "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "timing": {f"{name.replace(' ', '_')}_ms": s.to_metric() for name, s in stats.items()}}


def main(argv: list[str]) -> int:
    config, result_file = json.loads(argv[0]), Path(argv[1])
    try:
        result = run(config)
    except Exception as e:  # noqa: BLE001 - the parent turns this into an oom/error record
        from lmreport.runner import is_out_of_memory
        result = {"status": "oom" if is_out_of_memory(e) else "error", "error": f"{type(e).__name__}: {e}"[:2000]}
    tmp = result_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, result_file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
