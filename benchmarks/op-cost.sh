#!/usr/bin/env bash
# Instructions per map operation (callgrind), this tree against an earlier
# revision, side by side: `benchmarks/op-cost.sh <git-rev> [op:backend ...]`,
# ops `get`, `insert`, `insert_behind`, backends `memory` (default), `sqlite`
# (WAL, synchronous=NORMAL), `csv`.
# Instruction counts do not depend on what else the machine runs, so the
# ratio holds on a loaded machine. Each figure is (Ir at 2n - Ir at n) / n,
# which leaves out opening the map and filling it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
probe="$here/op-cost"
base="${1:?usage: op-cost.sh <git-rev> [get insert insert_behind]}"
shift
ops=("${@:-get insert insert_behind}")
read -r -a ops <<<"${ops[*]}"
n="${OP_COST_N:-100000}"
work="$(mktemp -d)"
trap 'git -C "$root" worktree remove --force "$work/base" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$root" worktree add --detach "$work/base" "$base" >/dev/null 2>&1

build() { # <name> <tree> -> path of the probe binary
    local dir="$work/probe-$1"
    mkdir -p "$dir"
    cp -r "$probe/src" "$dir/"
    sed "s#\.\./\.\./#$2/#g" "$probe/Cargo.toml" >"$dir/Cargo.toml"
    cp "$root/Cargo.lock" "$dir/"
    CARGO_TARGET_DIR="${OP_COST_TARGET:-$root/target/op-cost}/$1" \
        cargo build --release --quiet --manifest-path "$dir/Cargo.toml" >&2 || return 1
    echo "${OP_COST_TARGET:-$root/target/op-cost}/$1/release/persistent-map-op-cost"
}

ir() { # <binary> <op[:backend]> <n> -> total instructions
    local out="$work/cg.out" op="${2%%:*}" backend=memory
    [[ "$2" == *:* ]] && backend="${2#*:}"
    valgrind --tool=callgrind --callgrind-out-file="$out" "$1" "$op" "$3" "$backend" >/dev/null 2>&1
    awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

per_op() { echo $(( ($(ir "$1" "$2" $((2 * n))) - $(ir "$1" "$2" "$n")) / n )); }

before="$(build base "$work/base")" || exit 1
after="$(build current "$root")" || exit 1
echo "| op | $base (Ir/op) | this tree (Ir/op) | ratio |"
echo "|---|---|---|---|"
for op in "${ops[@]}"; do
    b="$(per_op "$before" "$op")"
    a="$(per_op "$after" "$op")"
    echo "| $op | $b | $a | $(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f", a / b}') |"
done
