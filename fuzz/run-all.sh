#!/usr/bin/env bash
# Runs fuzz targets for SECONDS each and reports executions, executions per second and
# findings. Every crash, timeout or out-of-memory input is minimized, and the object the
# target built from it is stored as fuzz/regressions/<decoder>/<target>-<hash>, which
# tests/it/fuzz_regressions.rs replays in ordinary CI (commit it with the fix).
#
# Usage: fuzz/run-all.sh [-j JOBS] [-t TARGET]... SECONDS
#   default targets: every fast target (fast-targets.txt); `-t e2e_repo_pack` etc. for
#   the slow end-to-end ones. JOBS targets run at once (default 1), each on one core
#   (libFuzzer's default: one process, one thread), under `nice -n 19`.
#   FUZZ_SANITIZER=address builds with ASan (default none: the decoders are safe Rust and
#   the build keeps debug assertions, so overflow and bounds panics are still caught, at
#   two to three times the speed).
# Exit: 0 no findings, 3 findings (listed), 1 failure (build, or a target that did not run).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
jobs=1
targets=()
while getopts "j:t:" o; do
    case $o in
        j) jobs=$OPTARG ;;
        t) targets+=("$OPTARG") ;;
        *) echo "usage: $0 [-j JOBS] [-t TARGET]... SECONDS" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || { echo "usage: $0 [-j JOBS] [-t TARGET]... SECONDS" >&2; exit 2; }
secs=$1
[ ${#targets[@]} -gt 0 ] || mapfile -t targets <fast-targets.txt
san=${FUZZ_SANITIZER:-none}

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# -a: debug assertions (and with them overflow checks) in the fuzzed code.
if ! cargo +nightly fuzz build -a --sanitizer "$san" >"$out/build.log" 2>&1; then
    tail -n 40 "$out/build.log" >&2
    echo "run-all.sh: build failed" >&2
    exit 1
fi
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin=$here/target/$triple/release

run_one() { # TARGET
    local t=$1
    mkdir -p "corpus/$t" "artifacts/$t"
    nice -n 19 "$bin/$t" "corpus/$t" -max_total_time="$secs" -print_final_stats=1 \
        -timeout=10 -rss_limit_mb=2048 -artifact_prefix="artifacts/$t/" \
        >"$out/$t.log" 2>&1 || true
}
export -f run_one
export bin secs out

printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'run_one {}'

status=0
printf '| target | executions | exec/s | corpus | findings |\n|---|---|---|---|---|\n'
for t in "${targets[@]}"; do
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$t.log" | tail -n 1)
    if [ -z "$execs" ]; then
        echo "run-all.sh: $t did not run; its log:" >&2
        tail -n 20 "$out/$t.log" >&2
        status=1
        continue
    fi
    found=0
    for a in artifacts/"$t"/crash-* artifacts/"$t"/timeout-* artifacts/"$t"/oom-*; do
        [ -e "$a" ] || continue
        found=$((found + 1))
        min="$out/$t-min"
        nice -n 19 "$bin/$t" -minimize_crash=1 -max_total_time=60 -timeout=10 \
            -exact_artifact_path="$min" "$a" >/dev/null 2>&1 || true
        [ -s "$min" ] || cp "$a" "$min"
        dump="$out/dump-$t"
        rm -rf "$dump" && mkdir -p "$dump"
        ISLAND_FUZZ_DUMP="$dump" "$bin/$t" -timeout=60 "$min" >"$out/$t.repro" 2>&1 || true
        for d in "$dump"/*; do
            [ -e "$d" ] || continue
            dec=$(basename "$d")
            mkdir -p "regressions/$dec"
            name="$t-$(sha1sum "$d" | cut -c1-12)"
            cp "$d" "regressions/$dec/$name"
            echo "finding: $a -> fuzz/regressions/$dec/$name" >&2
            grep -m1 -E "panicked|ERROR: libFuzzer" "$out/$t.repro" >&2 || true
        done
        mv "$a" "$a.reported"
    done
    [ "$found" = 0 ] || status=3
    printf '| %s | %s | %s | %s | %s |\n' "$t" "$execs" "$((execs / secs))" \
        "$(ls "corpus/$t" | wc -l)" "$found"
done
exit "$status"
