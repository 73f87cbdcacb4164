"""Where one training step spends its time, by op category, for ours (a `jax.profiler` trace
of the XLA CPU program) and for PyTorch (`torch.profiler`), in the same categories and in
milliseconds of the step, so the two can be read side by side.

XLA's CPU runtime runs convolutions, matmuls and large fusions asynchronously: the op's own
trace event ends when its work is handed to the thread pool, and the pool's threads then
work outside any op's event (between `ThreadpoolListener` start/stop-region markers) until
the executor records the op's completion (`end: <op>`). Summing op events alone therefore
misses most of the convolutions' time. `attribute` gives each moment of each XLA worker
thread to the op whose event it is inside, else (inside a thread-pool region) in equal
shares to the ops in flight (started, completion not yet recorded), else to idle.
"""
import collections
import gzip
import json
import os
import re
import tempfile
import time

# In printing order; both implementations use these names.
CATEGORIES = ("convolutions, forward", "convolutions, backward",
              "other matmuls (classifier, GCP head)", "elementwise and reductions",
              "layout transposes and copies", "pooling", "eigh (LAPACK)", "idle / overhead")
IDLE = "idle / overhead"
ELEMENTWISE = "elementwise and reductions"


def attribute(events: list[dict]) -> tuple[dict[str, float], int]:
  """Milliseconds of XLA worker-thread time by op name (plus `IDLE`) over one traced run,
  and the number of worker threads (the values sum to that many times the traced span).

  `events`: Chrome-trace events (`ph` 'X' with `name`, `tid`, `ts`, `dur` in microseconds;
  `ph` 'M' thread names). Worker threads are XLA's Eigen pool threads (`tf_XLAEigen...`), or,
  where none is named so, every thread that runs an op.
  """
  spans = [e for e in events if e.get("ph") == "X"]
  thread_names = {e["tid"]: e["args"]["name"] for e in events
                  if e.get("ph") == "M" and e.get("name") == "thread_name"}
  done = collections.defaultdict(list)
  for e in spans:
    if e["name"].startswith("end: "):
      done[e["name"][5:]].append(e["ts"])
  starts = collections.defaultdict(list)
  for e in spans:
    if e["name"] in done:
      starts[e["name"]].append(e)
  ops = []  # (name, tid, start, event end, completion); the k-th start meets the k-th end
  for name, evs in starts.items():
    for e, end in zip(sorted(evs, key=lambda e: e["ts"]), sorted(done[name])):
      ops.append((name, e["tid"], e["ts"], e["ts"] + e["dur"], max(end, e["ts"] + e["dur"])))
  if not ops:
    return {}, 0
  workers = ({t for t, n in thread_names.items() if n.startswith("tf_XLAEigen")}
             & {op[1] for op in ops}) or {op[1] for op in ops}
  marks = []  # (time, order, action, payload); at equal times, ends before starts
  for i, (name, tid, start, event_end, completion) in enumerate(ops):
    marks += [(start, 1, "start", i), (event_end, 0, "event_end", i),
              (completion, 0, "done", i)]
  for e in spans:
    if e["tid"] in workers and e["name"] in ("ThreadpoolListener::StartRegion",
                                             "ThreadpoolListener::StopRegion"):
      marks.append((e["ts"], 0, e["name"].rsplit(":", 1)[1], e["tid"]))
  marks.sort(key=lambda m: m[:2])
  first, last = min(op[2] for op in ops), max(op[4] for op in ops)
  inside = {t: [] for t in workers}  # per thread: the ops whose events it is in, innermost last
  in_region = dict.fromkeys(workers, False)
  in_flight: set[int] = set()
  us = collections.Counter()
  previous = first
  for t, _, action, payload in marks:
    if t > previous and previous < last:
      span = min(t, last) - previous
      for tid in workers:
        if inside[tid]:
          us[ops[inside[tid][-1]][0]] += span
        elif in_region[tid] and in_flight:
          for i in in_flight:
            us[ops[i][0]] += span / len(in_flight)
        else:
          us[IDLE] += span
    previous = max(previous, t)
    if action == "start":
      in_flight.add(payload)
      if ops[payload][1] in workers:
        inside[ops[payload][1]].append(payload)
    elif action == "event_end":
      if payload in inside.get(ops[payload][1], ()):
        inside[ops[payload][1]].remove(payload)
    elif action == "done":
      in_flight.discard(payload)
    else:
      in_region[payload] = action == "StartRegion"
  return {name: v / 1e3 for name, v in us.items()}, len(workers)


def xla_op_categories(hlo_text: str) -> dict[str, str]:
  """Category of each instruction of a compiled XLA program (`compiled.as_text()`), by
  its opcode, its fusion's name and the JAX operation it came from (`op_name`). What XLA
  makes without a JAX source and without a telling name (some of max-pool's gradient, the
  finiteness check's reductions) counts as elementwise."""
  categories = {}
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%(\S+) = (.*)", line)
    if not m:
      continue
    name, rest = m.groups()
    opcode = re.search(r"\s([a-z][a-z-]*)\(", rest)
    opcode = opcode.group(1) if opcode else ""
    source = re.search(r'op_name="([^"]*)"', rest)
    source = source.group(1) if source else ""
    if opcode == "convolution" or (
        "conv_general_dilated" in source and (opcode == "dot" or "fusion" in name)):
      # Only the gradients' convolutions are XLA's own, without a JAX op_name.
      backward = not source or "transpose(" in source
      categories[name] = f"convolutions, {'backward' if backward else 'forward'}"
    elif opcode == "dot" or "dot_general" in source:
      categories[name] = "other matmuls (classifier, GCP head)"
    elif "eigh" in source or "syevd" in rest:
      categories[name] = "eigh (LAPACK)"
    elif opcode in ("transpose", "copy") or re.match(r"(bitcast_)?(transpose|copy)"
                                                     r"(_transpose|_copy)*_fusion", name):
      categories[name] = "layout transposes and copies"
    elif re.search(r"reduce_window|select_and_scatter|max_pool|avg_pool", source) or (
        "reduce-window" in name and rest.startswith("(")):  # max-pool's argmax (gradient)
      categories[name] = "pooling"
    else:
      categories[name] = ELEMENTWISE
  return categories


def xla_step_profile(run, hlo_text: str) -> dict[str, float]:
  """Milliseconds of one `run()` (one step of a compiled XLA CPU program whose
  `as_text()` is `hlo_text`) by category; they sum to the executor's span of the step."""
  import jax
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      run()
    path = next(os.path.join(d, f) for d, _, files in os.walk(tmp) for f in files
                if f.endswith("perfetto_trace.json.gz"))
    with gzip.open(path) as f:
      trace = json.load(f)
  by_op, threads = attribute(trace["traceEvents"] if isinstance(trace, dict) else trace)
  categories = xla_op_categories(hlo_text)
  ms = collections.Counter()
  for name, v in by_op.items():
    ms[IDLE if name == IDLE else categories.get(name, ELEMENTWISE)] += v / threads
  return dict(ms)


def torch_category(op: str) -> str:
  """Category of a `torch.profiler` event name (`aten::mkldnn_convolution`, ...)."""
  op = op.lower()
  if "convolution" in op or "conv2d" in op:
    return f"convolutions, {'backward' if 'backward' in op else 'forward'}"
  if re.search(r"\b(aten::)?(addmm|mm|bmm|baddbmm|matmul|linear)\b|mmbackward", op):
    return "other matmuls (classifier, GCP head)"
  if "eig" in op:
    return "eigh (LAPACK)"
  if re.search(r"copy_|contiguous|clone|permute", op):
    return "layout transposes and copies"
  if "pool" in op:
    return "pooling"
  return ELEMENTWISE


def torch_step_profile(run) -> dict[str, float]:
  """Milliseconds of one `run()` of PyTorch by category: each op's own (self) CPU time;
  what no op accounts for (Python, autograd's engine, the profiler) is `IDLE`."""
  from torch.profiler import ProfilerActivity, profile
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    start = time.perf_counter()
    run()
    wall_ms = (time.perf_counter() - start) * 1e3
  ms = collections.Counter()
  for event in prof.key_averages():
    ms[torch_category(event.key)] += event.self_cpu_time_total / 1e3
  ms[IDLE] += max(0.0, wall_ms - sum(ms.values()))
  return dict(ms)
