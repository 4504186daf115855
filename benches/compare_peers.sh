#!/usr/bin/env bash
# dlc against its peers on this machine, side by side: the MNIST MLP training step (784 →
# 128 ReLU → 10, softmax cross-entropy, Adam) at batch 64 and 256 against JAX, and the lab
# CNN's step (models/cnn.dl, batch 64) against TensorFlow's fastest variant (JAX's CPU
# convolution is several times slower here), on 1 thread (pinned to core 0) and 2 threads.
# Each configuration runs dlc and the peer in turn, PAIRS times (interleaved, so both see
# the same machine), and prints the median ratio of examples per second (above 1: dlc is
# faster). The character LSTM (models/lstm.dl at the peers' sizes: vocabulary 83, embedding
# 256, hidden 512, seq 100, batch 32, Adam) runs against TensorFlow's fastest variant on 1
# thread and JAX's lax.scan on 2 (the faster peer for each). CASES=mlp, CASES=cnn or
# CASES=lstm runs one part.
#
#   bash ../shared/peers/setup.sh            # once: the peers' venv
#   bash benches/compare_peers.sh            # from the repository root
#
# Environment: DATA (default ../shared/data), PEERS (../shared/peers),
# PEERS_VENV (~/.cache/dlc-peers-venv), PAIRS (3).
set -euo pipefail
DATA=${DATA:-../shared/data}
PEERS=${PEERS:-../shared/peers}
PY=${PEERS_VENV:-$HOME/.cache/dlc-peers-venv}/bin/python
PAIRS=${PAIRS:-3}
CASES=${CASES:-mlp cnn lstm}
[ -x "$PY" ] || { echo "no peers venv at $PY: run bash $PEERS/setup.sh" >&2; exit 1; }
cargo build --release -q --bin dlc
DLC=$PWD/target/release/dlc
echo "# $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load: $(cut -d' ' -f1-3 /proc/loadavg)"
median_row() {  # LABEL THREADS dlc_ms:peer_ms...
  python3 - "$@" <<'PY'
import statistics, sys
b, t, *pairs = sys.argv[1:]
d = [float(p.split(":")[0]) for p in pairs]
j = [float(p.split(":")[1]) for p in pairs]
r = statistics.median(jj / dd for dd, jj in zip(d, j))
print(f"{b:<10} {t:<8} {statistics.median(d):12.3f} {statistics.median(j):12.3f} {r:8.2f}")
PY
}
case " $CASES " in *" mlp "*)
printf '%-10s %-8s %12s %12s %8s\n' batch threads dlc_ms JAX_ms ratio
for t in 1 2; do
  for b in 64 256; do
    pin=""; [ "$t" = 1 ] && pin="taskset -c 0"
    rows=""
    for _ in $(seq "$PAIRS"); do
      d=$($pin "$DLC" bench models/mlp.dl --data mnist="$DATA/mnist" --batch "$b" --threads "$t" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ms_per_step"])')
      j=$(cd "$PEERS" && $pin "$PY" bench_jax.py --threads "$t" --cases "mlp$b" 2>/dev/null | grep -m1 '^RESULT' | grep -oE ' ms_per_step=[0-9.]+' | cut -d= -f2)
      rows="$rows $d:$j"
    done
    median_row "$b" "$t" $rows
  done
done
;; esac
case " $CASES " in *" cnn "*)
# TensorFlow's fastest variant per run (tf.function with and without XLA, keras fit).
printf '%-10s %-8s %12s %12s %8s\n' cnn_batch threads dlc_ms TF_ms ratio
for t in 1 2; do
  pin=""; [ "$t" = 1 ] && pin="taskset -c 0"
  rows=""
  for _ in $(seq "$PAIRS"); do
    d=$($pin "$DLC" bench models/cnn.dl --data mnist="$DATA/mnist" --batch 64 --threads "$t" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ms_per_step"])')
    f=$(cd "$PEERS" && $pin "$PY" bench_tf.py --threads "$t" --cases cnn 2>/dev/null | grep '^RESULT' | grep -oE ' ms_per_step=[0-9.]+' | cut -d= -f2 | sort -g | head -1)
    rows="$rows $d:$f"
  done
  median_row 64 "$t" $rows
done
;; esac
case " $CASES " in *" lstm "*)
# TensorFlow's fastest variant on 1 thread, JAX (lax.scan, input projection hoisted) on 2.
SONGS=$DATA/irish-folk-abc/irish.abc
printf '%-10s %-8s %12s %12s %8s\n' lstm_h512 threads dlc_ms peer_ms ratio
for t in 1 2; do
  pin=""; peer=bench_jax.py
  [ "$t" = 1 ] && pin="taskset -c 0" && peer=bench_tf.py
  rows=""
  for _ in $(seq "$PAIRS"); do
    d=$($pin "$DLC" bench models/lstm.dl --data songs="$SONGS" --set hidden=512 --data-arg seq=100 --batch 32 --steps 5 --repeats 5 --threads "$t" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ms_per_step"])')
    p=$(cd "$PEERS" && $pin "$PY" $peer --threads "$t" --cases lstm512 2>/dev/null | grep '^RESULT' | grep -oE ' ms_per_step=[0-9.]+' | cut -d= -f2 | sort -g | head -1)
    rows="$rows $d:$p"
  done
  median_row 32 "$t" $rows
done
;; esac
