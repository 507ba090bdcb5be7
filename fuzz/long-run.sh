#!/usr/bin/env bash
# The long run: every fast target for RUNS executions (default 10,000,000), one at a time
# under `nice -n 19`, in the order given (fastest first, so the most targets reach RUNS
# soonest), from the corpora fuzz/seed-corpus.sh wrote, with already built binaries
# (`cargo +nightly fuzz build -a --sanitizer none`, as run-all.sh builds them). Meant to be
# started detached (`setsid nohup fuzz/long-run.sh OUT ... &`); it outlives the shell.
#
# Writes into OUT:
#   <target>.log        libFuzzer's output (its final stats at the end)
#   summary.tsv         one line per finished target: target, executions, seconds,
#                       exec/s, outcome (done = reached RUNS; finding = stopped at a crash,
#                       timeout or out-of-memory input; died = no stats), the artifact,
#                       load average at the end
#   findings/<target>/  each artifact, its minimized form (`*.min`) and the object the
#                       target built from it (`<decoder>`: copy into fuzz/regressions/)
#   status              "running <target> since <time>" or "finished <time>"
#   header              commit, date, RUNS and the order, written at the start
# A finding does not stop the run: the next target starts.
#
# RUNS given as `<N>s` runs each target for N seconds instead (a timed measurement).
# With `-m SECONDS`, first measures every target for SECONDS into OUT/measure (the same
# files), then runs them fastest first by that measurement.
#
# Usage: fuzz/long-run.sh [-m SECONDS] OUT [RUNS] [TARGET...]
#   (default targets: fast-targets.txt)
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
measure=
if [ "${1:-}" = -m ]; then measure=$2; shift 2; fi
out=$(realpath -m "$1")
runs=${2:-10000000}
shift $(($# >= 2 ? 2 : 1))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets <"$here/fast-targets.txt"
if [ -n "$measure" ]; then
    "$0" "$out/measure" "${measure}s" "${targets[@]}"
    mapfile -t targets < <(tail -n +2 "$out/measure/summary.tsv" | sort -t "$(printf '\t')" -k4,4nr | cut -f1)
fi
limit=-runs=$runs
case $runs in *s) limit=-max_total_time=${runs%s} ;; esac
bin=$here/target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release
mkdir -p "$out/findings"
{
    echo "commit $(git -C "$here" rev-parse HEAD)"
    echo "started $(date -u +%FT%TZ)"
    echo "runs $runs"
    echo "order ${targets[*]}"
} >"$out/header"
[ -s "$out/summary.tsv" ] ||
    printf 'target\texecutions\tseconds\texec_per_s\toutcome\tartifact\tload\n' >"$out/summary.tsv"
for t in "${targets[@]}"; do
    echo "running $t since $(date -u +%FT%TZ)" >"$out/status"
    mkdir -p "$here/corpus/$t" "$out/findings/$t"
    start=$SECONDS
    touch "$out/findings/$t/.start"
    nice -n 19 "$bin/$t" "$here/corpus/$t" "$limit" -print_final_stats=1 -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="$out/findings/$t/" >"$out/$t.log" 2>&1
    secs=$((SECONDS - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$t.log" | tail -n 1)
    artifact=$(find "$out/findings/$t" -newer "$out/findings/$t/.start" \
        \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' \) ! -name '*.min' | head -n 1)
    outcome=done
    if [ -n "$artifact" ]; then
        outcome=finding
        nice -n 19 "$bin/$t" -minimize_crash=1 -max_total_time=120 -timeout=10 \
            -exact_artifact_path="$artifact.min" "$artifact" >/dev/null 2>&1
        [ -s "$artifact.min" ] || cp "$artifact" "$artifact.min"
        ISLAND_FUZZ_DUMP="$out/findings/$t" "$bin/$t" -timeout=60 "$artifact.min" \
            >"$out/findings/$t/repro.log" 2>&1
    elif [ -z "$execs" ]; then
        outcome=died
    fi
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "${execs:-0}" "$secs" \
        "$(( ${execs:-0} / (secs > 0 ? secs : 1) ))" "$outcome" "${artifact:+$(basename "$artifact")}" \
        "$load" >>"$out/summary.tsv"
done
echo "finished $(date -u +%FT%TZ)" >"$out/status"
