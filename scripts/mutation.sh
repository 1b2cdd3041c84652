#!/usr/bin/env bash
# Mutation testing of helpers/ with mutmut 3: each mutant is a one-line change to a
# helper (a flipped comparison, a changed constant, a dropped argument); the helper tests
# that cover it run against it, and a mutant they do not fail on has "survived".
#
#   bash scripts/mutation.sh               # every module of helpers/
#   bash scripts/mutation.sh results rl    # only these modules
#
# Not part of scripts/test.sh: one small module (results, about 150 mutants) takes about
# 5 minutes on 2 cores, most of it mutmut running the whole helper suite once to learn
# which test covers which function; all of helpers/ (about 4,000 mutants) takes hours.
# Survivors that no test could kill are listed, with the reason, in
# tests/equivalent_mutants.md.
#
# The project is installed editable, so .venv's .pth file puts this checkout on
# sys.path: a test could import the original helpers instead of mutmut's mutated copy in
# mutants/. mutmut 3 removes the checkout from sys.path in its runner and puts mutants/
# first; this script checks that it worked (some mutant killed), since a run whose tests
# saw only the original code would report every mutant as surviving.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
# One thread per test process: mutmut forks its workers after torch started its thread
# pools, and parallel kernels in a forked child can spin until mutmut's time limit,
# which then reports mutants as "timeout" that the tests would have judged in 0.1 s.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
patterns=()
for module in "$@"; do
    if [ ! -f "helpers/${module//.//}.py" ] && [ ! -f "helpers/${module//.//}/__init__.py" ]; then
        echo "error: no helper module helpers/${module//.//}.py" >&2
        exit 2
    fi
    patterns+=("helpers.${module}.*")
done
rm -rf mutants
"$UV" run --locked mutmut run "${patterns[@]}"
summary=$("$UV" run --locked mutmut results --all true)
killed=$(grep -c ": killed$" <<<"$summary" || true)
survived=$(grep -c ": survived$" <<<"$summary" || true)
echo "==> killed $killed, survived $survived"
if [ "$killed" -eq 0 ]; then
    echo "error: no mutant was killed: the tests did not import the mutated helpers in mutants/" >&2
    exit 1
fi
grep -E ": (survived|timeout|suspicious)$" <<<"$summary" || true
