# Shared by scripts/install_*_env.sh (sourced): quiet steps that say what they do, how long they took,
# and what to do when one fails. Each step's full output goes to one log file ($INSTALL_LOG).
#
#   step "what is being done" CMD [ARG...]
#
# prints "   what is being done ... ok (12 s)"; on failure the last 25 lines of that step's output,
# the log file and the hint in $INSTALL_HINT, and exits with the command's status.

INSTALL_T0=${INSTALL_T0:-$SECONDS}

step() {
  local what=$1 t0=$SECONDS rc=0
  shift
  printf '   %s ... ' "$what"
  { echo "=== $(date -u +%FT%TZ) $what: $*"; } >>"$INSTALL_LOG"
  "$@" >>"$INSTALL_LOG.step" 2>&1 || rc=$?
  cat "$INSTALL_LOG.step" >>"$INSTALL_LOG"
  if [[ $rc -ne 0 ]]; then
    echo "FAILED (exit $rc after $((SECONDS - t0)) s)"
    echo "---- last lines of its output:" >&2
    grep -v 'is ignored: it is neither a file nor a directory' "$INSTALL_LOG.step" | tail -25 >&2
    rm -f "$INSTALL_LOG.step"
    echo "---- full log: $INSTALL_LOG" >&2
    echo "What to do: ${INSTALL_HINT:-read the log above, fix the cause and run \`make install\` again (it resumes).}" >&2
    exit "$rc"
  fi
  rm -f "$INSTALL_LOG.step"
  echo "ok ($((SECONDS - t0)) s)"
}

install_done() {  # install_done SUMMARY
  echo ">> $1 (total $((SECONDS - INSTALL_T0)) s; log $INSTALL_LOG)"
}
