"""Time lost per fault: seconds from the fault to training again (the first step of the
restarted run logged), and the steps trained twice, for the rows of docs/faults.md that a
restart recovers from. Tiny stage 1a on the demo corpus, one process, checkpoints every 10
steps, a log line every step; the fault comes after step FAULT_AT (15).

  python benchmarks/fault_recovery/fault_recovery.py [--out=DIR] [--json=FILE]

Faults: kill -9 (the restart resumes from the last checkpoint, 10); SIGTERM (the run saves
step 15 and exits 0; the restart resumes there); a corrupt newest checkpoint (found at the
restart, moved aside, the one before restored); a killed data worker (data.workers=2; the
run stops with exit 5, the restart resumes). The restart is launched the moment the
process is gone, as a supervisor (a TPU VM's restart loop, Kubernetes) would, so the
figure is the restart's own cost: start-up, restore, compile (the persistent compilation
cache warm, as on a restart) and the first step.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAULT_AT, EVERY, STEPS = 15, 10, 30


def _cmd(wd, demo, *extra):
  return [sys.executable, "-m", "launch.train", "--config=configs/stage1.py:tiny",
          f"--workdir={wd}", f"--config.total_steps={STEPS}", "--config.log_every=1",
          f"--config.checkpoint_every={EVERY}", f"--config.data.demo_dir={demo}", *extra]


def _steps(wd) -> list:
  try:
    return [json.loads(l)["step"] for l in open(os.path.join(wd, "metrics.jsonl"))
            if l.strip().endswith("}")]
  except (OSError, ValueError):
    return []


def _wait(pred, proc=None, timeout=600):
  t = time.time()
  while not pred():
    if proc is not None and proc.poll() is not None and not pred():
      raise RuntimeError(f"the run ended ({proc.returncode}) before the awaited point")
    if time.time() - t > timeout:
      raise TimeoutError
    time.sleep(0.02)


def _workers_of(pid):
  out = []
  for d in filter(str.isdigit, os.listdir("/proc")):
    try:
      stat, argv = open(f"/proc/{d}/stat").read(), open(f"/proc/{d}/cmdline").read()
    except OSError:
      continue
    if int(stat.rsplit(")", 1)[1].split()[1]) == pid and "spawn_main" in argv:
      out.append(int(d))
  return out


def _restart(wd, demo, t_fault, *extra):
  """The restart, launched now; -> (seconds from the fault to its first step, steps
  trained twice)."""
  before = len(_steps(wd))
  with tempfile.TemporaryFile("w+") as log:          # a file: a pipe could fill and block it
    p = subprocess.Popen(_cmd(wd, demo, *extra), cwd=REPO, stdout=subprocess.DEVNULL,
                         stderr=log, text=True)
    _wait(lambda: len(_steps(wd)) > before, p)
    lost = time.time() - t_fault
    p.wait(timeout=600)
    log.seek(0)
    err = log.read()
  assert p.returncode == 0, err[-2000:]
  resumed = int(err.split("resumed from step ")[1].split()[0])
  return lost, max(s for s in _steps(wd)[:before]) - resumed


def run_fault(name, root, demo):
  wd = os.path.join(root, name)
  extra = ("--config.data.workers=2",) if name == "data worker killed" else ()
  if name == "corrupt newest checkpoint":
    subprocess.run(_cmd(wd, demo, "--config.total_steps=20"), cwd=REPO, check=True,
                   capture_output=True)
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(wd, "checkpoints", "20"))
             for f in fs if "/d/" in os.path.join(d, f)]
    big = max(files, key=os.path.getsize)
    with open(big, "r+b") as f:
      f.truncate(os.path.getsize(big) // 2)
    t = time.time()                                   # the fault: found at the restart
    lost, again = _restart(wd, demo, t)
    return {"fault": name, "seconds_to_training": round(lost, 1), "steps_again": again}
  p = subprocess.Popen(_cmd(wd, demo, *extra), cwd=REPO, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
  _wait(lambda: max(_steps(wd), default=0) >= FAULT_AT, p)
  t = time.time()
  if name == "kill -9":
    p.kill()
  elif name == "SIGTERM":
    p.send_signal(signal.SIGTERM)
  else:
    os.kill(_workers_of(p.pid)[0], signal.SIGKILL)
  p.wait(timeout=600)
  lost, again = _restart(wd, demo, t, *extra)
  return {"fault": name, "exit": p.returncode, "seconds_to_training": round(lost, 1),
          "steps_again": again}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="")
  ap.add_argument("--json", default="")
  args = ap.parse_args()
  root = args.out or tempfile.mkdtemp(prefix="fault_recovery_")
  demo = os.path.join(root, "demo")
  warm = os.path.join(root, "warm")               # the corpus and the compilation cache
  subprocess.run(_cmd(warm, demo), cwd=REPO, check=True, capture_output=True)
  shutil.rmtree(warm)
  rows = [run_fault(n, root, demo) for n in
          ("kill -9", "SIGTERM", "corrupt newest checkpoint", "data worker killed")]
  for r in rows:
    print(json.dumps(r))
  if args.json:
    json.dump(rows, open(args.json, "w"), indent=1)


if __name__ == "__main__":
  main()
