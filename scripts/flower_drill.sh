#!/usr/bin/env bash
# Fault drills on a real loopback deployment (TLS, SuperNode authentication; flower_loopback.sh):
#   1. SIGKILL a SuperNode (with its ClientApp processes and its node worker) in the middle of
#      round 1: the round goes on without it once the SuperLink sees it offline (no heartbeat:
#      ~60 s), its failures are counted in flower/rounds.csv, and started again (a new worker on
#      the old socket) with its key it rejoins under the same node id; x_ag equals the
#      in-process run in which that node fails in the same rounds.
#   2. SIGKILL the SuperLink (with its SuperExec and the ServerApp) in the middle of a run, after
#      round 1 was saved: a new SuperLink on the same database, the SuperNodes reconnecting, and
#      `flwr run` again resumes from the saved server state and ends with x_ag equal, bit for bit,
#      to the in-process (uninterrupted) run.
# Bounded in time (every wait has a timeout); every process is stopped at exit.
#   VENV=.venv scripts/flower_drill.sh      (make flower-drill)
cd "$(dirname "$0")/.."
source scripts/flower_loopback.sh

trains() { grep -c "Receiving: train message" "$work/$1.log" || true; }  # train messages so far
has_trained() { [ "$(trains "$1")" -ge "$2" ]; }                         # has_trained NODE N
saved_state() { [ -n "$(find "$1" -name server_state.ckpt 2>/dev/null)" ]; }

t0=$SECONDS
check_ports_free 2
start_deployment 2
echo "TLS SuperLink and 2 registered SuperNodes up after $((SECONDS - t0)) s"

# Drill 1: a SuperNode killed mid-round, and started again.
t1=$SECONDS
kill_overrides="$two_nodes rounds=4 output_root=$work/outputs-kill"
run_flwr "$work/run-kill.log" "$kill_overrides"
wait_for "$RUN_TIMEOUT" "round 1 to reach node1" has_trained node1 1
kill_supernode node1
echo "drill 1: node1 SIGKILLed in round 1 after $((SECONDS - t1)) s"
wait_for "$RUN_TIMEOUT" "round 2 to start (round 1 finished without node1)" has_trained node0 2
start_supernode node1 1
wait_for "$START_TIMEOUT" "SuperNode node1 to rejoin" supernode_up node1
echo "drill 1: round 1 finished without node1 after $((SECONDS - t1)) s; node1 started again"
finish_run "$work/run-kill.log"
echo "drill 1: 4 rounds in $((SECONDS - t1)) s; node1 trained $(trains node1) time(s) after" \
     "it rejoined"
"$VENV/bin/python" scripts/flower_check.py "$kill_overrides" --killed-partition 1

# Drill 2: the SuperLink (and the ServerApp under it) killed mid-run, then run again.
t2=$SECONDS
restart_overrides="$two_nodes rounds=3 output_root=$work/outputs-restart"
run_flwr "$work/run-stopped.log" "$restart_overrides"
wait_for "$RUN_TIMEOUT" "round 1 to be saved" saved_state "$work/outputs-restart"
superlink_pid=${pids[0]}
kill_tree KILL "$superlink_pid"                   # the SuperLink, its SuperExec, the ServerApp
forget "$superlink_pid"
kill_tree KILL "$run_pid"
forget "$run_pid"
echo "drill 2: SuperLink and ServerApp SIGKILLed after round 1 was saved, $((SECONDS - t2)) s"
start_superlink
run_flwr "$work/run-resumed.log" "$restart_overrides"
finish_run "$work/run-resumed.log"
echo "drill 2: resumed and finished after $((SECONDS - t2)) s"
"$VENV/bin/python" scripts/flower_check.py "$restart_overrides" --resumed
echo "total $((SECONDS - t0)) s"
