#!/usr/bin/env bash
# The project's one test command (the README and .ci/run call exactly this):
#
#   1. starts the real Kafka and Cassandra with scripts/services.sh (installing their jars with
#      mvn on a fresh machine) and exports KAFKA_BOOTSTRAP / CASSANDRA_NODES for the tests;
#      with --secure, so Kafka also has its SASL_SSL listener and the TLS + password
#      cassandra-secure node runs too (tests/kafka_cassandra_secure.rs), and the CA path, user
#      names and passwords of `services.sh env --secure` are exported as well;
#   2. installs Debian's chromium when it is missing (tests/browser.rs drives it headless);
#   3. runs cargo fmt --check, clippy -D warnings and the whole workspace's tests, in that
#      order, in the default dev/test profile only;
#   4. stops on exit only the services this run started, so a developer's running services
#      stay up.
#
# Every cargo step runs even when an earlier one failed, so one run reports everything that is
# wrong; the exit status is non-zero if any step failed. Each step's wall time is printed, and
# a summary at the end.
#
# Environment: CARGO_TARGET_DIR [$HOME/.cache/coinstream/target]: outside the clone, so repeated
# CI runs on one machine build incrementally. COINSTREAM_VENV [$HOME/.cache/coinstream/venv]: the
# Python venv with the readers of scripts/requirements.txt (pandas, pyarrow, DuckDB, deltalake),
# made from PyPI on first use and again whenever that file changes; its python is exported as
# COINSTREAM_PYTHON for tests/readers.rs. COINSTREAM_AIRFLOW_VENV
# [$HOME/.cache/coinstream/venv-airflow]: Apache Airflow from scripts/requirements-airflow.txt, made
# and remade the same way (a first install takes a few minutes); its `airflow` is exported as
# COINSTREAM_AIRFLOW for tests/airflow.rs. scripts/services.sh's variables (ports, heaps,
# timeouts, COINSTREAM_SERVICES_DIR) pass through unchanged.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/coinstream/target}"
SERVICES=scripts/services.sh

log() { printf '%s test: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# Microseconds since the epoch; EPOCHREALTIME needs bash 5, SECONDS is the fallback.
now_us() {
  if [[ -n "${EPOCHREALTIME:-}" ]]; then
    echo "${EPOCHREALTIME/[.,]/}"
  else
    echo "$((SECONDS * 1000000))"
  fi
}
fmt_secs() { printf '%d.%01ds' "$(($1 / 1000000))" "$((($1 % 1000000) / 100000))"; }

command -v cargo >/dev/null 2>&1 ||
  die "cargo not found on PATH: install Rust with rustup (https://rustup.rs), toolchain $(
    sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml
  ) or newer, plus: rustup component add rustfmt clippy"
for component in fmt clippy; do
  cargo "$component" --version >/dev/null 2>&1 ||
    die "cargo $component is missing: rustup component add ${component/fmt/rustfmt}"
done

# --- services ---------------------------------------------------------------------------------

# Only services that were stopped before this run count as ours. One that is "running but not
# answering" belongs to someone else's `up` still in progress: we wait for it but never stop it.
OURS=()
stop_ours() {
  local rc=$?
  if ((${#OURS[@]})); then
    log "stopping the services this run started: ${OURS[*]}"
    "$SERVICES" down "${OURS[@]}" || log "warning: scripts/services.sh down ${OURS[*]} failed"
  fi
  exit "$rc"
}
trap stop_ours EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

status="$("$SERVICES" status --secure 2>&1)" || true
for svc in kafka cassandra cassandra-secure; do
  if grep -q "^$svc: stopped" <<<"$status"; then
    OURS+=("$svc")
  fi
done
log "services before this run:"$'\n'"$status"

STEP_NAMES=()
STEP_TIMES=()
STEP_RESULTS=()
FAILED=0

# step NAME CMD...: runs CMD, records its wall time and result; never exits the script.
step() {
  local name=$1 t0 rc=0 elapsed
  shift
  log "==> $name: $*"
  t0="$(now_us)"
  "$@" || rc=$?
  elapsed=$(($(now_us) - t0))
  STEP_NAMES+=("$name")
  STEP_TIMES+=("$(fmt_secs "$elapsed")")
  if ((rc == 0)); then
    STEP_RESULTS+=(ok)
    log "<== $name: ok in $(fmt_secs "$elapsed")"
  else
    STEP_RESULTS+=("FAILED (exit $rc)")
    FAILED=1
    log "<== $name: FAILED (exit $rc) after $(fmt_secs "$elapsed")"
  fi
  return "$rc"
}

summary() {
  local i
  log "summary:"
  for i in "${!STEP_NAMES[@]}"; do
    printf '  %-10s %9s  %s\n' "${STEP_NAMES[$i]}" "${STEP_TIMES[$i]}" "${STEP_RESULTS[$i]}" >&2
  done
}

# Without the services every integration test would fail anyway: stop here.
if ! step services "$SERVICES" up --secure; then
  summary
  die "the services did not come up; see: $SERVICES logs"
fi

while IFS='=' read -r key value; do
  case "$key" in
    KAFKA_BOOTSTRAP | CASSANDRA_NODES | KAFKA_JARS | JAVA | KAFKA_SECURE_BOOTSTRAP | \
      KAFKA_SASL_USERNAME | KAFKA_SASL_PASSWORD | CASSANDRA_SECURE_NODES | CASSANDRA_USERNAME | \
      CASSANDRA_PASSWORD | COINSTREAM_TLS_CA | COINSTREAM_TLS_CLIENT_CERT | \
      COINSTREAM_TLS_CLIENT_KEY | COINSTREAM_TLS_OTHER_CA) export "$key=$value" ;;
    # The value is not printed: some of these are passwords.
    *) die "unexpected variable from $SERVICES env --secure: $key" ;;
  esac
done < <("$SERVICES" env --secure)
: "${KAFKA_BOOTSTRAP:?$SERVICES env printed no KAFKA_BOOTSTRAP}"
: "${CASSANDRA_NODES:?$SERVICES env printed no CASSANDRA_NODES}"
log "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP CASSANDRA_NODES=$CASSANDRA_NODES CARGO_TARGET_DIR=$CARGO_TARGET_DIR"

# --- python venvs: the readers, Airflow -------------------------------------------------------

# make_venv VENV REQUIREMENTS: (re)makes VENV unless it holds exactly REQUIREMENTS' pins; a copy of
# the file inside marks a finished install, so an interrupted one is redone.
make_venv() {
  local venv=$1 requirements=$2
  if cmp -s "$requirements" "$venv/requirements.txt" && [[ -x "$venv/bin/python" ]]; then
    log "venv $venv is up to date"
    return 0
  fi
  command -v python3 >/dev/null 2>&1 || {
    log "python3 not found on PATH: install Python 3.11 or newer (with its venv module)"
    return 1
  }
  rm -rf "$venv"
  python3 -m venv "$venv" &&
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" &&
    cp "$requirements" "$venv/requirements.txt"
}
# A failure here still runs cargo: tests/readers.rs and tests/airflow.rs then fail and say why.
VENV="${COINSTREAM_VENV:-$HOME/.cache/coinstream/venv}"
if step venv make_venv "$VENV" scripts/requirements.txt; then
  export COINSTREAM_PYTHON="$VENV/bin/python"
fi
AIRFLOW_VENV="${COINSTREAM_AIRFLOW_VENV:-$HOME/.cache/coinstream/venv-airflow}"
if step airflow make_venv "$AIRFLOW_VENV" scripts/requirements-airflow.txt; then
  export COINSTREAM_AIRFLOW="$AIRFLOW_VENV/bin/airflow"
fi

# --- browser ----------------------------------------------------------------------------------

# tests/browser.rs opens the live page in headless Chromium ($CHROMIUM, else `chromium`).
# Installed from Debian's archive when missing (root, or sudo without a password); a failure here
# still runs cargo: that test then fails and says how to install it.
install_chromium() {
  local browser="${CHROMIUM:-chromium}"
  if command -v "$browser" >/dev/null 2>&1; then
    log "browser: $("$browser" --version 2>/dev/null | head -n 1)"
    return 0
  fi
  if [[ -n "${CHROMIUM:-}" ]]; then
    log "CHROMIUM=$CHROMIUM is not runnable: point it at a Chromium or Chrome binary"
    return 1
  fi
  local sudo=()
  if ((EUID != 0)); then
    sudo -n true 2>/dev/null || {
      log "chromium is missing and installing it needs root: run \`sudo apt-get install -y chromium\` (Debian/Ubuntu), then this script again"
      return 1
    }
    sudo=(sudo -n)
  fi
  command -v apt-get >/dev/null 2>&1 || {
    log "chromium is missing and this is no Debian system (no apt-get): install Chromium or Chrome and set CHROMIUM to its binary"
    return 1
  }
  log "chromium is missing (tests/browser.rs needs it): installing Debian's chromium package"
  "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq chromium >/dev/null
}
step browser install_chromium || true

# --- cargo ------------------------------------------------------------------------------------

step fmt cargo fmt --all --check || true
step clippy cargo clippy --workspace --all-targets -- -D warnings || true
# --no-fail-fast: run every test binary, so one failure does not hide the others.
step test cargo test --workspace --no-fail-fast || true

summary
((FAILED == 0)) || die "some steps failed (see above)"
log "all steps passed"
