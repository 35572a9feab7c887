"""The collectives of a compiled program, read from its optimized HLO text.

Every all-gather / all-reduce / reduce-scatter / all-to-all / collective-permute is
counted as many times as it runs per step: each computation's multiplicity is the sum
over its call sites, and a while loop's body runs its trip count (read from the loop's
condition, `i < N` against the start value of `i`, or from XLA's `known_trip_count`).
XLA's own cost analysis counts loop bodies once, which undercounts a scanned model by its
layer count (and the chunked loss and gradient accumulation on top).

Per collective and execution: `bytes` is the size of its result on one chip; `wire_bytes`
what one chip sends with a ring algorithm over a group of n chips (all-gather and
all-to-all (n-1)/n of the result, reduce-scatter (n-1)x the result, all-reduce 2(n-1)/n,
collective-permute the whole buffer). `where` is the part of the step it belongs to,
from the op's name scope (see WHERE).
"""
from __future__ import annotations

import collections
import re
from typing import Optional

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
               "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3b11fnuz": 1, "s4": 0.5, "u4": 0.5}
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "ragged-all-to-all",
               "collective-permute", "collective-broadcast")
# Part of the step, from name scopes (first match wins); see train/step.py, losses.py.
WHERE = (("loss", r"lm_head_loss|reconstruction_loss"), ("optimizer", r"(^|/)optimizer(/|$)"),
         ("teacher", r"(^|/)teacher(/|$)"), ("encoder", r"vision_encoder"),
         ("projector", r"vision_projector|vision_distill_layer"), ("llm", r"(^|/)llm[./]"))

_HEADER = re.compile(r"^(?:ENTRY\s+)?(%?[\w.\-]+)\s*\(.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?(%[\w.\-]+)\s*=\s*(.+?)\s([a-z][\w\-]*)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]\w*)\[([\d,]*)\]")


def _array_bytes(type_str: str) -> list[float]:
  """Sizes of the arrays in a (possibly tuple) HLO type, in order."""
  out = []
  for dt, dims in _ARRAY.findall(type_str):
    if dt not in DTYPE_BYTES:
      continue
    n = 1
    for d in dims.split(","):
      if d:
        n *= int(d)
    out.append(n * DTYPE_BYTES[dt])
  return out


def _top_level(type_str: str) -> list[str]:
  """The elements of a tuple type "(a, (b, c), d)" -> ["a", "(b, c)", "d"]; an array -> [it]."""
  t = type_str.strip()
  if not t.startswith("("):
    return [t]
  out, depth, cur = [], 0, ""
  for ch in t[1:-1]:
    if ch in "({[":
      depth += 1
    elif ch in ")}]":
      depth -= 1
    if ch == "," and depth == 0:
      out.append(cur.strip())
      cur = ""
    else:
      cur += ch
  if cur.strip():
    out.append(cur.strip())
  return out


def _result_bytes(type_str: str, opcode: str) -> float:
  """Bytes a collective produces on one chip. A tuple result is several collectives
  combined into one (all of them count); an async `-start` returns (operands, results,
  contexts...): its results count."""
  parts = _top_level(type_str)
  if opcode.endswith("-start") and opcode != "all-reduce-start" and len(parts) >= 2:
    parts = parts[1:2]
  return float(sum(sum(_array_bytes(p)) for p in parts))


def _group_size(attrs: str) -> int:
  m = re.search(r"replica_groups=\{\{([^}]*)\}", attrs)
  if m:
    return len([x for x in m.group(1).split(",") if x.strip()])
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]", attrs)
  if m:
    return int(m.group(2))
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
  if m:
    sizes = dict((k.strip("'"), int(v)) for k, v in re.findall(r"('[\w]+')=(\d+)", m.group(1)))
    n = 1
    for a in re.findall(r"'([\w]+)'", m.group(2)):
      n *= sizes.get(a, 1)
    return n
  m = re.search(r"source_target_pairs=\{(.*?)\}\}", attrs)
  if m:
    return 2
  return 1


def _wire(kind: str, nbytes: float, n: int) -> float:
  if n <= 1 and kind != "collective-permute":
    return 0.0
  if kind in ("all-gather", "all-to-all", "ragged-all-to-all", "collective-broadcast"):
    return nbytes * (n - 1) / n
  if kind == "reduce-scatter":
    return nbytes * (n - 1)
  if kind == "all-reduce":
    return 2 * nbytes * (n - 1) / n
  return nbytes                                   # collective-permute: one buffer to a peer


def _where(op_name: str) -> str:
  for name, pattern in WHERE:
    if re.search(pattern, op_name):
      return name
  return "other"


class _Module:
  """Computations -> instructions (name, type, opcode, rest of the line)."""

  def __init__(self, text: str):
    self.comps: dict[str, list] = {}
    self.entry: Optional[str] = None
    cur = None
    for line in text.splitlines():
      if cur is None:
        m = _HEADER.match(line)
        if m and not line.startswith("HloModule"):
          cur = m.group(1) if m.group(1).startswith("%") else "%" + m.group(1)
          self.comps[cur] = []
          if line.startswith("ENTRY"):
            self.entry = cur
        continue
      if line.rstrip() == "}":   # (a kernel's multi-line config can start a line with "}")
        cur = None
        continue
      m = _INSTR.match(line)
      if m:
        self.comps[cur].append(m.groups())
    self.defs = {c: {i[0]: i for i in instrs} for c, instrs in self.comps.items()}

  def where(self, comp: str) -> str:
    """The part of the step a computation belongs to: the most common `where` of its
    named instructions (for ops the compiler created without a name)."""
    names = [_where(m.group(1)) for i in self.comps[comp]
             for m in [re.search(r'op_name="([^"]*)"', i[3])] if m]
    return collections.Counter(names).most_common(1)[0][0] if names else "other"

  def trip_count(self, comp: str, instr) -> Optional[int]:
    """Iterations of a while instruction in computation `comp`; None if unknown."""
    _, _, _, rest = instr
    m = re.search(r'known_trip_count[^0-9]*(\d+)', rest)
    if m:
      return int(m.group(1))
    cond = re.search(r"condition=(%[\w.\-]+)", rest)
    if not cond or cond.group(1) not in self.comps:
      return None
    defs = self.defs[cond.group(1)]
    root = next((i for i in self.comps[cond.group(1)] if i[2] == "compare"), None)
    if root is None:
      return None
    ops = re.findall(r"(%[\w.\-]+)", root[3].split(")")[0])
    direction = re.search(r"direction=(\w+)", root[3])
    limit = index = None
    for o in ops:
      d = defs.get(o)
      if d is None:
        continue
      if d[2] == "constant":
        limit = int(float(re.match(r"\s*(-?[\d.e+]+)", d[3]).group(1)))
      elif d[2] == "get-tuple-element":
        index = int(re.search(r"index=(\d+)", d[3]).group(1))
    if limit is None or direction is None:
      return None
    start = 0
    operand = re.match(r"\s*(%[\w.\-]+)", rest)
    tup = self.defs[comp].get(operand.group(1)) if operand else None
    if tup is not None and tup[2] == "tuple" and index is not None:
      elems = re.findall(r"(%[\w.\-]+)", tup[3].split(")")[0])
      init = self.defs[comp].get(elems[index]) if index < len(elems) else None
      if init is not None and init[2] == "constant":
        start = int(float(re.match(r"\s*(-?[\d.e+]+)", init[3]).group(1)))
    d = direction.group(1)
    n = {"LT": limit - start, "LE": limit - start + 1, "NE": limit - start,
         "GT": start - limit, "GE": start - limit + 1}.get(d)
    return max(n, 0) if n is not None else None

  def multiplicities(self):
    """Computation -> executions per run of the entry; and the loops whose trip count
    could not be read (counted once)."""
    callers = collections.defaultdict(list)   # callee -> [(caller, factor)]
    unknown = []
    for comp, instrs in self.comps.items():
      for ins in instrs:
        rest = ins[3]
        if ins[2] == "while":
          body = re.search(r"body=(%[\w.\-]+)", rest)
          n = self.trip_count(comp, ins)
          if n is None:
            unknown.append(ins[0])
          if body:
            callers[body.group(1)].append((comp, 1 if n is None else n))
          continue
        for callee in re.findall(r"(?:to_apply|calls|true_computation|false_computation)=(%[\w.\-]+)", rest):
          callers[callee].append((comp, 1))
        for group in re.findall(r"branch_computations=\{([^}]*)\}", rest):
          for callee in re.findall(r"(%[\w.\-]+)", group):
            callers[callee].append((comp, 1))
    memo = {self.entry: 1}

    def mult(c, depth=0):
      if c in memo:
        return memo[c]
      memo[c] = 0   # cycle guard
      memo[c] = sum(mult(p, depth + 1) * f for p, f in callers.get(c, []))
      return memo[c]
    return {c: mult(c) for c in self.comps}, unknown


def collectives(hlo_text: str) -> dict:
  """{"rows": [{kind, where, count, bytes, wire_bytes}] aggregated per step,
  "unknown_loops": [...]}; bytes per chip.

  XLA:TPU splits some async collectives over the iterations of a loop (a start fusion
  with `AsyncCollectiveStart`, and continuation fusions repeating the same collective,
  same channel id, inside a windowed matmul loop): such a collective is counted where it
  starts only."""
  mod = _Module(hlo_text)
  mult, unknown = mod.multiplicities()
  found = []          # (channel, comp, kind, bytes, wire, where)
  starts = {c for c, instrs in mod.comps.items()
            if any('custom_call_target="AsyncCollectiveStart"' in i[3] for i in instrs)}
  for comp, instrs in mod.comps.items():
    if not mult.get(comp, 0):
      continue
    for name, type_str, opcode, rest in instrs:
      kind = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
      if kind not in COLLECTIVES:
        continue
      nbytes = _result_bytes(type_str, opcode)
      if not nbytes:
        continue
      op_name = re.search(r'op_name="([^"]*)"', rest)
      where = _where(op_name.group(1)) if op_name else mod.where(comp)
      channel = re.search(r"channel_id=(\d+)", rest)
      found.append((channel.group(1) if channel else None, comp, kind, nbytes,
                    _wire(kind, nbytes, _group_size(rest)), where))
  started = {f[0] for f in found if f[1] in starts and f[0] is not None}
  agg = collections.defaultdict(lambda: [0, 0.0, 0.0])
  for channel, comp, kind, nbytes, wire, where in found:
    if channel in started and comp not in starts:
      continue                 # a continuation of an async collective counted at its start
    k = mult[comp]
    row = agg[(kind, where)]
    row[0] += k
    row[1] += k * nbytes
    row[2] += k * wire
  rows = [{"kind": kind, "where": where, "count": c, "bytes": b, "wire_bytes": w}
          for (kind, where), (c, b, w) in sorted(agg.items(), key=lambda kv: -kv[1][2])]
  return {"rows": rows, "unknown_loops": unknown}


def host_transfers(hlo_text: str) -> float:
  """Bytes per chip per step moved between device and host memory (memory space S(5)):
  the layer inputs that remat policy "offload" keeps on the host, written once and read
  back once per pass."""
  mod = _Module(hlo_text)
  mult, _ = mod.multiplicities()
  total = 0.0
  for comp, instrs in mod.comps.items():
    k = mult.get(comp, 0)
    for _, type_str, opcode, _ in instrs:
      if not k or "S(5)" not in type_str or opcode not in (
          "dynamic-update-slice-start", "dynamic-slice-start", "copy-start"):
        continue
      parts = _top_level(type_str)
      if opcode == "dynamic-update-slice-start":   # ((host buffer, update, indices...), ...)
        moved = sum(_array_bytes(_top_level(parts[0])[1]))
      elif opcode == "dynamic-slice-start":        # ((host buffer, indices...), result, ...)
        moved = sum(_array_bytes(parts[1]))
      else:                                        # (destination, source, context)
        moved = sum(_array_bytes(parts[0]))
      total += k * moved
  return total


def summarize(rows: list, by: str) -> dict:
  """Sum `bytes` and `wire_bytes` of collective rows by "kind" or "where"."""
  out = collections.defaultdict(lambda: {"bytes": 0.0, "wire_bytes": 0.0, "count": 0})
  for r in rows:
    o = out[r[by]]
    o["bytes"] += r["bytes"]
    o["wire_bytes"] += r["wire_bytes"]
    o["count"] += r["count"]
  return dict(out)
