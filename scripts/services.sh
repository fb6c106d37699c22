#!/usr/bin/env bash
# Runs a real Apache Kafka broker (KRaft, one combined broker+controller node) and a real
# Apache Cassandra node on this machine, from Maven Central jars: no Docker engine needed.
# docker-compose.yaml at the repo root is the equivalent for machines that have Docker.
#
# Everything (jars, data, logs, pid files, generated configs) lives under one git-ignored
# folder, $COINSTREAM_SERVICES_DIR (default <repo>/.services). Run with -h for usage.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${COINSTREAM_SERVICES_DIR:-$ROOT/.services}"

KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP="${KAFKA_HEAP:-512m}"
CASSANDRA_PORT="${CASSANDRA_PORT:-9042}"
CASSANDRA_STORAGE_PORT="${CASSANDRA_STORAGE_PORT:-7000}"
CASSANDRA_HEAP="${CASSANDRA_HEAP:-1G}"
START_TIMEOUT_SECS="${SERVICES_TIMEOUT_SECS:-180}"
STOP_TIMEOUT_SECS="${SERVICES_STOP_TIMEOUT_SECS:-60}"
HOST=127.0.0.1
ALL_SERVICES=(kafka cassandra)

usage() {
  cat <<EOF
Usage: scripts/services.sh COMMAND [SERVICE...]

Real Apache Kafka ($HOST:$KAFKA_PORT) and Apache Cassandra ($HOST:$CASSANDRA_PORT),
run from Maven Central jars. SERVICE is kafka or cassandra; the default is both.

Commands:
  up [SERVICE...]      start (in parallel) and wait until each answers a real request;
                       a no-op for a service that is already up
  start SERVICE...     same as up, for the named services
  down [SERVICE...]    stop what this script started (TERM, then KILL after a timeout)
  stop SERVICE...      same as down, for the named services
  status               print each service's state; exit 0 only if all are up and answering
  logs [SERVICE] [-f]  print the last \$LOG_LINES (40) lines of the log(s); -f follows
  env                  print KAFKA_BOOTSTRAP, CASSANDRA_NODES, KAFKA_JARS and JAVA as shell assignments

Environment (defaults in brackets):
  COINSTREAM_SERVICES_DIR  state folder [<repo>/.services]
  KAFKA_PORT [9092]  KAFKA_CONTROLLER_PORT [9093]  KAFKA_HEAP [512m]
  CASSANDRA_PORT [9042]  CASSANDRA_STORAGE_PORT [7000]  CASSANDRA_HEAP [1G]
  SERVICES_TIMEOUT_SECS [180]  SERVICES_STOP_TIMEOUT_SECS [60]
  SERVICES_JAVA_HOME  a JDK 17 [/usr/lib/jvm/java-17-openjdk-amd64]; Cassandra 5.0 does
                      not run on JDK 24+, so \$JAVA_HOME is deliberately not used
EOF
}

log() { printf '%s services: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

check_service_name() {
  case "$1" in
    kafka | cassandra) ;;
    *) die "unknown service '$1' (valid: kafka, cassandra)" ;;
  esac
}

# --- JDK ------------------------------------------------------------------------------------

JAVA_HOME_17=""
find_jdk17() {
  [[ -n "$JAVA_HOME_17" ]] && return 0
  local candidates=()
  if [[ -n "${SERVICES_JAVA_HOME:-}" ]]; then
    candidates=("$SERVICES_JAVA_HOME")
  else
    candidates=(/usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/java-17-openjdk* /usr/lib/jvm/*-17*)
  fi
  local c
  for c in "${candidates[@]}"; do
    [[ -x "$c/bin/java" && -x "$c/bin/javac" ]] || continue
    if "$c/bin/java" -XshowSettings:properties -version 2>&1 |
      grep -q 'java.specification.version = 17$'; then
      JAVA_HOME_17="$c"
      return 0
    fi
  done
  die "no JDK 17 found (tried: ${candidates[*]}); set SERVICES_JAVA_HOME to one"
}

# --- jars and probes ------------------------------------------------------------------------

jars_dir() { echo "$STATE/jars/$1"; }

# Resolves services/<svc>/pom.xml into $STATE/jars/<svc>, once per pom content. Maven keeps
# its own cache in ~/.m2, so a wiped state folder costs a copy, not a download.
ensure_jars() {
  local svc=$1 pom="$ROOT/services/$1/pom.xml"
  local dir stamp want
  dir="$(jars_dir "$svc")"
  stamp="$dir/.pom.sha256"
  want="$(sha256sum "$pom" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found: it is needed once to fetch the $svc jars"
  local tmp="$STATE/jars/.$svc.partial" mvn_log="$STATE/jars/$svc-mvn.log" t0=$SECONDS
  rm -rf "$tmp"
  mkdir -p "$tmp"
  log "$svc: resolving jars from $pom"
  if ! JAVA_HOME="$JAVA_HOME_17" mvn -q -B -f "$pom" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp" >"$mvn_log" 2>&1; then
    tail -n 40 "$mvn_log" >&2
    die "$svc: mvn could not resolve the jars (full log: $mvn_log)"
  fi
  rm -rf "$dir"
  mv "$tmp" "$dir"
  echo "$want" >"$stamp"
  log "$svc: $(find "$dir" -name '*.jar' | wc -l) jars resolved in $((SECONDS - t0))s"
}

probe_class() {
  case "$1" in
    kafka) echo KafkaReady ;;
    cassandra) echo CqlReady ;;
  esac
}

# Compiles the readiness probe (services/<svc>/<Class>.java) against the service's own jars.
ensure_probe() {
  local svc=$1 class src out stamp want
  class="$(probe_class "$svc")"
  src="$ROOT/services/$svc/$class.java"
  out="$STATE/probe/$svc"
  stamp="$out/.sha256"
  want="$(cat "$src" "$(jars_dir "$svc")/.pom.sha256" | sha256sum | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  rm -rf "$out"
  mkdir -p "$out"
  "$JAVA_HOME_17/bin/javac" -nowarn -d "$out" -cp "$(jars_dir "$svc")/*" "$src" ||
    die "$svc: could not compile $src"
  cat >"$out/logback.xml" <<'EOF'
<configuration>
  <appender name="STDERR" class="ch.qos.logback.core.ConsoleAppender">
    <target>System.err</target>
    <encoder><pattern>%-5level %logger{20} - %msg%n</pattern></encoder>
  </appender>
  <root level="ERROR"><appender-ref ref="STDERR"/></root>
</configuration>
EOF
  echo "$want" >"$stamp"
}

# One readiness attempt: a real metadata request (Kafka) or CQL query (Cassandra).
probe() {
  local svc=$1 out="$STATE/$1/probe.out"
  local cp
  cp="$(jars_dir "$svc")/*:$STATE/probe/$svc"
  local args=()
  case "$svc" in
    kafka) args=(-Dlog4j2.level=ERROR KafkaReady "$HOST:$KAFKA_PORT" 3000) ;;
    cassandra) args=("-Dlogback.configurationFile=$STATE/probe/$svc/logback.xml"
      CqlReady "$HOST" "$CASSANDRA_PORT" 3000) ;;
  esac
  timeout 20 "$JAVA_HOME_17/bin/java" -Xmx128m -XX:TieredStopAtLevel=1 -cp "$cp" "${args[@]}" \
    >"$out" 2>&1 </dev/null 9>&-
}

# --- processes ------------------------------------------------------------------------------

pid_file() { echo "$STATE/$1/$1.pid"; }
log_file() { echo "$STATE/$1/logs/$1.log"; }

# Prints the pid if the pid file names a live process that this script started for $1.
# The marker property guards against a recycled pid.
running_pid() {
  local svc=$1 pf pid
  pf="$(pid_file "$svc")"
  [[ -f "$pf" ]] || return 1
  pid="$(cat "$pf")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  ps -ww -o args= -p "$pid" 2>/dev/null | grep -q -- "-Dcoinstream.service=$svc " || return 1
  echo "$pid"
}

service_ports() {
  case "$1" in
    kafka) echo "$KAFKA_PORT $KAFKA_CONTROLLER_PORT" ;;
    cassandra) echo "$CASSANDRA_PORT $CASSANDRA_STORAGE_PORT" ;;
  esac
}

port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

check_ports_free() {
  local svc=$1 port
  for port in $(service_ports "$svc"); do
    if port_in_use "$port"; then
      ss -ltnp "sport = :$port" >&2 2>/dev/null || true
      die "$svc: port $port is already in use by a process not started for $STATE" \
        "(set the port env vars to move $svc, see -h)"
    fi
  done
}

# Starts the JVM detached (own session, stdin closed, no inherited lock fd) and records its pid.
launch() {
  local svc=$1
  shift
  local logf
  logf="$(log_file "$svc")"
  printf '\n===== %s: starting %s =====\n' "$(date -Is)" "$svc" >>"$logf"
  (
    cd "$STATE/$svc"
    exec setsid "$JAVA_HOME_17/bin/java" "-Dcoinstream.service=$svc" "$@" \
      >>"$logf" 2>&1 </dev/null 9>&-
  ) &
  echo $! >"$(pid_file "$svc")"
}

# --- Kafka ----------------------------------------------------------------------------------

write_kafka_config() {
  local d="$STATE/kafka"
  mkdir -p "$d/config" "$d/data" "$d/logs" "$d/tmp"
  cat >"$d/config/server.properties" <<EOF
# Generated by scripts/services.sh on every start; edits are lost.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$d/data
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=24
log.segment.bytes=67108864
EOF
  cat >"$d/config/log4j2.properties" <<'EOF'
# Generated by scripts/services.sh. Everything goes to stdout, which the script appends
# to logs/kafka.log.
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
EOF
}

kafka_jvm_opts() {
  local d="$STATE/kafka"
  KAFKA_OPTS=(
    "-Xms$KAFKA_HEAP" "-Xmx$KAFKA_HEAP" -server
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true
    "-XX:ErrorFile=$d/logs/hs_err_%p.log"
    "-Djava.io.tmpdir=$d/tmp"
    "-Dkafka.logs.dir=$d/logs"
    "-Dlog4j2.configurationFile=$d/config/log4j2.properties"
    -cp "$(jars_dir kafka)/*"
  )
}

# KRaft needs its log dir formatted once with a cluster id; -g leaves a formatted dir alone.
format_kafka() {
  local d="$STATE/kafka"
  [[ -f "$d/data/meta.properties" ]] && return 0
  if [[ ! -s "$d/cluster.id" ]]; then
    "$JAVA_HOME_17/bin/java" "${KAFKA_OPTS[@]}" kafka.tools.StorageTool random-uuid \
      2>>"$(log_file kafka)" | grep -E '^[A-Za-z0-9_-]{22}$' >"$d/cluster.id" ||
      die "kafka: StorageTool random-uuid printed no cluster id (see $(log_file kafka))"
  fi
  log "kafka: formatting storage (cluster id $(cat "$d/cluster.id"))"
  if ! "$JAVA_HOME_17/bin/java" "${KAFKA_OPTS[@]}" kafka.tools.StorageTool format \
    -t "$(cat "$d/cluster.id")" -c "$d/config/server.properties" -g \
    >>"$(log_file kafka)" 2>&1; then
    tail -n 40 "$(log_file kafka)" >&2
    die "kafka: storage format failed"
  fi
}

start_kafka() {
  write_kafka_config
  local KAFKA_OPTS
  kafka_jvm_opts
  format_kafka
  launch kafka "${KAFKA_OPTS[@]}" kafka.Kafka "$STATE/kafka/config/server.properties"
}

# --- Cassandra ------------------------------------------------------------------------------

write_cassandra_config() {
  local d="$STATE/cassandra"
  mkdir -p "$d/conf" "$d/data" "$d/logs" "$d/tmp" "$d/triggers"
  cat >"$d/conf/cassandra.yaml" <<EOF
# Generated by scripts/services.sh on every start; edits are lost.
# A single node for development and tests: no auth, no snapshots, small memtables.
cluster_name: coinstream-dev
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "$HOST:$CASSANDRA_STORAGE_PORT"
listen_address: $HOST
rpc_address: $HOST
storage_port: $CASSANDRA_STORAGE_PORT
native_transport_port: $CASSANDRA_PORT
start_native_transport: true
data_file_directories:
  - $d/data/data
commitlog_directory: $d/data/commitlog
saved_caches_directory: $d/data/saved_caches
hints_directory: $d/data/hints
cdc_raw_directory: $d/data/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
auto_bootstrap: false
auto_snapshot: false
hinted_handoff_enabled: false
dynamic_snitch: false
concurrent_compactors: 1
memtable_heap_space: 128MiB
memtable_offheap_space: 128MiB
EOF
  cat >"$d/conf/logback.xml" <<'EOF'
<!-- Generated by scripts/services.sh. Everything goes to stdout, which the script appends
     to logs/cassandra.log. -->
<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
EOF
}

start_cassandra() {
  write_cassandra_config
  local d="$STATE/cassandra" jars jamm
  jars="$(jars_dir cassandra)"
  jamm="$(find "$jars" -maxdepth 1 -name 'jamm-*.jar' | head -n 1)"
  [[ -n "$jamm" ]] || die "cassandra: jamm jar missing from $jars"
  local opts=(
    "-Xms$CASSANDRA_HEAP" "-Xmx$CASSANDRA_HEAP"
    # conf/jvm-server.options and conf/jvm17-server.options of Cassandra 5.0
    -ea -Xss256k -XX:+UseTLAB -XX:+ResizeTLAB -XX:+PerfDisableSharedMem
    -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxGCPauseMillis=300
    -Djava.net.preferIPv4Stack=true -Dchronicle.analytics.disable=true
    -Djdk.attach.allowAttachSelf=true -Dio.netty.tryReflectionSetAccessible=true
    --add-exports=java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports=java.management/com.sun.jmx.remote.security=ALL-UNNAMED
    --add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports=java.sql/java.sql=ALL-UNNAMED
    --add-exports=java.base/java.lang.ref=ALL-UNNAMED
    --add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-opens=java.base/java.lang.module=ALL-UNNAMED
    --add-opens=java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens=java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens=java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens=java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens=java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens=java.base/java.io=ALL-UNNAMED
    --add-opens=java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens=java.base/java.lang=ALL-UNNAMED
    --add-opens=java.base/java.util=ALL-UNNAMED
    --add-opens=java.base/java.nio=ALL-UNNAMED
    --add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED
    "-javaagent:$jamm"
    "-XX:ErrorFile=$d/logs/hs_err_%p.log" -XX:+ExitOnOutOfMemoryError
    # Natives (JNA, Netty) unpack here rather than in /tmp, which may be noexec.
    "-Djava.io.tmpdir=$d/tmp" "-Djna.tmpdir=$d/tmp" "-Dio.netty.native.workdir=$d/tmp"
    # Fast start for a single node on a small box.
    -Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.ring_delay_ms=1000
    -Dcassandra.unsafesystem=true -Dcassandra.superuser_setup_delay_ms=0
    -Dcassandra.available_processors=2 -Dcassandra.shutdown_announce_in_ms=0
    "-Dcassandra.config=file://$d/conf/cassandra.yaml"
    -Dcassandra-foreground=yes
    "-Dcassandra.storagedir=$d/data" "-Dcassandra.logdir=$d/logs"
    "-Dcassandra.triggers_dir=$d/triggers"
    "-Dlogback.configurationFile=$d/conf/logback.xml"
    -cp "$jars/*"
    org.apache.cassandra.service.CassandraDaemon
  )
  launch cassandra "${opts[@]}"
}

# --- commands -------------------------------------------------------------------------------

# Waits until $1 answers its probe; fails early if the process exits.
wait_ready() {
  local svc=$1 t0=$SECONDS deadline=$((SECONDS + START_TIMEOUT_SECS))
  while :; do
    if ! running_pid "$svc" >/dev/null; then
      log "$svc: the process exited during startup; last 40 lines of $(log_file "$svc"):"
      tail -n 40 "$(log_file "$svc")" >&2
      return 1
    fi
    if probe "$svc"; then
      log "$svc: ready on $HOST:$(service_ports "$svc" | cut -d' ' -f1) after $((SECONDS - t0))s" \
        "($(tail -n 1 "$STATE/$svc/probe.out"))"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      log "$svc: not ready after ${START_TIMEOUT_SECS}s (SERVICES_TIMEOUT_SECS);" \
        "last probe: $(tail -n 1 "$STATE/$svc/probe.out")"
      log "$svc: last 40 lines of $(log_file "$svc"):"
      tail -n 40 "$(log_file "$svc")" >&2
      return 1
    fi
    sleep 1
  done
}

# Serialises up/down so two callers never start the same service twice. The lock fd is
# closed in the servers (see launch), so it is released when this script exits.
take_lock() {
  mkdir -p "$STATE"
  exec 9>"$STATE/.lock"
  flock 9
}

cmd_up() {
  local services=("$@") svc pid to_wait=()
  take_lock
  find_jdk17
  for svc in "${services[@]}"; do
    if pid="$(running_pid "$svc")"; then
      if probe "$svc"; then
        log "$svc: already up (pid $pid)"
        continue
      fi
      log "$svc: running (pid $pid) but not answering yet; waiting"
      to_wait+=("$svc")
      continue
    fi
    rm -f "$(pid_file "$svc")"
    check_ports_free "$svc"
    mkdir -p "$STATE/$svc/logs"
    ensure_jars "$svc"
    ensure_probe "$svc"
    "start_$svc"
    log "$svc: started (pid $(cat "$(pid_file "$svc")"), log $(log_file "$svc"))"
    to_wait+=("$svc")
  done
  local rc=0 p
  for svc in "${to_wait[@]}"; do
    wait_ready "$svc" &
    WAITERS+=($!)
  done
  for p in "${WAITERS[@]}"; do
    wait "$p" || rc=1
  done
  ((rc == 0)) || die "not every service came up; stop the rest with: scripts/services.sh down"
}

stop_one() {
  local svc=$1 pid t0=$SECONDS
  if ! pid="$(running_pid "$svc")"; then
    rm -f "$(pid_file "$svc")"
    log "$svc: not running"
    return 0
  fi
  log "$svc: stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS - t0 >= STOP_TIMEOUT_SECS)); then
      log "$svc: still alive after ${STOP_TIMEOUT_SECS}s; sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 0.5
  done
  rm -f "$(pid_file "$svc")"
  log "$svc: stopped after $((SECONDS - t0))s"
}

cmd_down() {
  local svc pids=() p rc=0
  take_lock
  for svc in "$@"; do
    stop_one "$svc" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do
    wait "$p" || rc=1
  done
  return "$rc"
}

cmd_status() {
  local svc pid rc=0 port
  for svc in "${ALL_SERVICES[@]}"; do
    port="$(service_ports "$svc" | cut -d' ' -f1)"
    if pid="$(running_pid "$svc")"; then
      find_jdk17
      if [[ -d "$STATE/probe/$svc" ]] && probe "$svc"; then
        echo "$svc: up (pid $pid) on $HOST:$port"
      else
        echo "$svc: running (pid $pid) but not answering on $HOST:$port"
        rc=3
      fi
    else
      echo "$svc: stopped"
      rc=3
    fi
  done
  return "$rc"
}

cmd_logs() {
  local follow=0 services=() a files=()
  for a in "$@"; do
    case "$a" in
      -f | --follow) follow=1 ;;
      *) check_service_name "$a" && services+=("$a") ;;
    esac
  done
  ((${#services[@]})) || services=("${ALL_SERVICES[@]}")
  for a in "${services[@]}"; do
    [[ -f "$(log_file "$a")" ]] && files+=("$(log_file "$a")")
  done
  ((${#files[@]})) || die "no logs yet under $STATE"
  if ((follow)); then
    exec tail -n "${LOG_LINES:-40}" -F "${files[@]}"
  fi
  tail -n "${LOG_LINES:-40}" "${files[@]}"
}

# Background readiness waiters; killed if we are interrupted, so none outlives the script
# (and holds the lock). The servers themselves keep running: stop them with `down`.
WAITERS=()
on_signal() {
  ((${#WAITERS[@]})) && kill "${WAITERS[@]}" 2>/dev/null
  log "interrupted; servers already started keep running (scripts/services.sh down stops them)"
  exit 130
}

main() {
  trap on_signal INT TERM
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    up | start | down | stop)
      local services=("$@") s
      if ((${#services[@]} == 0)); then
        [[ "$cmd" == start || "$cmd" == stop ]] && die "$cmd needs a service: kafka or cassandra"
        services=("${ALL_SERVICES[@]}")
      fi
      for s in "${services[@]}"; do check_service_name "$s"; done
      case "$cmd" in
        up | start) cmd_up "${services[@]}" ;;
        down | stop) cmd_down "${services[@]}" ;;
      esac
      ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    env)
      find_jdk17
      echo "KAFKA_BOOTSTRAP=$HOST:$KAFKA_PORT"
      echo "CASSANDRA_NODES=$HOST:$CASSANDRA_PORT"
      # For tests that write topics with the Java producer (tests/java/TopicWriter.java).
      echo "KAFKA_JARS=$(jars_dir kafka)"
      echo "JAVA=$JAVA_HOME_17/bin/java"
      ;;
    -h | --help | help) usage ;;
    '') usage >&2; exit 2 ;;
    *) usage >&2; die "unknown command '$cmd'" ;;
  esac
}

main "$@"
