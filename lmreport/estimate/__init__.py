"""Memory estimation without allocating: fake tensors, a storage tracker, CUDA autocast rules.

- tracker.py: a TorchDispatchMode that sees every tensor an op creates and (through weak
  references) when its storage dies, so it replays the allocator's view of one step.
- cuda_autocast.py: the CUDA autocast policies that CPU autocast lacks, for the ops the
  reference model calls (so a bf16 estimate on a CPU machine follows CUDA's dtypes).
- memory.py: one step of the shared workload on fake tensors at full size: peak, breakdown,
  phases, timeline (`lmreport estimate memory`, the memory section's estimated cells).
- cpu_check.py: the same step really run on CPU with torch.profiler's memory events, the
  independent measurement the estimate is checked against at small sizes.
"""
