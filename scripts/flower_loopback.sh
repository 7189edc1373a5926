# Sourced by flower_deploy_smoke.sh, flower_drill.sh and flower_deploy_times.sh: a Flower
# deployment on 127.0.0.1, closed to strangers. A throwaway CA and server certificate (openssl)
# give the SuperLink TLS; every SuperNode has its own key (ssh-keygen, ECDSA P-384), registered
# with `flwr supernode register` before it starts, and the SuperLink (--enable-supernode-auth)
# refuses any other. Beside every SuperNode runs its node worker (mglightning.flower.node_worker),
# named in the SuperNode's --node-config (worker-socket=...): it imports torch and builds the
# node once, where each of the SuperNode's ClientApp processes (one a message) would do it
# again; FLOWER_NODE_WORKERS=0 starts none, and the ClientApps solve themselves.
# Certificates, keys, the SuperLink's database, logs and run outputs live in
# one temporary folder ($work), kept (for the logs) on failure or with FLOWER_KEEP_LOGS=1,
# removed otherwise.
# Every wait is bounded; every process started here, and every process it spawned (SuperExec,
# ServerApp, ClientApps), is stopped by its PID when the script exits, however it exits.
set -euo pipefail

VENV=$(cd "${VENV:-.venv}" && pwd)                # absolute: the SuperLink spawns from PATH
PORT=${FLOWER_PORT:-19100}                       # SuperLink; SuperNode i serves PORT+1+i
START_TIMEOUT=${FLOWER_START_TIMEOUT:-120}       # seconds for each process to come up
RUN_TIMEOUT=${FLOWER_RUN_TIMEOUT:-600}           # seconds for one flwr run, or a round to come
NODE_WORKERS=${FLOWER_NODE_WORKERS:-1}           # 1: a node worker beside every SuperNode
export PATH="$VENV/bin:$PATH" OMP_NUM_THREADS=1 WANDB_MODE=disabled
work=$(mktemp -d -t mg-flower.XXXXXX)
export FLWR_HOME="$work/flwr-home"
mkdir -p "$FLWR_HOME" "$work/tls" "$work/keys"
# The tiny synthetic config, 2 training nodes, both in every round, the server state saved each
# round: add rounds= and output_root=.
two_nodes="dataset=synthetic logger=none method.clients_per_round=2 checkpoint.every_n_rounds=1"
two_nodes+=" dataset.partition.num_nodes=4 dataset.num_target_nodes=2 data_root=$work/data"
pids=()                                           # started here, each in its own session
declare -A supernode_pid=() worker_pid=()         # SuperNode name -> its PID, its worker's

descendants() {  # descendants PID: every process below PID, the deepest first
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do descendants "$child"; echo "$child"; done
}

kill_tree() {  # kill_tree SIGNAL PID: PID and all it spawned (the SuperLink detaches its
    local tree   # SuperExec into a session of its own, so a process group does not reach it)
    tree="$(descendants "$2") $2"
    kill "-$1" $tree 2>/dev/null || true
}

stop_all() {
    local status=$? pid tree=""
    for pid in "${pids[@]}"; do tree+=" $(descendants "$pid") $pid"; done
    kill -TERM $tree 2>/dev/null || true
    for _ in $(seq 20); do kill -0 $tree 2>/dev/null || break; sleep 0.5; done
    kill -KILL $tree 2>/dev/null || true
    if [ "$status" -ne 0 ]; then echo "failed; logs in $work" >&2
    elif [ -n "${FLOWER_KEEP_LOGS:-}" ]; then echo "logs in $work" >&2
    else rm -rf "$work"; fi
}
trap stop_all EXIT
trap 'exit 130' INT TERM

start() {  # start LOG COMMAND...: in a session of its own, whose id is its PID
    local log=$1; shift
    setsid "$@" >"$log" 2>&1 &
    pids+=($!)
}

forget() {  # forget PID: a process stopped here, reaped, not to be signalled again (its PID
    local pid kept=()  # may be reused)
    wait "$1" 2>/dev/null || true
    for pid in "${pids[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
    pids=("${kept[@]}")
}

wait_for() {  # wait_for SECONDS WHAT CHECK...: run CHECK every second until it succeeds
    local seconds=$1 what=$2; shift 2  # (short sleeps: a trapped signal is handled at once)
    for _ in $(seq "$seconds"); do "$@" 2>/dev/null && return 0; sleep 1; done
    echo "timed out after ${seconds}s waiting for $what" >&2
    return 1
}

gone() { ! kill -0 "$1" 2>/dev/null; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_ports_free() {  # check_ports_free N: PORT..PORT+N are free
    local port
    for port in $(seq "$PORT" $((PORT + $1))); do
        if port_open "$port"; then echo "port $port is in use: set FLOWER_PORT" >&2; exit 1; fi
    done
}

make_certificates() {  # a CA valid for a day, and its certificate for 127.0.0.1
    local tls="$work/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -days 1 \
        -subj "/CN=mglightning throwaway CA" -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes \
        -subj "/CN=127.0.0.1" -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
    printf 'subjectAltName = IP:127.0.0.1, DNS:localhost\n' >"$tls/server.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" \
        -CAcreateserial -days 1 -extfile "$tls/server.ext" -out "$tls/server.pem" 2>/dev/null
    cat >"$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "loopback"

[superlink.loopback]
address = "127.0.0.1:$PORT"
root-certificates = "$tls/ca.crt"
TOML
}

make_node_key() { ssh-keygen -q -t ecdsa -b 384 -N "" -C "$1" -f "$work/keys/$1"; }

start_superlink() {  # TLS, and only registered SuperNodes; the state in $work/superlink.db
    start "$work/superlink.log" flower-superlink --host 127.0.0.1 --port "$PORT" \
        --ssl-ca-certfile "$work/tls/ca.crt" --ssl-certfile "$work/tls/server.pem" \
        --ssl-keyfile "$work/tls/server.key" --enable-supernode-auth \
        --database "$work/superlink.db" --disable-runtime-dependency-installation
    wait_for "$START_TIMEOUT" "the SuperLink on port $PORT" port_open "$PORT"
}

register_node() { flwr supernode register "$work/keys/$1.pub" >>"$work/register.log" 2>&1; }

# start_supernode NAME PARTITION [INDEX]: with key NAME, on PORT+1+INDEX, and its node worker
# (unless FLOWER_NODE_WORKERS=0), whose socket lies in a folder of its own under $work (0700)
start_supernode() {
    local name=$1 partition=$2 index=${3:-$2} node_config="partition-id=$2"
    if [ "$NODE_WORKERS" != 0 ]; then
        local socket="$work/worker-$name/node.sock"  # the worker runs this checkout, as the FAB
        start "$work/worker-$name.log" env PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" \
            "$VENV/bin/python" -m mglightning.flower.node_worker --socket "$socket"
        worker_pid[$name]=$!
        node_config+=" worker-socket='$socket'"
    fi
    start "$work/$name.log" flower-supernode --superlink "127.0.0.1:$PORT" \
        --root-certificates "$work/tls/ca.crt" --auth-supernode-private-key "$work/keys/$name" \
        --host 127.0.0.1 --port $((PORT + 1 + index)) --node-config "$node_config"
    supernode_pid[$name]=$!
}

supernode_up() {  # the SuperNode connected, and its worker (if any) serves its socket
    grep -q "SuperNode ID" "$work/$1.log" \
        && { [ "$NODE_WORKERS" = 0 ] || grep -q "serving" "$work/worker-$1.log"; }
}

kill_supernode() {  # kill_supernode NAME: SIGKILL the SuperNode, its ClientApps and its worker
    local pid
    for pid in "${supernode_pid[$1]}" ${worker_pid[$1]:-}; do
        kill_tree KILL "$pid"
        forget "$pid"
    done
}

start_deployment() {  # start_deployment N: the SuperLink, and SuperNodes node0..node<N-1>, each
    local i           # with its key registered, node<i> holding training node i; waits for all
    make_certificates
    start_superlink
    for i in $(seq 0 $(($1 - 1))); do
        make_node_key "node$i"; register_node "node$i"; start_supernode "node$i" "$i"
    done
    for i in $(seq 0 $(($1 - 1))); do
        wait_for "$START_TIMEOUT" "SuperNode node$i" supernode_up "node$i"
    done
}

run_app() {  # run_app LOG APP RUN_CONFIG: flwr run of the app in folder APP, in the background;
    start "$1" timeout "$RUN_TIMEOUT" flwr run "$2" loopback --stream --run-config "$3"
    run_pid=$!  # its PID in $run_pid
}

run_flwr() { run_app "$1" . "overrides='$2'"; }  # run_flwr LOG OVERRIDES: our app

run_id() { grep -o 'Successfully started run [0-9]*' "$1" | grep -o '[0-9]*$'; }  # run_id LOG

run_field() {  # run_field LOG KEY...: a field of `flwr ls --format json` for LOG's run
    flwr ls --run-id "$(run_id "$1")" --format json | "$VENV/bin/python" -c '
import json, sys
value = json.load(sys.stdin)["runs"][0]
for key in sys.argv[1:]:
    value = value[key]
print(value)' "${@:2}"
}

# finish_run LOG [STATUS]: wait for the flwr run in the background to end, and exit 1 unless the
# SuperLink has it as STATUS (default finished:completed; finished:failed when the ServerApp
# raised, finished:stopped). `flwr run --stream` exits 0 whatever the ServerApp did.
finish_run() {
    local expected=${2:-finished:completed} status
    wait_for "$RUN_TIMEOUT" "flwr run to finish ($1)" gone "$run_pid" \
        && wait "$run_pid" || { tail -20 "$1" >&2; echo "flwr run failed ($1)" >&2; exit 1; }
    forget "$run_pid"
    status=$(run_field "$1" status) || status="unknown (flwr ls failed)"
    if [ "$status" != "$expected" ]; then
        tail -20 "$1" >&2
        echo "flwr run $(run_id "$1") ended $status, not $expected ($1)" >&2
        exit 1
    fi
}
