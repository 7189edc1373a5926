#!/usr/bin/env bash
# Our Flower app's rounds and the engine's floor, one after the other on one loopback deployment
# with TLS and SuperNode authentication, started as `make flower-deploy-smoke` starts it
# (flower_loopback.sh: 2 registered SuperNodes). Ours: ROUNDS rounds of the smoke's config. The
# floor: as many rounds of scripts/flower_floor, an app whose ClientApp imports numpy and flwr
# alone and echoes an array as large as our x_md, sent to the same 2 nodes through the same
# reply polling. Prints, for each, the round times and what `flwr ls` counts for the run (bytes
# through the SuperLink, seconds in ClientApps); flower_round_times.sh tabulates them.
#   VENV=.venv ROUNDS=6 scripts/flower_deploy_times.sh
cd "$(dirname "$0")/.."
source scripts/flower_loopback.sh
ROUNDS=${ROUNDS:-6}

report() {  # report NAME LOG ROUNDS_CSV: the run's round times and flwr ls counts, a line each
    "$VENV/bin/python" -c '
import csv, sys
with open(sys.argv[2]) as handle:
    seconds = [float(row["round-seconds"]) for row in csv.DictReader(handle)]
print(f"{sys.argv[1]} seconds:", ", ".join(f"{value:.3f}" for value in seconds))' "$1" "$3"
    echo "$1 traffic: inbound $(run_field "$2" network-traffic inbound-bytes) outbound" \
         "$(run_field "$2" network-traffic outbound-bytes) bytes; clientapp" \
         "$(run_field "$2" compute-time clientapp-seconds) s"
}

t0=$SECONDS
check_ports_free 2
start_deployment 2
echo "TLS SuperLink and 2 registered SuperNodes up after $((SECONDS - t0)) s"

t1=$SECONDS
run_flwr "$work/ours.log" "$two_nodes rounds=$ROUNDS output_root=$work/outputs"
finish_run "$work/ours.log"
echo "ours: $ROUNDS rounds in $((SECONDS - t1)) s"
report ours "$work/ours.log" "$(find "$work/outputs" -name rounds.csv)"
parameters=$("$VENV/bin/python" -c 'import sys, torch
print(torch.load(sys.argv[1], weights_only=True)["state_dict"]["x"].numel())' \
    "$(find "$work/outputs" -name server_state.ckpt)")

t2=$SECONDS
run_app "$work/floor.log" scripts/flower_floor \
    "rounds=$ROUNDS parameters=$parameters output='$work/floor.csv'"
finish_run "$work/floor.log"
echo "floor: $ROUNDS rounds of $parameters float32 parameters in $((SECONDS - t2)) s"
report floor "$work/floor.log" "$work/floor.csv"
