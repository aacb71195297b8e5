"""The client's own CPU: making a client, and a request, in a job's process.

Every simulated job of the load benchmark is a ``stagelr.Tuner`` in one of two client
processes on the server's cores, so what the client spends is CPU the server does not
get. Two figures, each a median over ``--repeats`` rounds, each round in a fresh child
process of the tree measured (CPU time of that process, ``time.process_time``):

- ``stagelr.Client(url)``: making one (its transport, its TLS context), after a first
  one has been made;
- ``Client.health()``: one request over a kept-alive connection to a live `stagelr serve`
  (started from this checkout, SQLite), the client's side only.

    python benchmarks/client_cost.py                          # this tree
    python benchmarks/client_cost.py --baseline-tree /tmp/before   # old, then new

``--baseline-tree DIR`` (``git archive`` of the code before a change) runs the children
with that tree's ``client`` first on ``PYTHONPATH`` (``trees.py``), alternating with this
tree's, round by round, so both see the same machine, and prints the ratio new / old.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from request_ab import start  # benchmarks/ is on sys.path
from trees import tree_pythonpath

#: The child: make clients, then send requests; one JSON line of ms per operation.
CHILD = r"""
import json, sys, time
import stagelr
url, clients, requests = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stagelr.Client(url).close()  # imports and first-use costs paid
start = time.process_time()
made = [stagelr.Client(url) for _ in range(clients)]
make_ms = (time.process_time() - start) / clients * 1e3
client = made[0]
for _ in range(20):
    client.health()
start = time.process_time()
for _ in range(requests):
    client.health()
request_ms = (time.process_time() - start) / requests * 1e3
print(json.dumps({"client_ms": make_ms, "health_ms": request_ms}))
"""


def measure(tree: Path | None, url: str, clients: int, requests: int) -> dict[str, float]:
    """One child of ``tree``'s client code (None: this checkout's): ms per operation."""
    env = dict(os.environ, PYTHONPATH=tree_pythonpath(tree))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, url, str(clients), str(requests)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the child failed:\n{done.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def report(rows: dict[str, dict[str, list[float]]]) -> str:
    """The printed table: median ms per operation for each tree; with two, new / old."""
    lines = ["client CPU, median ms per operation (each round a fresh process):"]
    for name, figures in rows.items():
        lines.append(
            f"  {name:<32} Client() {statistics.median(figures['client_ms']):8.3f} ms"
            f"   health() {statistics.median(figures['health_ms']):6.3f} ms"
        )
    if len(rows) == 2:
        old, new = rows.values()
        for key, label in (("client_ms", "Client()"), ("health_ms", "health()")):
            ratio = statistics.median(new[key]) / statistics.median(old[key])
            lines.append(f"  new / old {label}: {ratio:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-tree", type=Path, help="the code before a change")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (fresh processes)")
    parser.add_argument("--clients", type=int, default=20, help="clients made a round")
    parser.add_argument("--requests", type=int, default=300, help="requests a round")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    trees: dict[str, Path | None] = {"this tree": None}
    if args.baseline_tree is not None:
        trees = {str(args.baseline_tree): args.baseline_tree.resolve(), "this tree": None}
    rows: dict[str, dict[str, list[float]]] = {
        name: {"client_ms": [], "health_ms": []} for name in trees
    }
    with tempfile.TemporaryDirectory() as folder:
        # this checkout's server, on a fresh SQLite file
        server, url = start(sys.executable, Path(folder), tree_pythonpath(None))
        try:
            for round_ in range(args.repeats):
                # alternate which tree goes first, so neither always runs warmer
                order = list(trees.items()) if round_ % 2 == 0 else list(trees.items())[::-1]
                for name, tree in order:
                    figures = measure(tree, url, args.clients, args.requests)
                    for key, value in figures.items():
                        rows[name][key].append(value)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(report(rows))
    if args.json is not None:
        args.json.write_text(json.dumps({"rounds": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
