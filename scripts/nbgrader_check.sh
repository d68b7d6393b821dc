#!/usr/bin/env bash
# The instructor's round trip through nbgrader, on every assignment (or the ones named: 02 04 ...):
#
#   generate_assignment --no-db   solutions/NN_*.ipynb -> the students' version (release/NN/)
#   validate                      the solution passes every graded cell
#   validate --invert             the released, unsolved version fails every graded cell
#   autograde, generate_feedback  a student who handed in the solution gets full marks and a feedback page
#
# Usage (from the repository root; nbgrader is not a dependency of the course):
#   .venv/bin/pip install nbgrader==0.9.6        # or PYTHONPATH pointing to an nbgrader install
#   scripts/nbgrader_check.sh [NN ...]
#
# It works in a temporary course folder and leaves the repository alone. It executes every notebook
# three times (11 minutes for 01-12 on a 2-core laptop, about a minute an assignment; every solution
# notebook is one, fifteen today), so it is a script rather than part of `make test`.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
NUMBERS=("$@")
if [ ${#NUMBERS[@]} -eq 0 ]; then
    for path in "$ROOT"/solutions/[0-9][0-9]_*.ipynb; do NUMBERS+=("$(basename "$path" | cut -c1-2)"); done
fi

COURSE="$(mktemp -d)"
trap 'rm -rf "$COURSE"' EXIT
cd "$COURSE"
cat > nbgrader_config.py <<EOF
c = get_config()
c.CourseDirectory.course_id = "llama-from-scratch"
c.CourseDirectory.root = "$COURSE"
c.Exchange.root = "$COURSE/exchange"
c.ExecutePreprocessor.timeout = 600
EOF
mkdir -p exchange
nbgrader() { "$PYTHON" -m nbgrader "$@"; }  # reads nbgrader_config.py from this folder

failed=()
for number in "${NUMBERS[@]}"; do
    solution=$(ls "$ROOT"/solutions/"$number"_*.ipynb)
    name=$(basename "$solution")
    echo "== $number: $name"
    mkdir -p "source/$number"
    cp "$solution" "source/$number/$name"
    nbgrader generate_assignment "$number" --no-db --force --log-level=ERROR
    solved=$(nbgrader validate "source/$number/$name" 2>&1 | tail -n 5)
    unsolved=$(nbgrader validate --invert "release/$number/$name" 2>&1 | tail -n 5)
    echo "   validate:          $(echo "$solved" | grep -E "Success|FAILED|ERROR|passed|failed" | head -1)"
    echo "   validate --invert: $(echo "$unsolved" | grep -E "Success|FAILED|ERROR|passed|failed" | head -1)"
    grep -q "Success" <<< "$solved" || failed+=("$number (validate)")
    grep -q "Success" <<< "$unsolved" || failed+=("$number (validate --invert)")

    # A student who hands in the solution: autograded with full marks, and a feedback page.
    mkdir -p "submitted/student/$number"
    cp "$solution" "submitted/student/$number/$name"
    nbgrader db student add student >/dev/null 2>&1 || true
    nbgrader db assignment add "$number" >/dev/null 2>&1 || true
    {   # nbgrader's own warnings (database sessions, kernels over TCP) go to a log, shown if a step fails
        nbgrader generate_assignment "$number" --force --log-level=WARN  # records the cells in the database
        nbgrader autograde "$number" --force --log-level=WARN
        nbgrader generate_feedback "$number" --force --log-level=WARN
    } > "$COURSE/grading.log" 2>&1 || { cat "$COURSE/grading.log"; failed+=("$number (autograde)"); continue; }
    score=$("$PYTHON" - "$COURSE" "$number" <<'EOF'
import sys
from nbgrader.api import Gradebook
with Gradebook(f"sqlite:///{sys.argv[1]}/gradebook.db") as gradebook:
    submission = gradebook.find_submission(sys.argv[2], "student")
    print(f"{submission.score:g} of {submission.max_score:g}")
EOF
)
    feedback=$(ls "feedback/student/$number/"*.html 2>/dev/null | head -1)
    echo "   autograde:         $score; feedback: ${feedback:+$(basename "$feedback")}"
    [ -n "$feedback" ] || failed+=("$number (generate_feedback)")
    read -r got _ max <<< "$score"
    [ "$got" = "$max" ] || failed+=("$number (autograde: $score)")
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all ${#NUMBERS[@]} assignments: validate, validate --invert, autograde and generate_feedback as expected"
