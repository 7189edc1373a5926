#!/usr/bin/env bash
# Loopback Flower deployment, end to end, closed to strangers: 1 SuperLink with TLS and
# SuperNode authentication + 2 registered SuperNodes on 127.0.0.1, and a third SuperNode whose
# key is not registered, which must be refused while `flwr run` does 2 rounds of the tiny
# synthetic config with the other two. Then the server's saved x_ag must equal, bit for bit,
# the in-process learner's after the same rounds (scripts/flower_check.py).
#   VENV=.venv scripts/flower_deploy_smoke.sh      (make flower-deploy-smoke)
cd "$(dirname "$0")/.."
source scripts/flower_loopback.sh
ROUNDS=2

t0=$SECONDS
check_ports_free 3
make_certificates
for name in node0 node1 stranger; do make_node_key "$name"; done
start_superlink
for name in node0 node1; do register_node "$name"; done
start_supernode node0 0
start_supernode node1 1
start_supernode stranger 0 2   # claims training node 0, to receive its share of the meta-model
for name in node0 node1; do wait_for "SuperNode $name" supernode_up "$name"; done
echo "TLS SuperLink and 2 registered SuperNodes up after $((SECONDS - t0)) s"

refused() { grep -q "Failed to activate SuperNode" "$work/stranger.log"; }
exited() { ! kill -0 "${supernode_pid[stranger]}" 2>/dev/null; }
wait_for "the SuperLink to refuse the unregistered SuperNode" refused
wait_for "the refused SuperNode to exit" exited
stranger_status=0
wait "${supernode_pid[stranger]}" || stranger_status=$?
grep -q "No SuperNode found with the given public key" "$work/superlink.log" \
    || { echo "the SuperLink did not log the refusal" >&2; exit 1; }
echo "unregistered SuperNode refused by the SuperLink (no SuperNode found with the given" \
     "public key); it stopped ($(grep -m1 -o 'Exit Code: [0-9]*' "$work/stranger.log")," \
     "status $stranger_status)"

overrides="dataset=synthetic logger=none rounds=$ROUNDS method.clients_per_round=2"
overrides+=" dataset.partition.num_nodes=4 dataset.partition.num_target_nodes=2"
overrides+=" checkpoint.every_n_rounds=1 output_root=$work/outputs data_root=$work/data"
t1=$SECONDS
timeout "$RUN_TIMEOUT" flwr run . loopback --stream \
    --run-config "overrides='$overrides'" >"$work/flwr-run.log" 2>&1 \
    || { tail -20 "$work/flwr-run.log" >&2; exit 1; }
echo "flwr run: $ROUNDS rounds in $((SECONDS - t1)) s"
flwr supernode list >"$work/nodes.txt" 2>&1
[ "$(grep -c online "$work/nodes.txt")" -eq 2 ] \
    || { cat "$work/nodes.txt" >&2; echo "expected the 2 registered nodes online" >&2; exit 1; }

"$VENV/bin/python" scripts/flower_check.py "$overrides"
echo "total $((SECONDS - t0)) s"
