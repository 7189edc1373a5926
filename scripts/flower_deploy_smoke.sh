#!/usr/bin/env bash
# Loopback Flower deployment, end to end, closed to strangers: 1 SuperLink with TLS and
# SuperNode authentication + 2 registered SuperNodes on 127.0.0.1, and a third SuperNode whose
# key is not registered, which must be refused while `flwr run` does 2 rounds of the tiny
# synthetic config with the other two. Then a run whose ServerApp raises must be reported as
# failed (flwr run itself exits 0), and the server's saved x_ag must equal, bit for bit, the
# in-process learner's after the same rounds (scripts/flower_check.py).
#   VENV=.venv scripts/flower_deploy_smoke.sh      (make flower-deploy-smoke)
cd "$(dirname "$0")/.."
source scripts/flower_loopback.sh
ROUNDS=${ROUNDS:-2}

t0=$SECONDS
check_ports_free 3
start_deployment 2
echo "TLS SuperLink and 2 registered SuperNodes up after $((SECONDS - t0)) s"

overrides="$two_nodes rounds=$ROUNDS output_root=$work/outputs"
t1=$SECONDS
run_flwr "$work/flwr-run.log" "$overrides"
make_node_key stranger         # a key the SuperLink was never given, while the run goes on
start_supernode stranger 0 2   # claims training node 0, to receive its share of the meta-model
refused() { grep -q "Failed to activate SuperNode" "$work/stranger.log"; }
wait_for "$START_TIMEOUT" "the SuperLink to refuse the unregistered SuperNode" refused
wait_for "$START_TIMEOUT" "the refused SuperNode to exit" gone "${supernode_pid[stranger]}"
stranger_status=0
wait "${supernode_pid[stranger]}" || stranger_status=$?
forget "${supernode_pid[stranger]}"
grep -q "No SuperNode found with the given public key" "$work/superlink.log" \
    || { echo "the SuperLink did not log the refusal" >&2; exit 1; }
echo "unregistered SuperNode refused by the SuperLink (no SuperNode found with the given" \
     "public key); it stopped ($(grep -m1 -o 'Exit Code: [0-9]*' "$work/stranger.log")," \
     "status $stranger_status)"

finish_run "$work/flwr-run.log"
echo "flwr run: $ROUNDS rounds in $((SECONDS - t1)) s, with the 2 registered nodes"
flwr supernode list >"$work/nodes.txt" 2>&1
[ "$(grep -c online "$work/nodes.txt")" -eq 2 ] \
    || { cat "$work/nodes.txt" >&2; echo "expected the 2 registered nodes online" >&2; exit 1; }

# `flwr run` exits 0 even when the ServerApp raises; finish_run goes by the run's status, which a
# ServerApp that cannot compose its config (a key ours does not have) must leave as failed.
run_flwr "$work/flwr-failed.log" "$overrides no_such_key=1"
finish_run "$work/flwr-failed.log" finished:failed
grep -q "no_such_key" "$work/flwr-failed.log" \
    || { echo "the failed run's log does not name the bad key" >&2; exit 1; }
echo "a run whose ServerApp raised (no_such_key=1) is reported as failed: flwr ls has it" \
     "finished:failed, and finish_run exits 1 on any status but finished:completed"

"$VENV/bin/python" scripts/flower_check.py "$overrides"
echo "total $((SECONDS - t0)) s"
