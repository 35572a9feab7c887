"""The codebase's shape (docs/architecture.md), checked on its own imports: no import
cycle between the project's modules, each layer importing only the layers below it, entry
points that are entry points, imports at the top of a file (or a comment saying why not),
and no reference to a file outside the repository."""
import ast
import os
import re
import subprocess

import pytest

from train_runs import REPO

PACKAGES = ("penguin_jax", "data_pipelines", "launch", "configs")
ANSWER = ("penguin_jax.inference", "penguin_jax.export", "penguin_jax.benchmark")


def _modules() -> dict[str, str]:
  """module name -> path, for every .py file of the project's packages."""
  out = {}
  for pkg in PACKAGES:
    for dirpath, _, files in os.walk(os.path.join(REPO, pkg)):
      for f in files:
        if f.endswith(".py"):
          rel = os.path.relpath(os.path.join(dirpath, f), REPO)[:-3].replace(os.sep, ".")
          out[rel.removesuffix(".__init__")] = os.path.join(dirpath, f)
  return out


MODULES = _modules()


def _imports(path: str) -> list[tuple[str, ast.AST, bool]]:
  """(imported project module, node, at the top level?) of one file."""
  tree = ast.parse(open(path).read())
  top = set(map(id, tree.body))
  out = []
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      subs = [f"{node.module}.{a.name}" for a in node.names]     # from PKG import MODULE
      names = [s for s in subs if s in MODULES] or [node.module]
    for n in names:
      while n and n not in MODULES:
        n = n.rpartition(".")[0]
      if n:
        out.append((n, node, id(node) in top))
  return out


GRAPH = {m: {n for n, _, _ in _imports(p) if n != m} for m, p in MODULES.items()}


def _layer(m: str) -> str:
  if m.startswith("launch"):
    return "launch"
  if m.startswith("configs"):
    return "configs"
  if m.startswith("data_pipelines"):
    return "data"
  if m.startswith("penguin_jax.demo"):
    return "demo"
  if m.startswith("penguin_jax.train"):
    return "train"
  return "answer" if m.startswith(ANSWER) else "model"


# layer -> layers it may import (docs/architecture.md)
ALLOWED = {"launch": {"launch", "configs", "demo", "answer", "train", "data", "model"},
           "configs": {"configs", "data", "model"},
           "demo": {"demo", "answer", "train", "data", "model"},
           "answer": {"answer", "train", "data", "model"},
           "train": {"train", "data", "model"},
           "data": {"data", "model"},
           "model": {"model"}}


def test_no_import_cycle_between_the_projects_modules():
  seen, stack, cycles = set(), [], []

  def visit(m):
    if m in stack:
      cycles.append(stack[stack.index(m):] + [m])
      return
    if m in seen:
      return
    seen.add(m)
    stack.append(m)
    for n in sorted(GRAPH[m]):
      visit(n)
    stack.pop()
  for m in sorted(MODULES):
    visit(m)
  assert not cycles, cycles[:3]


def test_each_layer_imports_only_the_layers_below_it():
  bad = [(m, n) for m, ns in GRAPH.items() for n in ns
         if _layer(n) not in ALLOWED[_layer(m)] and not (m == "launch" or n == "launch")]
  assert not bad, bad
  # data_pipelines reaches into the model library for these only
  used = {n for m, ns in GRAPH.items() if _layer(m) == "data" for n in ns if _layer(n) == "model"}
  assert used <= {"penguin_jax", "penguin_jax.settings", "penguin_jax.patches",
                  "penguin_jax.preprocessor"}, used


def test_entry_points_are_short_and_import_no_other_entry_point():
  for m, path in MODULES.items():
    if m.startswith("launch.") and m != "launch":
      assert sum(1 for _ in open(path)) <= 200, m
      assert not any(n.startswith("launch.") for n in GRAPH[m]), (m, GRAPH[m])


def test_imports_are_at_the_top_or_say_why():
  """An import inside a function is allowed only with a comment on its line saying why
  (an optional dependency)."""
  late = []
  for m, path in MODULES.items():
    lines = open(path).read().splitlines()
    tree = ast.parse("\n".join(lines))
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        for sub in ast.walk(node):
          if isinstance(sub, (ast.Import, ast.ImportFrom)) and "#" not in lines[sub.lineno - 1]:
            late.append(f"{m}:{sub.lineno}")
  assert not late, late


def test_no_reference_to_a_file_outside_the_repository():
  files = subprocess.run(["git", "ls-files", "*.py", "*.md"], cwd=REPO, capture_output=True,
                         text=True).stdout.split()
  bad = [f for f in files if re.search(r"DESIGN(\.md)? +[0-9]|\.\./shared",
                                       open(os.path.join(REPO, f)).read())]
  assert not bad, bad
