#!/usr/bin/env bash
# Mutation testing of the math and the training step (issue 31), with mutmut 3 (pip install mutmut).
#
#   bash experiments/mutation.sh                  # every file below, one at a time
#   bash experiments/mutation.sh dream block_noise # only these
#
# mutmut changes one small thing in a copy of a file (a + into a -, a constant, a condition, an argument dropped),
# runs the tests that cover that file, and counts the changes ("mutants") the tests notice ("killed"). A survivor
# is either a hole in the tests or a change that cannot alter any result (an "equivalent" mutant).
#
# Each file runs in its own scratch copy of the project ($MUTATION_WORK/<name>, default /tmp/dream-relay-mutation),
# with only the fast tests that cover it, so one mutant costs seconds. train.py: only its update step (the
# gradient-accumulation loop, the optimizer step and the EMA) and lr_at are mutated; the rest of train.py is fenced
# off with mutmut's `# pragma: no mutate start/end` in the scratch copy only.
# Not part of the test suite or CI. Writes results/reliability/mutation.txt (and mutation_<name>.txt per file).
# MUTATION_LIMIT_S (default 900) caps each file's run: mutants not reached are counted as "not run", never as killed.
# REPORT_ONLY=1 rewrites the reports from the scratch copies of an earlier run.
# RERUN_SURVIVORS=1 re-runs only the survivors (and no-test mutants) of an earlier run, with the current tests/.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${MUTATION_WORK:-/tmp/dream-relay-mutation}"
OUT_DIR="$ROOT/results/reliability"
PY="${PYTHON:-python}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export MPLBACKEND=Agg
LIMIT="${MUTATION_LIMIT_S:-900}"
mkdir -p "$WORK" "$OUT_DIR"

# file name -> the tests that cover it (fast ones only)
declare -A TESTS=(
  [dream]="tests/test_diffusion.py tests/test_relay.py tests/test_mutants.py"
  [block_noise]="tests/test_block_noise.py tests/test_relay.py tests/test_mutants.py"
  [metrics]="tests/test_evaluate.py tests/test_kid_fid.py tests/test_metrics_frechet.py tests/test_holes.py tests/test_mutants.py tests/test_mutants2.py tests/test_mutants3.py tests/test_mutants_metrics.py"
  [relay]="tests/test_relay.py tests/test_relay_project.py tests/test_mutants.py tests/test_mutants2.py tests/test_mutants3.py"
  [diffusion]="tests/test_diffusion.py tests/test_sr_options.py tests/test_fp32_and_grids.py tests/test_holes.py tests/test_mutants.py tests/test_mutants2.py"
  [tasks]="tests/test_sr_options.py tests/test_fp32_and_grids.py tests/test_review.py tests/test_holes.py tests/test_mutants.py tests/test_mutants2.py tests/test_mutants3.py tests/test_mutants_tasks.py"
  [train]="tests/test_holes.py tests/test_mutants.py"
)
ORDER="dream block_noise metrics relay diffusion tasks train"  # smallest first
NAMES="${*:-$ORDER}"

fence_train() {  # mutate only train.py's update step and lr_at (in the scratch copy)
  "$PY" - "$1" <<'EOF'
import sys
path = sys.argv[1]
lines = open(path).read().split('\n')
def index(text):
    return next(i for i, line in enumerate(lines) if line.strip().startswith(text))
def fence(before_line, word):
    at = index(before_line)
    indent = lines[at][:len(lines[at]) - len(lines[at].lstrip())]
    lines.insert(at, f'{indent}# pragma: no mutate {word}')
# mutmut pairs start / end within one block: fence each level of train() on its own
fence('def get_args', 'start')
fence('def train(a):', 'end')
fence('# -- set-up', 'start')
fence('try:', 'end')
fence('# what this step has to do', 'block')
fence('bar.close()', 'block')
fence('teardown_ddp(dist_info)', 'block')
fence('def write_checkpoint', 'start')
fence("if __name__ == '__main__':", 'end')
open(path, 'w').write('\n'.join(lines))
EOF
}

write_cfg() {  # NAME TESTS: mutmut's settings for one file
  others=$(cd "$ROOT" && ls *.py | grep -v "^$1.py$")
  echo '[mutmut]'
  echo "source_paths = $1.py"
  echo 'also_copy ='
  for f in $others configs experiments README.md; do echo "    $f"; done
  echo 'pytest_add_cli_args_test_selection ='
  for t in $2; do echo "    $t"; done
  echo 'pytest_add_cli_args = -p no:cacheprovider -x -q'
}

write_report() {  # DIR NAME SECONDS TESTS: the counts, the score and every survivor's diff
  (cd "$1" && "$PY" -m mutmut export-cicd-stats > /dev/null 2>&1)
  "$PY" - "$@" <<'EOF'
import json, subprocess, sys
dir, name, seconds, tests = sys.argv[1:]
s = json.load(open(f'{dir}/mutants/mutmut-cicd-stats.json'))
tried = s['killed'] + s['survived'] + s['timeout'] + s['suspicious'] + s['segfault']
killed = s['killed'] + s['timeout'] + s['segfault']  # a mutant that hangs or crashes the tests is noticed
score = killed / tried if tried else float('nan')
not_run = s['total'] - tried - s['no_tests'] - s['skipped']
print(f"{name}.py: mutants {s['total']}, run {tried}, killed {s['killed']}, survived {s['survived']}, timeout "
      f"{s['timeout']}, suspicious {s['suspicious']}, no tests {s['no_tests']}, not run (cap) {not_run}, "
      f"score {score:.1%} of those run ({seconds} s; tests: {tests})")
results = subprocess.run([sys.executable, '-m', 'mutmut', 'results'], cwd=dir, capture_output=True, text=True).stdout
for line in results.splitlines():
    mutant, _, status = line.strip().rpartition(': ')
    if status in ('survived', 'no tests'):
        diff = subprocess.run([sys.executable, '-m', 'mutmut', 'show', mutant], cwd=dir, capture_output=True,
                              text=True).stdout
        changed = [l for l in diff.splitlines() if l[:1] in '+-' and l[:3] not in ('---', '+++')]
        print(f'  {status}: {mutant}')
        for l in changed:
            print(f'      {l.strip()}')
EOF
}

for name in $NAMES; do
  tests=""
  for t in ${TESTS[$name]:?unknown file $name (one of: $ORDER)}; do
    [ -f "$ROOT/$t" ] && tests="$tests $t"
  done
  tests="${tests# }"
  dir="$WORK/$name"
  report="$OUT_DIR/mutation_$name.txt"
  if [ -n "${REPORT_ONLY:-}" ]; then
    seconds=$(cat "$dir/seconds" 2>/dev/null || echo '?')
    write_report "$dir" "$name" "$seconds" "$tests" > "$report"
    head -1 "$report"
    continue
  fi
  if [ -n "${RERUN_SURVIVORS:-}" ]; then
    survivors=$(grep -E '^  (survived|no tests): ' "$report" | awk '{print $NF}')
    cp -r "$ROOT/tests/." "$dir/tests/"
    cp -r "$ROOT/tests/." "$dir/mutants/tests/"
    write_cfg "$name" "$tests" > "$dir/setup.cfg"  # the current test selection (new test files included)
    cp "$dir/setup.cfg" "$dir/mutants/setup.cfg"
    echo "== $name.py: re-running $(echo $survivors | wc -w) survivors"
    start=$(date +%s)
    (cd "$dir" && timeout -s INT "$LIMIT" "$PY" -m mutmut run --max-children 1 $survivors > mutmut_rerun.log 2>&1) ||
      echo "mutmut run exited $? (see $dir/mutmut_rerun.log)"
    seconds="$(cat "$dir/seconds") + re-run $(( $(date +%s) - start ))"
    write_report "$dir" "$name" "$seconds" "$tests" > "$report"
    head -1 "$report"
    continue
  fi
  rm -rf "$dir"
  mkdir -p "$dir"
  cp "$ROOT"/*.py "$dir"/
  cp -r "$ROOT/tests" "$dir"/
  [ -d "$ROOT/configs" ] && cp -r "$ROOT/configs" "$dir"/
  [ -d "$ROOT/experiments" ] && cp -r "$ROOT/experiments" "$dir"/
  cp "$ROOT/README.md" "$dir"/  # tests/test_review.py reads it
  [ "$name" = train ] && fence_train "$dir/train.py"
  write_cfg "$name" "$tests" > "$dir/setup.cfg"
  echo "== $name.py: $tests"
  start=$(date +%s)
  (cd "$dir" && timeout -s INT "$LIMIT" "$PY" -m mutmut run --max-children 1 > mutmut_run.log 2>&1) ||
    echo "mutmut run exited $? (124: stopped at the ${LIMIT} s cap; see $dir/mutmut_run.log)"
  seconds=$(( $(date +%s) - start ))
  echo "$seconds" > "$dir/seconds"
  write_report "$dir" "$name" "$seconds" "$tests" > "$report"
  head -1 "$report"
done
for name in $ORDER; do
  [ -f "$OUT_DIR/mutation_$name.txt" ] && head -1 "$OUT_DIR/mutation_$name.txt"
done > "$OUT_DIR/mutation.txt"
cat "$OUT_DIR/mutation.txt"
