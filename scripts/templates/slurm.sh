#!/bin/bash
# anytrain SLURM job, rendered by trainer/cluster/launcher.py from the run's config (launcher group). Regenerate it with
# `train launcher=slurm ...` rather than editing it. Runs or resumes RUN_DIR on {{ranks}} rank(s) over {{nodes}} node(s).
{{directives}}

# Job start, for the time_to_first_step_s metric: first thing the job does.
ANYTRAIN_JOB_START="$(date +%s.%N)"
export ANYTRAIN_JOB_START
set -o pipefail

RUN_DIR={{run_dir}}
SCRIPT={{script}}
CHAIN_MAX={{chain}}
CHAIN_INDEX="${ANYTRAIN_CHAIN_INDEX:-0}"
JOB_ID="${SLURM_JOB_ID:?this script runs under SLURM: submit it with sbatch}"
cd {{workdir}} || exit 1
echo "anytrain: SLURM job $JOB_ID on $(hostname) at $(date -Is), chain job $((CHAIN_INDEX + 1)) of $((CHAIN_MAX + 1)), run dir $RUN_DIR"

if [ -e "$RUN_DIR/DONE" ]; then
    echo "anytrain: $RUN_DIR/DONE exists, the run reached trainer.max_steps: nothing to do"
    exit 0
fi

{{setup}}

# Chained resubmission: the next job waits for this one to end (whatever its exit) and resumes from the newest
# checkpoint; the chain stops at launcher.chain follow-up jobs or at the first job that finds DONE.
if [ "$CHAIN_INDEX" -lt "$CHAIN_MAX" ]; then
    if NEXT="$(sbatch --parsable --dependency="afterany:$JOB_ID" \
        --export="ALL,ANYTRAIN_CHAIN_INDEX=$((CHAIN_INDEX + 1))" "$SCRIPT")"; then
        NEXT="${NEXT%%;*}"
        echo "$NEXT" >>"$RUN_DIR/job_ids"
        echo "anytrain: chained job $NEXT (runs after $JOB_ID)"
    else
        echo "anytrain: warning: could not submit the chained job; continuing with this one" >&2
    fi
fi

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
{{command}}
rc=$?
echo "anytrain: job $JOB_ID finished at $(date -Is) with exit code $rc"
exit "$rc"
