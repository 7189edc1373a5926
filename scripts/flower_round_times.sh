#!/usr/bin/env bash
# A round's wall time, side by side on the deployment smoke's config (the tiny synthetic set,
# 2 training nodes, both in every round, state saved each round): in process (the learner's
# clock, `mglightning.train`), on Flower's simulation engine (`make flower-sim`), and in the
# loopback deployment with TLS and SuperNode authentication (`make flower-deploy-smoke`), where
# the engine's floor, a trivial app sending arrays as large as ours to the same nodes
# (scripts/flower_floor), runs beside ours (scripts/flower_deploy_times.sh). The goal: ours ≤
# 1.3× the floor.
#   VENV=.venv ROUNDS=6 scripts/flower_round_times.sh      (make flower-round-times)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
ROUNDS=${ROUNDS:-6}
export OMP_NUM_THREADS=1 WANDB_MODE=disabled
work=$(mktemp -d -t mg-round-times.XXXXXX)
trap 'rm -rf "$work"' EXIT
config="dataset=synthetic logger=none method.clients_per_round=2 checkpoint.every_n_rounds=1
  dataset.partition.num_nodes=4 dataset.num_target_nodes=2 rounds=$ROUNDS
  data_root=$work/data"

# shellcheck disable=SC2086  # $config is a list of overrides
"$VENV/bin/python" -m mglightning.train $config output_root="$work/in-process" progress_bar=false \
    >"$work/in-process.log" 2>&1
# shellcheck disable=SC2086
"$VENV/bin/python" -m mglightning.flower.simulate $config output_root="$work/simulation" \
    >"$work/simulation.log" 2>&1
ROUNDS=$ROUNDS VENV=$VENV scripts/flower_deploy_times.sh >"$work/deployment.log" 2>&1 \
    || { tail -30 "$work/deployment.log" >&2; echo "the deployment failed" >&2; exit 1; }

"$VENV/bin/python" - "$work" "$ROUNDS" <<'PY'
import csv, json, re, statistics, sys
from pathlib import Path
work, rounds = Path(sys.argv[1]), int(sys.argv[2])
summary = json.loads(next((work / "in-process").rglob("summary.json")).read_text())
in_process = [summary["training_seconds"] / summary["rounds"]] * rounds  # its clock's mean
with open(next((work / "simulation").rglob("rounds.csv"))) as handle:
    simulation = [float(row["round-seconds"]) for row in csv.DictReader(handle)]
log = (work / "deployment.log").read_text()
def seconds(app):
    return [float(value) for value in re.search(rf"{app} seconds: ([0-9., ]+)", log)[1].split(",")]
def traffic(app):
    found = re.search(rf"{app} traffic: inbound (\d+) outbound (\d+) bytes; "
                      r"clientapp ([0-9.e-]+) s", log)
    return int(found[1]), int(found[2]), float(found[3])
times = {"in process": in_process, "simulation": simulation,
         "deployment: the floor (echo app)": seconds("floor"), "deployment: ours": seconds("ours")}
later = {name: statistics.fmean(values[1:]) for name, values in times.items()}
floor, ours = later["deployment: the floor (echo app)"], later["deployment: ours"]
print(f"| {rounds} rounds | mean s a round | after the first | ÷ simulation (after the first) "
      "| ÷ floor (after the first) |")
print("|---|---|---|---|---|")
for name, values in times.items():
    over_floor = f"{later[name] / floor:.2f}×" if name.startswith("deployment") else "–"
    print(f"| {name} | {statistics.fmean(values):.3f} | {later[name]:.3f} | "
          f"{later[name] / later['simulation']:.1f}× | {over_floor} |")
print(f"\nours ÷ floor after the first round: {ours / floor:.2f}× (goal ≤ 1.3×)")
messages = {"ours": 2 * rounds + 2, "floor": 2 * rounds}  # 2 nodes a round; ours asks each
for app in ("ours", "floor"):                             # its partition-id first
    inbound, outbound, clientapp = traffic(app)
    print(f"{app}: {inbound / rounds / 1e3:.0f} kB a round into the SuperLink, "
          f"{outbound / rounds / 1e3:.0f} kB out; a ClientApp's time from its input to its "
          f"reply {clientapp / messages[app]:.2f} s a message (flwr ls: the run's "
          f"{messages[app]} messages, the first round's included)")
PY
