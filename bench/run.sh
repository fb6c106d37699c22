#!/usr/bin/env bash
# The benchmark in one command: coinstream against the seeds' PySpark Structured Streaming job
# (as they wrote it, and done well), on the same Kafka topic and the same Cassandra.
#
#   bench/run.sh [--trades N] [--coinstream-only] [--coinstream-bin PATH] [bench.py options]
#
# Installs what it needs, idempotently, into bench/.work/ (git-ignored): a venv with pyspark and
# matplotlib (pip → PyPI), the Spark Kafka and Cassandra connector jars (mvn → Maven Central,
# bench/spark/pom.xml). Starts Kafka and Cassandra with scripts/services.sh if they are not up,
# builds coinstream in release mode, then runs bench/bench.py, which writes
# bench/results/<date>.md, .json and .png. See bench/README.md. It ends with the embedded job
# (coinstream.toml on a generated Coinbase capture against Spark's file source; --no-embedded,
# --embedded-only, --embedded-frames N).
#
# --coinstream-only runs just the coinstream part (no pyspark, no jars); with --coinstream-bin
# it does not build either (the smoke test, tests/bench_scripts.rs, runs it so).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
WORK="${BENCH_WORK:-$ROOT/bench/.work}"
PYSPARK_VERSION=3.5.7 # must match spark.version in bench/spark/pom.xml
SERVICES_DIR="${COINSTREAM_SERVICES_DIR:-$ROOT/.services}"
export BENCH_JAVA="${BENCH_JAVA:-${SERVICES_JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}/bin/java}"

TRADES=1000000
COINSTREAM_ONLY=0
COINSTREAM_BIN=""
PASS=()

usage() {
  sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  echo
  echo "bench.py options (passed through):"
  python3 "$ROOT/bench/bench.py" --help | sed -n '/^options:/,$p'
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --trades) TRADES="$2"; shift 2 ;;
    --trades=*) TRADES="${1#*=}"; shift ;;
    --coinstream-only) COINSTREAM_ONLY=1; shift ;;
    --coinstream-bin) COINSTREAM_BIN="$2"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) PASS+=("$1"); shift ;;
  esac
done
[[ "$TRADES" =~ ^[0-9]+$ && "$TRADES" -gt 0 ]] || { echo "--trades must be a positive number" >&2; exit 2; }

log() { printf '%s run.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

mkdir -p "$WORK"
# Services already listening where the bench will look (KAFKA_BOOTSTRAP, CASSANDRA_NODES: started
# from another checkout's .services or by docker compose) are used as they are: services.sh up
# refuses ports it did not open itself.
listening() { local a="${1%%,*}"; (exec 3<>"/dev/tcp/${a%:*}/${a##*:}") 2>/dev/null; }
KAFKA_ADDR="${KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
CASSANDRA_ADDR="${CASSANDRA_NODES:-127.0.0.1:9042}"
EMBEDDED_ONLY=0
for a in "${PASS[@]}"; do [[ "$a" == --embedded-only ]] && EMBEDDED_ONLY=1; done
if [[ $EMBEDDED_ONLY -eq 1 ]]; then
  # The embedded job runs with no servers, as a user runs it; idle JVMs would only load the cores.
  log "--embedded-only: Kafka and Cassandra are not needed and not started"
elif listening "$KAFKA_ADDR" && listening "$CASSANDRA_ADDR"; then
  log "Kafka ($KAFKA_ADDR) and Cassandra ($CASSANDRA_ADDR) are listening; using them"
else
  log "checking Kafka and Cassandra (scripts/services.sh up)"
  "$ROOT/scripts/services.sh" up >&2
fi

SPARK_ARGS=()
if [[ $COINSTREAM_ONLY -eq 0 ]]; then
  # A venv with pyspark (which bundles Spark 3.5 for Scala 2.12) and matplotlib for the chart.
  VENV="$WORK/venv"
  STAMP="$VENV/.installed-pyspark-$PYSPARK_VERSION"
  if [[ ! -f "$STAMP" ]]; then
    log "installing pyspark==$PYSPARK_VERSION and matplotlib into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "pyspark==$PYSPARK_VERSION" matplotlib
    touch "$STAMP"
  fi
  # The connector jars, resolved from bench/spark/pom.xml; what the pyspark wheel already bundles
  # is excluded so that its versions are the ones loaded.
  JARS="$WORK/jars"
  POM_SUM="$(sha256sum "$ROOT/bench/spark/pom.xml" | cut -c1-16)"
  if [[ ! -f "$JARS/.resolved-$POM_SUM" ]]; then
    log "resolving the Spark connector jars into $JARS (mvn)"
    rm -rf "$JARS"
    mvn -q -B -f "$ROOT/bench/spark/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$JARS" \
      -DexcludeGroupIds=org.apache.hadoop,org.scala-lang,org.slf4j,org.xerial.snappy,org.lz4,com.github.luben \
      -DexcludeArtifactIds=commons-lang3,paranamer,jsr305,metrics-core,spark-tags_2.12 >&2
    touch "$JARS/.resolved-$POM_SUM"
  fi
  SPARK_ARGS=(--spark-python "$VENV/bin/python" --spark-jars "$JARS")
  export JAVA_HOME="$(dirname "$(dirname "$BENCH_JAVA")")"
  export SPARK_LOCAL_IP=127.0.0.1
fi

if [[ -z "$COINSTREAM_BIN" ]]; then
  log "building coinstream (release) in $BENCH_TARGET_DIR"
  COINSTREAM_BIN="$(release_build)"
fi
[[ -x "$COINSTREAM_BIN" ]] || { echo "no coinstream binary at $COINSTREAM_BIN" >&2; exit 2; }

# The venv's Python has matplotlib for the chart; without it (coinstream only) the report has none.
PY=python3
[[ -x "$WORK/venv/bin/python" ]] && PY="$WORK/venv/bin/python"
ONLY=()
[[ $COINSTREAM_ONLY -eq 1 ]] && ONLY=(--coinstream-only)

export BENCH_COMMAND="bench/run.sh --trades $TRADES${ONLY:+ --coinstream-only}${PASS:+ ${PASS[*]}}"
cd "$ROOT"
exec "$PY" "$ROOT/bench/bench.py" --trades "$TRADES" --coinstream-bin "$COINSTREAM_BIN" \
  --kafka-jars "${KAFKA_JARS:-$SERVICES_DIR/jars/kafka}" "${ONLY[@]}" "${SPARK_ARGS[@]}" "${PASS[@]}"
