#!/usr/bin/env bash
# Loopback Flower deployment, end to end: 1 SuperLink + 2 SuperNodes on 127.0.0.1 (insecure),
# `flwr run` of 2 rounds of the tiny synthetic config, then a check of the server's saved state:
# its x_ag must equal, bit for bit, the in-process learner's after the same rounds.
# Every wait is bounded; every process started here is stopped by its PID (its process group,
# which holds the SuperExec and ClientApp processes it spawned) when the script exits.
#   VENV=.venv scripts/flower_deploy_smoke.sh      (make flower-deploy-smoke)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PORT=${FLOWER_SMOKE_PORT:-19100}        # SuperLink HTTP API; the SuperNodes take PORT+1, PORT+2
START_TIMEOUT=${FLOWER_SMOKE_START_TIMEOUT:-120}   # seconds for each process to come up
RUN_TIMEOUT=${FLOWER_SMOKE_RUN_TIMEOUT:-600}       # seconds for flwr run
ROUNDS=2
export PATH="$VENV/bin:$PATH" OMP_NUM_THREADS=1 WANDB_MODE=disabled
work=$(mktemp -d -t mg-flower-smoke.XXXXXX)
export FLWR_HOME="$work/flwr-home"
mkdir -p "$FLWR_HOME"
pids=()

stop_all() {
    local status=$? pid
    for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 20); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    if [ "$status" -eq 0 ]; then rm -rf "$work"; else echo "failed; logs in $work" >&2; fi
}
trap stop_all EXIT

start() {  # start LOG COMMAND...: in its own process group, whose id is its PID
    local log=$1; shift
    setsid "$@" >"$log" 2>&1 &
    pids+=($!)
}

wait_for() {  # wait_for WHAT CHECK...: run CHECK every second until it succeeds
    local what=$1; shift
    for _ in $(seq "$START_TIMEOUT"); do "$@" 2>/dev/null && return 0; sleep 1; done
    echo "timed out after ${START_TIMEOUT}s waiting for $what" >&2
    return 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

cat >"$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "loopback"

[superlink.loopback]
address = "127.0.0.1:$PORT"
insecure = true
TOML

t0=$SECONDS
for port in "$PORT" $((PORT + 1)) $((PORT + 2)); do
    if port_open "$port"; then echo "port $port is in use: set FLOWER_SMOKE_PORT" >&2; exit 1; fi
done
start "$work/superlink.log" flower-superlink --insecure --host 127.0.0.1 --port "$PORT" \
    --database "$work/superlink.db" --disable-runtime-dependency-installation
wait_for "the SuperLink on port $PORT" port_open "$PORT"
for partition in 0 1; do
    start "$work/supernode$partition.log" flower-supernode --insecure \
        --superlink "127.0.0.1:$PORT" --host 127.0.0.1 --port $((PORT + 1 + partition)) \
        --node-config "partition-id=$partition num-partitions=2"
done
for partition in 0 1; do
    wait_for "SuperNode $partition" grep -q "SuperNode ID" "$work/supernode$partition.log"
done
echo "SuperLink and 2 SuperNodes up after $((SECONDS - t0)) s"

overrides="dataset=synthetic logger=none rounds=$ROUNDS method.clients_per_round=2"
overrides+=" dataset.partition.num_nodes=4 dataset.partition.num_target_nodes=2"
overrides+=" checkpoint.every_n_rounds=1 output_root=$work/outputs data_root=$work/data"
t1=$SECONDS
timeout "$RUN_TIMEOUT" flwr run . loopback --stream \
    --run-config "overrides='$overrides'" >"$work/flwr-run.log" 2>&1 \
    || { tail -20 "$work/flwr-run.log" >&2; exit 1; }
echo "flwr run: $ROUNDS rounds in $((SECONDS - t1)) s"

"$VENV/bin/python" - "$overrides" "$ROUNDS" <<'PY'
import csv, sys
from pathlib import Path
import torch
from mglightning.flower.run_config import compose_config
from mglightning.flower.server_app import ROUNDS_FILE, STATE_FILE
from mglightning.build import build_datamodule, build_learner
cfg, rounds = compose_config(sys.argv[1]), int(sys.argv[2])
state = torch.load(Path(cfg.output_dir) / STATE_FILE, weights_only=True)["state_dict"]
assert int(state["rounds_done"]) == rounds, f"rounds_done={int(state['rounds_done'])}"
rows = list(csv.DictReader(open(Path(cfg.output_dir) / ROUNDS_FILE)))
assert [int(float(row["failed-clients"])) for row in rows] == [0] * rounds, rows
torch.set_num_threads(1)  # as the ClientApp processes (OMP_NUM_THREADS=1)
datamodule = build_datamodule(cfg)
learner = build_learner(cfg, datamodule)
for _ in range(rounds):
    learner.run_round(datamodule.train_clients)
assert torch.equal(state["x_ag"], learner.x_ag), "x_ag differs from the in-process run"
print("round seconds:", ", ".join(f"{float(row['round-seconds']):.1f}" for row in rows))
print(f"ok: {rounds} rounds, no failed node, x_ag equal to the in-process run bit for bit")
PY
echo "total $((SECONDS - t0)) s"
