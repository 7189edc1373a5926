#!/usr/bin/env bash
# A round's wall time three ways, side by side on the deployment smoke's config (the tiny
# synthetic set, 2 training nodes, both in every round, state saved each round): in process
# (the learner's clock, `mglightning.train`), on Flower's simulation engine (`make flower-sim`)
# and in the loopback deployment with TLS and SuperNode authentication (`make
# flower-deploy-smoke`). The goal: a deployment round ≤ 3× a simulation round.
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
ROUNDS=$ROUNDS VENV=$VENV scripts/flower_deploy_smoke.sh >"$work/deployment.log" 2>&1

"$VENV/bin/python" - "$work" "$ROUNDS" <<'PY'
import csv, json, re, statistics, sys
from pathlib import Path
work, rounds = Path(sys.argv[1]), int(sys.argv[2])
summary = json.loads(next((work / "in-process").rglob("summary.json")).read_text())
in_process = [summary["training_seconds"] / summary["rounds"]] * rounds  # its clock's mean
with open(next((work / "simulation").rglob("rounds.csv"))) as handle:
    simulation = [float(row["round-seconds"]) for row in csv.DictReader(handle)]
line = re.search(r"seconds: ([0-9., ]+)", (work / "deployment.log").read_text()).group(1)
deployment = [float(value) for value in line.split(",")]
print(f"| {rounds} rounds | mean s a round | after the first | ÷ simulation (after the first) |")
print("|---|---|---|---|")
later = {name: statistics.fmean(values[1:]) for name, values in
         (("in process", in_process), ("simulation", simulation), ("deployment", deployment))}
for name, values in (("in process", in_process), ("simulation", simulation),
                     ("deployment", deployment)):
    print(f"| {name} | {statistics.fmean(values):.3f} | {later[name]:.3f} | "
          f"{later[name] / later['simulation']:.1f}× |")
PY
