#!/bin/bash
# Per-thread CPU (ms over 4 s) and context switches (voluntary, involuntary) of each relay
# process in each of the first twelve latency windows of
# `hermit-relay-bench run --only cross`, read from /proc/PID/task/*/{stat,status}; it
# stops the benchmark after them. usage: scripts/cross-threads.sh RELAY_BIN OUT_PREFIX
# (needs target/release/hermit-relay-bench, or BENCH=path)

relay=$1; out=$2
ulimit -n 20000
"${BENCH:-target/release/hermit-relay-bench}" run --relay "$relay" --only cross --out "$out.md" > "$out.bench.log" 2>&1 &
bench=$!
snap() { for t in /proc/$1/task/*; do tid=${t##*/}; s=$(cat $t/stat 2>/dev/null) || continue; s=${s#*) }; set -- $s; echo "$tid $(cat $t/comm | tr ' ' _) $((${12}+${13})) $(grep -E '^(voluntary|nonvoluntary)_ctxt' $t/status | awk '{print $2}' | tr '\n' ' ')"; done; }
prev=""; n=0
while kill -0 $bench 2>/dev/null && [ $n -lt 12 ]; do
  pids=$(pgrep -f "^$relay" | sort | tr '\n' ' ')
  if [ -n "$pids" ] && [ "$pids" != "$prev" ]; then
    sleep 3.5
    now=$(pgrep -f "^$relay" | sort | tr '\n' ' ')
    [ "$now" != "$pids" ] && continue
    prev=$pids; n=$((n+1))
    for p in $pids; do snap $p > $out.w$n.$p.a; done
    sleep 4
    for p in $pids; do snap $p > $out.w$n.$p.b; done
    echo "window $n pids=[$pids]" >> "$out.windows"
    for p in $pids; do
      echo " pid $p (cpu ms / vol cs / invol cs over 4 s)" >> "$out.windows"
      join <(sort $out.w$n.$p.a) <(sort $out.w$n.$p.b) | awk '{c=($7-$3)*10; v=$8-$4; i=$9-$5; if (c+v+i>0) printf "   %-8s %-20s %6d %7d %7d\n", $1, $2, c, v, i}' >> "$out.windows"
    done
  fi
  sleep 0.1
done
kill $bench; pkill -f "^$relay"
