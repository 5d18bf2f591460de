"""Zoo-scan throughput on this machine: the same zoo scanned by each engine, models per hour.

    python bench/bench_zoo.py ZOO --out results/bench/zoo_throughput.json [--runs local1,local2,ray2node]
    python bench/bench_zoo.py --out results/bench/zoo_throughput.json --render     # the table again

Each run scans ZOO from scratch (its own output folder under ``--work``) with the default
detector through the command line (``python cli.py scan-zoo``), and records the wall
time of the whole command, the models per hour it implies, the mean and worst seconds
per model the workers measured, and every model's verdict, classes and score. Runs:

* ``local1``: ``--engine local --workers 1`` (every core to one worker);
* ``local2``: ``--engine local --workers 2`` (one thread each on 2 cores);
* ``ray``: ``--engine ray`` on a local instance it starts (1 CPU per task);
* ``ray2node``: a two-node Ray cluster started on this machine (``ray start --head
  --num-cpus 1`` plus a second node ``ray start --address ... --num-cpus 1``), joined with
  ``--address``, then stopped (``ray stop``), with Ray's token authentication on
  (``RAY_AUTH_MODE=token``).

The verdicts of every run are compared with the first run's. "Idle" matters: stop other
work first. Writes ``--out`` (.json) and a Markdown table beside it.
"""

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time

from aegis_tf.core.utils import atomic_path, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RUNS = {"local1": ["--engine", "local", "--workers", "1"],
        "local2": ["--engine", "local", "--workers", "2"],
        "ray": ["--engine", "ray"],
        "ray2node": ["--engine", "ray"]}
PORT = 6391


# Ray's token authentication on for the cluster and everything that joins it (the token
# is ~/.ray/auth_token; `ray start` enables it, and a client left at "disabled" is refused).
CLUSTER_ENV = {**os.environ, "RAY_AUTH_MODE": "token"}


def _ray(*args, check=True):
    ray = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
    return subprocess.run([ray, *args], check=check, capture_output=True, text=True, env=CLUSTER_ENV)


def two_node_cluster():
    """Start a head node and a second node on this machine, 1 CPU each; returns the address."""
    _ray("stop", "--force", check=False)
    _ray("start", "--head", "--num-cpus", "1", "--port", str(PORT), "--include-dashboard", "false",
         "--disable-usage-stats")
    address = f"127.0.0.1:{PORT}"
    _ray("start", "--address", address, "--num-cpus", "1", "--disable-usage-stats")
    return address


def run_one(label, zoo, work, extra):
    out = os.path.join(work, label)
    shutil.rmtree(out, ignore_errors=True)
    args = [sys.executable, os.path.join(ROOT, "cli.py"), "scan-zoo", zoo, "--out", out, "--quiet"] + RUNS[label] + extra
    address = None
    try:
        if label == "ray2node":
            address = two_node_cluster()
            args += ["--address", address]
        start = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True, env=CLUSTER_ENV if address else None)
        wall = time.perf_counter() - start
    finally:
        if address:
            _ray("stop", "--force", check=False)
    if proc.returncode != 0:
        raise SystemExit(f"error: {label} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    scanned = summary["models"] - summary["counts"]["error"]
    return {"run": label, "command": shlex.join(args[1:]), "wall_seconds": wall,
            "models": summary["models"], "models_per_hour": 3600.0 * summary["models"] / wall,
            "scanned": scanned, "scanned_per_hour": 3600.0 * scanned / wall,
            "seconds_per_model": summary["seconds_per_model"], "engine": summary["engine"],
            "verdicts": {r["name"]: [r["verdict"], r["target_classes"], r["score"]] for r in summary["rows"]}}


def markdown(result):
    first = result["runs"][0]
    lines = [f"# Zoo-scan throughput: {first['models']} models on {result['machine']}", "",
             f"Command: `{result['command']}`", "",
             f"{first['scanned']} of the {first['models']} models scanned (the others: an error result).", "",
             "| run | wall (s) | models scanned per hour | seconds per model (mean / worst, in the worker) | "
             f"same verdicts as {first['run']} |", "|---|---|---|---|---|"]
    for r in result["runs"]:
        s = r["seconds_per_model"]
        same = "yes" if r["same_verdicts"] else "**no**"
        per_hour = 3600.0 * r["scanned"] / r["wall_seconds"]
        lines.append(f"| {r['run']} | {r['wall_seconds']:.0f} | {per_hour:.1f} | "
                     f"{s['mean']:.1f} / {s['worst']:.1f} | {same} |")
    lines += ["", "Verdicts (first run): " + "; ".join(f"{n}: {v[0]} {v[1] or ''}".strip()
                                                        for n, v in first["verdicts"].items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("zoo", nargs="?", help="the zoo to scan (not with --render)")
    p.add_argument("--out", required=True, help="result .json (a .md is written beside it)")
    p.add_argument("--runs", default="local1,local2,ray2node", help="comma-separated: " + ", ".join(RUNS))
    p.add_argument("--work", default=os.path.join("out", "bench_zoo"), help="scan outputs (default %(default)s)")
    p.add_argument("--render", action="store_true", help="only write the table again from --out's JSON")
    args, extra = p.parse_known_args(argv)
    if args.render:
        with open(args.out) as f:
            result = json.load(f)
        with atomic_path(os.path.splitext(args.out)[0] + ".md") as tmp:
            with open(tmp, "w") as f:
                f.write(markdown(result))
        print(markdown(result))
        return
    if not args.zoo:
        raise SystemExit("error: give the ZOO to scan")
    runs = [r for r in args.runs.split(",") if r]
    unknown = [r for r in runs if r not in RUNS]
    if unknown or not runs:
        raise SystemExit(f"error: --runs must name some of {', '.join(RUNS)}. Received: {args.runs}")
    results = []
    for label in runs:
        print(f"{label} ...", flush=True)
        results.append(run_one(label, args.zoo, args.work, extra))
        r = results[-1]
        r["same_verdicts"] = r["verdicts"] == results[0]["verdicts"]
        print(f"{label}: {r['wall_seconds']:.0f} s, {r['models_per_hour']:.1f} models/hour, same verdicts: "
              f"{r['same_verdicts']}", flush=True)
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores"
    result = {"machine": machine, "command": shlex.join(["python", "bench/bench_zoo.py", *(argv or sys.argv[1:])]),
              "runs": results}
    write_json(args.out, result)
    with atomic_path(os.path.splitext(args.out)[0] + ".md") as tmp:
        with open(tmp, "w") as f:
            f.write(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
